/*
 * test_consistency.c - the speed paths of the denoiser give the same numbers as the plain
 * ones, bit for bit, and the memory limit refuses before allocating.
 *
 *   build/test_consistency MODEL.bin [MODEL.bin ...]
 *
 * For each denoiser model, on a deterministic batch of two 14-atom reactions (TS fragment
 * spread so that some edges fall outside the cutoff):
 *   dump vs no dump      oard_denoise with a layer-dump callback computes every edge weight
 *                        of the last layer; without one the masked edges' last update is
 *                        skipped (never read again): the outputs must be identical
 *   1 vs 2 threads       threads own whole nodes and sum in the same order: identical
 *   workspace reuse      oard_denoise_ws twice on one workspace == oard_denoise: identical
 *   memory limit         oard_workspace_new with max_bytes below oard_memory_estimate fails
 *                        with OARD_ERR_NOMEM and a message giving the estimate; with
 *                        max_bytes equal to it, succeeds
 * Tolerance: 0 (bitwise). Prints the number of differing values for each check.
 * Exit status 0 when every check passes, 1 otherwise.
 */
#include "oa_reactdiff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NB 2
#define NA 14

static int n_fail = 0, n_pass = 0;

static void check(int ok, const char *model, const char *what, const char *detail) {
    printf("  %s %s: %s: %s\n", ok ? "PASS" : "FAIL", model, what, detail);
    if (ok) n_pass++;
    else n_fail++;
}

static size_t count_diff(oard_real *const a[3], oard_real *const b[3], size_t n) {
    size_t d = 0;
    for (int f = 0; f < 3; f++)
        for (size_t i = 0; i < n; i++) d += memcmp(&a[f][i], &b[f][i], sizeof(oard_real)) != 0;
    return d;
}

static void ignore_dump(void *ctx, const char *name, const oard_real *data, size_t rows, size_t cols) {
    (void)ctx, (void)name, (void)data, (void)rows, (void)cols;
}

static void test_model(const char *path) {
    char err[OARD_ERRLEN], msg[OARD_ERRLEN + 64];
    oard_model *m;
    if (oard_model_load(path, OARD_KIND_DENOISER, &m, err)) {
        check(0, path, "load", err);
        return;
    }
    const int nf = oard_model_config(m)->node_nfs[0], ne = nf - 4; /* one-hot width */
    const size_t n = (size_t)NB * NA * nf;
    int sizes[NB] = {NA, NA};
    oard_real *xh[3], *ref[3], *out[3], t[NB] = {(oard_real)0.4, (oard_real)0.7};
    uint64_t s = 42;
    for (int f = 0; f < 3; f++) {
        xh[f] = calloc(n, sizeof(oard_real)), ref[f] = calloc(n, sizeof(oard_real)), out[f] = calloc(n, sizeof(oard_real));
        for (int i = 0; i < NB * NA; i++) {
            for (int k = 0; k < 3; k++) { /* uniform in [-1, 1), the TS spread 4 x wider */
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                xh[f][(size_t)i * nf + k] = (oard_real)(((double)(s >> 11) / 9007199254740992.0 * 2 - 1) * (f == 1 ? 12 : 3));
            }
            xh[f][(size_t)i * nf + 3 + i % ne] = 1;
            xh[f][(size_t)i * nf + nf - 1] = (oard_real)(1 + i % ne);
        }
    }
    const oard_real *x[3] = {xh[0], xh[1], xh[2]};
    oard_batch b1 = {NB, sizes, 1}, b2 = {NB, sizes, 2};
    int rc = oard_denoise(m, &b1, x, t, NULL, ref, NULL, NULL, err);
    check(rc == 0, path, "denoise", rc ? err : "ok");
    if (!rc) {
        rc = oard_denoise(m, &b1, x, t, NULL, out, ignore_dump, NULL, err);
        snprintf(msg, sizeof msg, "%zu of %zu values differ", rc ? n : count_diff(ref, out, n), 3 * n);
        check(!rc && count_diff(ref, out, n) == 0, path, "dump vs no dump", rc ? err : msg);

        rc = oard_denoise(m, &b2, x, t, NULL, out, NULL, NULL, err);
        snprintf(msg, sizeof msg, "%zu of %zu values differ", rc ? n : count_diff(ref, out, n), 3 * n);
        check(!rc && count_diff(ref, out, n) == 0, path, "1 vs 2 threads", rc ? err : msg);

        oard_workspace *ws;
        size_t d = 3 * n;
        rc = oard_workspace_new(m, &b2, 0, &ws, err);
        if (!rc) rc = oard_denoise_ws(ws, x, t, NULL, out, err);
        if (!rc) rc = oard_denoise_ws(ws, x, t, NULL, out, err);
        if (!rc) d = count_diff(ref, out, n);
        if (!rc) oard_workspace_free(ws);
        snprintf(msg, sizeof msg, "%zu of %zu values differ", d, 3 * n);
        check(!rc && d == 0, path, "workspace reused", rc ? err : msg);
    }
    size_t est = oard_memory_estimate(m, &b1);
    oard_workspace *ws = NULL;
    err[0] = 0;
    rc = oard_workspace_new(m, &b1, est - 1, &ws, err);
    snprintf(msg, sizeof msg, "estimate %zu bytes, limit %zu: code %d, '%s'", est, est - 1, rc, err);
    check(rc == OARD_ERR_NOMEM && !ws && strstr(err, "MiB") && strstr(err, "too large"), path, "refused over the limit", msg);
    oard_workspace_free(ws);
    rc = oard_workspace_new(m, &b1, est, &ws, err);
    snprintf(msg, sizeof msg, "limit %zu: code %d", est, rc);
    check(rc == 0 && ws, path, "accepted at the limit", msg);
    oard_workspace_free(ws);
    for (int f = 0; f < 3; f++) free(xh[f]), free(ref[f]), free(out[f]);
    oard_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_consistency MODEL.bin [MODEL.bin ...]\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) test_model(argv[i]);
    printf("test_consistency: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
