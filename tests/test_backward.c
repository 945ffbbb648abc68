/*
 * test_backward.c - the backward pass checked without golden data (float64 engine).
 *
 *   build/test_backward MODEL.bin [MODEL.bin ...]
 *
 * For each denoiser model, on a deterministic batch of two reactions (5 and 7 atoms, the TS
 * spread so that some edges fall outside the cutoff; one sample at t = 700, one at t = 0 so
 * both branches of the objective run):
 *   finite differences   for every trainable tensor, its largest gradient entry and one
 *                        pseudo-random entry: the central difference (L(p + h) - L(p - h)) / 2h,
 *                        h = 1e-5 max(1, |p|), with the same noise, against oard_train_loss's
 *                        gradient. Tolerance: |fd - g| <= 1e-6 + 1e-5 |g| (truncation error
 *                        ~h^2, rounding ~1e-16 / h); the largest error is printed.
 *   forward              the training pass's loss_t term recomputed from oard_denoise on the
 *                        same z_t (the inference forward): relative difference <= 1e-12
 *   threads              1 and 2 threads give bit-identical losses and gradients
 *   buffers              gradients of buffers (gamma tables, RBF) and of the zero padding
 *                        of transposed weights are exactly zero
 * Exit status 0 when every check passes, 1 otherwise.
 */
#include "oa_reactdiff.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_fail = 0;

static void check(int ok, const char *model, const char *what, const char *detail) {
    printf("  %s %s: %s: %s\n", ok ? "PASS" : "FAIL", model, what, detail);
    if (!ok) n_fail++;
}

#define NB 2
static const int SIZES[NB] = {5, 7};
static const int T_INT[NB] = {700, 0};

/* deterministic reactions: positions uniform in a box (the TS 4 x wider), atom types cycling */
static void make_batch(const oard_config *c, oard_real *xh[3], int nn) {
    const int nf = c->node_nfs[0], ne = c->n_elements;
    uint64_t s = 7;
    for (int f = 0; f < 3; f++) {
        xh[f] = calloc((size_t)nn * nf, sizeof(oard_real));
        for (int i = 0; i < nn; i++) {
            for (int k = 0; k < 3; k++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                xh[f][(size_t)i * nf + k] = (oard_real)(((double)(s >> 11) / 9007199254740992.0 * 2 - 1) * (f == 1 ? 8 : 2));
            }
            xh[f][(size_t)i * nf + 3 + (i * 3) % ne] = 1;
            xh[f][(size_t)i * nf + nf - 1] = (oard_real)c->element_z[(i * 3) % ne];
        }
    }
}

static int loss_at(const oard_model *m, oard_real *const xh[3], int threads, double *loss, double *terms,
                   oard_real *grad, char *err) {
    oard_batch b = {NB, SIZES, threads};
    oard_rng rng;
    oard_rng_seed(&rng, 1234);
    const oard_real *x[3] = {xh[0], xh[1], xh[2]};
    return oard_train_loss(m, &b, x, NULL, T_INT, &rng, loss, terms, grad, err);
}

/* arena index of entry k (upstream row-major order) of tensor t */
static size_t arena_index(const oard_tensor *t, size_t k) {
    if (!t->ld) return t->offset + k;
    size_t cols = (size_t)t->dims[1], r = k / cols, col = k % cols;
    return t->offset + col * (size_t)t->ld + r;
}

static void test_model(const char *path) {
    char err[OARD_ERRLEN], msg[512];
    oard_model *m;
    if (oard_model_load(path, OARD_KIND_DENOISER, &m, err)) {
        check(0, path, "load", err);
        return;
    }
    const oard_config *c = oard_model_config(m);
    int nn = 0;
    for (int b = 0; b < NB; b++) nn += SIZES[b];
    oard_real *xh[3];
    make_batch(c, xh, nn);
    size_t P = oard_param_size(m);
    oard_real *g = calloc(P, sizeof(oard_real)), *g2 = calloc(P, sizeof(oard_real)), *p = oard_param_data(m);
    double loss, loss2, terms[NB * OARD_N_TERMS];
    int rc = loss_at(m, xh, 1, &loss, terms, g, err);
    check(rc == 0, path, "oard_train_loss", rc ? err : "ok");
    if (rc) goto done;

    /* threads */
    rc = loss_at(m, xh, 2, &loss2, NULL, g2, err);
    size_t ndiff = 0;
    for (size_t k = 0; k < P; k++) ndiff += memcmp(&g[k], &g2[k], sizeof(oard_real)) != 0;
    snprintf(msg, sizeof msg, "loss %s, %zu of %zu gradient values differ", loss == loss2 ? "equal" : "differs", ndiff, P);
    check(!rc && loss == loss2 && ndiff == 0, path, "1 vs 2 threads", rc ? err : msg);

    /* buffers and padding: every arena value outside a trainable tensor's entries is 0 */
    char *owned = calloc(P, 1);
    for (int i = 0; i < oard_tensor_count(m); i++) {
        oard_tensor t;
        oard_tensor_info(m, i, &t);
        size_t n = 1;
        for (int d = 0; d < t.ndim; d++) n *= (size_t)t.dims[d];
        for (size_t k = 0; t.trainable && k < n; k++) owned[arena_index(&t, k)] = 1;
    }
    size_t nonzero = 0;
    for (size_t k = 0; k < P; k++) nonzero += !owned[k] && g[k] != 0;
    free(owned);
    snprintf(msg, sizeof msg, "%zu nonzero gradient values outside trainable entries", nonzero);
    check(nonzero == 0, path, "buffers and padding", msg);

    /* forward: loss_t of sample 0 (t = 700) from the inference denoiser on the same z_t */
    {
        const int nf = c->node_nfs[0], F = nf - 3;
        oard_schedule sch;
        rc = oard_schedule_init(&sch, c->training_schedule, c->training_timesteps, c->training_precision, err);
        float gm = oard_gamma(&sch, T_INT[0]), al = oard_alpha(gm), si = oard_sigma(gm);
        oard_rng rng;
        oard_rng_seed(&rng, 1234);
        oard_real *noise = calloc((size_t)nn * (3 + F), sizeof(oard_real)), *zt[3], *eps[3];
        double err2[3] = {0}, lt = 0;
        for (int f = 0; f < 3; f++) {
            zt[f] = calloc((size_t)SIZES[0] * nf, sizeof(oard_real));
            eps[f] = calloc((size_t)SIZES[0] * nf, sizeof(oard_real));
        }
        for (int f = 0; !rc && f < 3; f++) {
            rc = oard_rng_normal(&rng, noise, (size_t)nn, 3, err);
            double mean[2][3] = {{0}};
            for (int i = 0; i < nn; i++)
                for (int k = 0; k < 3; k++) mean[i >= SIZES[0]][k] += noise[3 * i + k];
            double mx[3], cx[3] = {0};
            for (int k = 0; k < 3; k++) mean[0][k] /= SIZES[0];
            for (int i = 0; i < SIZES[0]; i++)
                for (int k = 0; k < 3; k++) cx[k] += xh[f][(size_t)i * nf + k];
            for (int k = 0; k < 3; k++) mx[k] = cx[k] / SIZES[0];
            for (int i = 0; i < SIZES[0]; i++) {
                for (int k = 0; k < 3; k++) {
                    oard_real e = noise[3 * i + k] - (oard_real)mean[0][k];
                    noise[3 * i + k] = e;
                    zt[f][(size_t)i * nf + k] = (oard_real)al * (xh[f][(size_t)i * nf + k] - (oard_real)mx[k]) + (oard_real)si * e;
                }
                for (int k = 0; k < F; k++) zt[f][(size_t)i * nf + 3 + k] = (oard_real)al * xh[f][(size_t)i * nf + 3 + k];
            }
            if (!rc) rc = oard_rng_normal(&rng, noise + (size_t)3 * nn, (size_t)nn, (size_t)F, err);
            /* keep this fragment's centred position noise of sample 0 */
            for (int i = 0; i < SIZES[0]; i++)
                for (int k = 0; k < 3; k++) eps[f][(size_t)i * nf + k] = noise[3 * i + k];
        }
        oard_real t0 = (oard_real)((float)T_INT[0] / (float)c->training_timesteps), *pred[3];
        for (int f = 0; f < 3; f++) pred[f] = calloc((size_t)SIZES[0] * nf, sizeof(oard_real));
        oard_batch b1 = {1, SIZES, 1};
        const oard_real *z[3] = {zt[0], zt[1], zt[2]};
        if (!rc) rc = oard_denoise(m, &b1, z, &t0, NULL, pred, NULL, NULL, err);
        for (int f = 0; !rc && f < 3; f++) {
            for (int i = 0; i < SIZES[0]; i++)
                for (int k = 0; k < 3; k++) {
                    double r = eps[f][(size_t)i * nf + k] - pred[f][(size_t)i * nf + k];
                    err2[f] += r * r;
                }
            lt += err2[f] * c->loss_scales[f] / (3.0 * SIZES[0]);
        }
        double rel = fabs(lt - terms[OARD_TERM_LOSS_T]) / fabs(lt);
        snprintf(msg, sizeof msg, "loss_t %.15g (training pass) vs %.15g (oard_denoise): rel %.2e (tol 1e-12)",
                 terms[OARD_TERM_LOSS_T], lt, rel);
        check(!rc && rel <= 1e-12, path, "training forward = inference forward", rc ? err : msg);
        for (int f = 0; f < 3; f++) free(zt[f]), free(eps[f]), free(pred[f]);
        free(noise);
        oard_schedule_free(&sch);
    }

    /* finite differences */
    {
        double worst = 0;
        int n_checked = 0, n_bad = 0;
        char worst_name[200] = "";
        uint64_t s = 99;
        for (int i = 0; i < oard_tensor_count(m); i++) {
            oard_tensor t;
            oard_tensor_info(m, i, &t);
            if (!t.trainable) continue;
            size_t n = 1, kmax = 0;
            for (int d = 0; d < t.ndim; d++) n *= (size_t)t.dims[d];
            for (size_t k = 0; k < n; k++)
                if (fabs(g[arena_index(&t, k)]) > fabs(g[arena_index(&t, kmax)])) kmax = k;
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t picks[2] = {kmax, (size_t)(s >> 33) % n};
            for (int j = 0; j < 2; j++) {
                size_t a = arena_index(&t, picks[j]);
                oard_real p0 = p[a];
                double h = 1e-5 * (fabs(p0) > 1 ? fabs(p0) : 1), lp, lm;
                p[a] = p0 + (oard_real)h;
                int r1 = loss_at(m, xh, 1, &lp, NULL, NULL, err);
                p[a] = p0 - (oard_real)h;
                int r2 = loss_at(m, xh, 1, &lm, NULL, NULL, err);
                p[a] = p0;
                double fd = (lp - lm) / (2 * h), e = fabs(fd - g[a]), tol = 1e-6 + 1e-5 * fabs(g[a]);
                n_checked++;
                if (r1 || r2 || !(e <= tol)) {
                    n_bad++;
                    printf("    %s[%zu]: gradient %.10g, finite difference %.10g\n", t.name, picks[j], (double)g[a], fd);
                }
                if (e / (tol) > worst) worst = e / tol, snprintf(worst_name, sizeof worst_name, "%s: |fd - g| = %.2e", t.name, e);
            }
        }
        snprintf(msg, sizeof msg, "%d entries, %d outside tolerance; worst %.1e of tolerance, %s", n_checked, n_bad, worst,
                 worst_name);
        check(n_bad == 0, path, "finite differences", msg);
    }
done:
    for (int f = 0; f < 3; f++) free(xh[f]);
    free(g), free(g2);
    oard_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.bin [MODEL.bin ...]\n", argv[0]);
        return 2;
    }
    if (sizeof(oard_real) != 8) {
        fprintf(stderr, "%s: needs the float64 engine (-DOARD_DOUBLE)\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) test_model(argv[i]);
    printf("test_backward: %s\n", n_fail ? "FAIL" : "PASS");
    return n_fail ? 1 : 0;
}
