/*
 * test_schedules.c - noise schedules and RePaint segment lists against upstream.
 *
 *   build/test_schedules [SCHED_DIR [WEIGHTS.bin ...]]
 *
 * SCHED_DIR (default tests/fixtures/golden/schedules) holds upstream's tables:
 *   (a) gamma_<name>_<T>.npy: oard_schedule_init(name, T, 1e-5) must reproduce every float32
 *       gamma bit for bit. One known deviation is allowed, for csin only (see below).
 *   (b) repaint_schedules.json: oard_repaint_schedule must reproduce every list exactly; plus
 *       the invariant sum(out) - (len(out) - 1) * jump == T over a sweep of arguments, the
 *       `cap` contract and the refusal of bad arguments.
 *   (c) poly2_150_*.npy: gamma_s / gamma_t lookups (bit for bit) and the float32 DiffSchedule
 *       arithmetic (oard_sigma, oard_alpha, oard_sigma_alpha_t_given_s) within 2 ulp, or for the
 *       ill-conditioned sigma2/sigma_t_given_s within a conditioning-aware bound (arith_tol).
 * Each WEIGHTS.bin given (denoiser files; others are skipped) is opened directly (the format
 * of docs/weights_format.md) and its stored gamma tables (ddpm.schedule.gamma_module.gamma,
 * sampling_schedule.gamma_module.gamma) must equal oard_schedule_init() of the schedule its
 * metadata names, bit for bit: the loader recomputes schedules by name and ignores the tables.
 *
 * Build with the default float32 engine: the schedule code is precision independent.
 * Exit status 0 when every check passes, 1 otherwise.
 */
#include "oa_reactdiff.h"
#include "npy_lite.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_fail = 0, n_pass = 0;

static void verdict(int ok, const char *what)
{
    printf("  %s %s\n", ok ? "PASS" : "FAIL", what);
    if (ok) n_pass++;
    else n_fail++;
}

static uint32_t fbits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* distance in units in the last place between two finite floats of the same sign (or 0) */
static long long ulp_dist(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = (int32_t)0x80000000 - ia;
    if (ib < 0) ib = (int32_t)0x80000000 - ib;
    long long d = (long long)ia - (long long)ib;
    return d < 0 ? -d : d;
}

/* Compares got[0..n) with want[0..n) (float32 values held as double) bit for bit. If
 * csin_exception, entries with |want| < 1e-12 may differ by < 1e-14 absolute (reported). */
static void compare_gamma(const char *label, const float *got, const double *want, size_t n, int csin_exception)
{
    size_t mismatch = 0, known = 0;
    double maxdiff = 0;
    char what[256];
    for (size_t i = 0; i < n; i++) {
        float w = (float)want[i];
        if (fbits(got[i]) == fbits(w)) continue;
        double d = fabs((double)got[i] - (double)w);
        if (csin_exception && fabs((double)w) < 1e-12 && d < 1e-14) {
            known++;
            printf("    known deviation: %s[%zu] = %.9g, upstream %.9g (|diff| %.3g < 1e-14, |gamma| < 1e-12: "
                   "cancellation at alpha^2 = 0.5, libm cos vs numpy's SIMD cos)\n",
                   label, i, (double)got[i], (double)w, d);
            continue;
        }
        if (mismatch < 5)
            printf("    mismatch: %s[%zu] = %.9g (0x%08x), upstream %.9g (0x%08x), |diff| %.3g\n", label, i,
                   (double)got[i], (unsigned)fbits(got[i]), (double)w, (unsigned)fbits(w), d);
        mismatch++;
        if (d > maxdiff || d != d) maxdiff = d;
    }
    snprintf(what, sizeof what, "%s: %zu entries, bit-exact required%s; mismatching %zu, max |diff| %.3g%s", label, n,
             csin_exception ? " (except |gamma| < 1e-12: |diff| < 1e-14)" : "", mismatch, maxdiff,
             known ? " (plus known deviations listed above)" : "");
    verdict(mismatch == 0, what);
}

/* ---------------------------------------------------------------------------------------- */
/* (a) gamma tables                                                                           */

static void test_gamma_tables(const char *dir)
{
    static const struct {
        const char *name;
        int T;
    } tabs[] = {{"cosine", 150}, {"cosine", 5000}, {"csin_0.1_0.9_1.0", 150}, {"linear", 150}, {"polynomial_2", 1000}, {"polynomial_2", 150}};
    printf("(a) gamma tables: oard_schedule_init(name, T, 1e-5) vs %s/gamma_<name>_<T>.npy\n", dir);
    for (size_t k = 0; k < sizeof tabs / sizeof tabs[0]; k++) {
        char path[1024], err[OARD_ERRLEN], label[128];
        snprintf(path, sizeof path, "%s/gamma_%s_%d.npy", dir, tabs[k].name, tabs[k].T);
        snprintf(label, sizeof label, "gamma %s T=%d", tabs[k].name, tabs[k].T);
        npyl_array a;
        if (npyl_load(path, &a, err, sizeof err)) {
            printf("    %s\n", err);
            verdict(0, label);
            continue;
        }
        oard_schedule s;
        if (oard_schedule_init(&s, tabs[k].name, tabs[k].T, 1e-5, err)) {
            printf("    oard_schedule_init: %s\n", err);
            verdict(0, label);
        } else if (a.size != (size_t)tabs[k].T + 1 || s.T != tabs[k].T) {
            printf("    %s: %zu entries, expected %d\n", path, a.size, tabs[k].T + 1);
            verdict(0, label);
        } else {
            compare_gamma(label, s.gamma, a.data, a.size, strncmp(tabs[k].name, "csin", 4) == 0);
            /* oard_gamma is the table lookup with clamping */
            int bad = 0;
            for (int t = -2; t <= tabs[k].T + 2; t++) {
                int ti = t < 0 ? 0 : (t > tabs[k].T ? tabs[k].T : t);
                if (fbits(oard_gamma(&s, t)) != fbits(s.gamma[ti])) bad++;
            }
            char what[320];
            snprintf(what, sizeof what, "oard_gamma(%s, t) == table[clamp(t, 0, T)] for t = -2..T+2: %d wrong", label, bad);
            verdict(bad == 0, what);
            oard_schedule_free(&s);
        }
        npyl_free(&a);
    }
    /* unknown / malformed names must be refused, not silently give a table */
    static const char *bad_names[] = {"cosinus", "polynomial_", "polynomial_x", "csin_0.1_0.9", "linear_2", ""};
    int accepted = 0;
    for (size_t k = 0; k < sizeof bad_names / sizeof bad_names[0]; k++) {
        oard_schedule s;
        char err[OARD_ERRLEN] = "";
        if (oard_schedule_init(&s, bad_names[k], 150, 1e-5, err) == OARD_OK) {
            printf("    accepted bad schedule name '%s'\n", bad_names[k]);
            accepted++;
            oard_schedule_free(&s);
        }
    }
    char what[128];
    snprintf(what, sizeof what, "%zu malformed schedule names refused: %d accepted", sizeof bad_names / sizeof bad_names[0], accepted);
    verdict(accepted == 0, what);
}

/* ---------------------------------------------------------------------------------------- */
/* (b) RePaint                                                                                */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

static void test_repaint(const char *dir)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/repaint_schedules.json", dir);
    printf("(b) RePaint: oard_repaint_schedule vs %s (exact)\n", path);
    char *js = read_text(path);
    if (!js) {
        printf("    %s: cannot read\n", path);
        verdict(0, "repaint_schedules.json");
        return;
    }
    /* minimal parser for {"R_J_T": [int, ...], ...} */
    int n_keys = 0;
    const char *p = js;
    while ((p = strchr(p, '"')) != NULL) {
        int R, J, T, used = 0;
        if (sscanf(p, "\"%d_%d_%d\"%n", &R, &J, &T, &used) != 3 || used == 0) {
            printf("    malformed key near '%.20s'\n", p);
            verdict(0, "repaint_schedules.json parse");
            break;
        }
        p += used;
        p = strchr(p, '[');
        if (!p) break;
        p++;
        int want[4096], nw = 0, ok_parse = 1;
        for (;;) {
            while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t' || *p == ',') p++;
            if (*p == ']') {
                p++;
                break;
            }
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || nw == 4096) {
                ok_parse = 0;
                break;
            }
            want[nw++] = (int)v;
            p = end;
        }
        char what[256];
        if (!ok_parse) {
            snprintf(what, sizeof what, "repaint %d_%d_%d: list does not parse", R, J, T);
            verdict(0, what);
            break;
        }
        n_keys++;
        int got[4096];
        int n = oard_repaint_schedule(R, J, T, got, 4096);
        int diffs = 0, first = -1;
        for (int i = 0; i < n && i < nw && n <= 4096; i++)
            if (got[i] != want[i]) {
                diffs++;
                if (first < 0) first = i;
            }
        snprintf(what, sizeof what,
                 "repaint resamplings=%d jump=%d T=%d: length %d (upstream %d), differing entries %d (first at %d)", R,
                 J, T, n, nw, diffs, first);
        verdict(n == nw && diffs == 0, what);
    }
    free(js);
    if (n_keys != 5) {
        char what[96];
        snprintf(what, sizeof what, "repaint_schedules.json: %d lists read, expected 5", n_keys);
        verdict(0, what);
    }

    /* invariant over a sweep: each segment but the last is followed by a jump back of
     * `jump` steps, so the net progress sum - (len - 1) * jump is exactly T */
    int combos = 0, bad_inv = 0, bad_pos = 0, bad_cap = 0, worst = 0;
    static int buf[100000], buf2[8];
    for (int R = 1; R <= 10; R++)
        for (int J = 1; J <= 12; J++)
            for (int T = 1; T <= 200; T++) {
                combos++;
                int n = oard_repaint_schedule(R, J, T, buf, 100000);
                if (n < 1 || n > 100000) {
                    if (bad_inv++ < 3) printf("    R=%d J=%d T=%d: returned %d\n", R, J, T, n);
                    continue;
                }
                long long sum = 0;
                for (int i = 0; i < n; i++) {
                    sum += buf[i];
                    if (buf[i] < 1) bad_pos++;
                }
                long long net = sum - (long long)(n - 1) * J;
                if (net != T) {
                    if (bad_inv++ < 3) printf("    R=%d J=%d T=%d: sum %lld - (%d-1)*%d = %lld != T\n", R, J, T, sum, n, J, net);
                    int d = (int)llabs(net - T);
                    if (d > worst) worst = d;
                }
                /* cap contract: with a small buffer the same count is returned and only the
                 * first cap entries are written (the rest of the buffer is untouched) */
                for (int i = 0; i < 8; i++) buf2[i] = -777;
                int n2 = oard_repaint_schedule(R, J, T, buf2, 3);
                if (n2 != n) bad_cap++;
                else
                    for (int i = 0; i < 8; i++)
                        if ((i < 3 && i < n && buf2[i] != buf[i]) || ((i >= 3 || i >= n) && buf2[i] != -777)) {
                            bad_cap++;
                            break;
                        }
            }
    char what[256];
    snprintf(what, sizeof what,
             "invariant sum(out) - (len(out)-1)*jump == T over R=1..10, J=1..12, T=1..200 (%d cases, exact): "
             "%d violate (worst |net - T| %d)", combos, bad_inv, worst);
    verdict(bad_inv == 0, what);
    snprintf(what, sizeof what, "every segment length >= 1 over the same sweep: %d entries < 1", bad_pos);
    verdict(bad_pos == 0, what);
    snprintf(what, sizeof what, "cap = 3: same count returned, only out[0..min(3, n)) written: %d cases wrong", bad_cap);
    verdict(bad_cap == 0, what);
    int r1 = oard_repaint_schedule(0, 1, 10, buf, 10), r2 = oard_repaint_schedule(1, 0, 10, buf, 10),
        r3 = oard_repaint_schedule(1, 1, 0, buf, 10);
    snprintf(what, sizeof what, "bad arguments (R=0 / J=0 / T=0) return -1: got %d %d %d", r1, r2, r3);
    verdict(r1 == -1 && r2 == -1 && r3 == -1, what);
}

/* ---------------------------------------------------------------------------------------- */
/* (c) DiffSchedule arithmetic on the polynomial_2 / 150 table                                */

#define ARITH_ULP 2 /* float32 transcendental functions: libm vs PyTorch's kernels */

static double ulpf(double x) /* spacing of float32 numbers at |x| */
{
    float a = fabsf((float)x);
    return (double)nextafterf(a, INFINITY) - (double)a;
}

static double softplus_d(double x) { return x > 20 ? x : log1p(exp(x)); }

/* sigma2_t_given_s = -expm1(softplus(gamma_s) - softplus(gamma_t)) is ill-conditioned in
 * float32: the two softplus values are close, so one ulp of difference in either (libm's
 * log1pf/expf vs PyTorch's vectorised kernels) is amplified in the difference d. Allowed
 * error: exp(d) * 2 * (ulp(sp_s) + ulp(sp_t) + ulp(d)) (each side within one ulp of the
 * true softplus and of d) + ARITH_ULP ulp of the result; for sigma_t_given_s = sqrt(sigma2) half that relative
 * error + ARITH_ULP ulp. Everything else: ARITH_ULP ulp. */
static double arith_tol(int k, float gs, float gt, float want)
{
    double sps = softplus_d(gs), spt = softplus_d(gt), d = sps - spt;
    double t2 = exp(d) * 2 * (ulpf(sps) + ulpf(spt) + ulpf(d));
    if (k == 2) return t2 + ARITH_ULP * ulpf(want);
    if (k == 3) return (want > 0 ? t2 / (2 * (double)want) : INFINITY) + ARITH_ULP * ulpf(want);
    return k < 2 ? 0 : ARITH_ULP * ulpf(want);
}

static void test_arithmetic(const char *dir)
{
    static const char *names[] = {"gamma_s", "gamma_t", "sigma2_t_given_s", "sigma_t_given_s", "alpha_t_given_s", "sigma_s", "sigma_t", "alpha_s"};
    enum { NN = 8 };
    npyl_array a[NN];
    char err[OARD_ERRLEN];
    int ok = 1;
    printf("(c) sampler arithmetic: oard_sigma / oard_alpha / oard_sigma_alpha_t_given_s on polynomial_2 T=150 vs %s/poly2_150_*.npy\n", dir);
    memset(a, 0, sizeof a);
    for (int k = 0; k < NN; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/poly2_150_%s.npy", dir, names[k]);
        if (npyl_load(path, &a[k], err, sizeof err) || a[k].size != 150) {
            printf("    %s\n", a[k].data ? "poly2 file does not hold 150 entries" : err);
            ok = 0;
        }
    }
    oard_schedule s;
    if (ok && oard_schedule_init(&s, "polynomial_2", 150, 1e-5, err)) {
        printf("    %s\n", err);
        ok = 0;
    }
    if (!ok) {
        verdict(0, "poly2_150 files");
        for (int k = 0; k < NN; k++) npyl_free(&a[k]);
        return;
    }
    /* row i is step s = i (t = s + 1), as the README says */
    float got[NN][150], gsv[150], gtv[150];
    for (int i = 0; i < 150; i++) {
        float gs = oard_gamma(&s, i), gt = oard_gamma(&s, i + 1);
        gsv[i] = gs, gtv[i] = gt;
        got[0][i] = gs, got[1][i] = gt;
        oard_sigma_alpha_t_given_s(gt, gs, &got[2][i], &got[3][i], &got[4][i]);
        got[5][i] = oard_sigma(gs), got[6][i] = oard_sigma(gt), got[7][i] = oard_alpha(gs);
    }
    for (int k = 0; k < NN; k++) {
        long long maxulp = 0;
        double maxdiff = 0, maxrel = 0, worst = 0; /* worst = max |diff| / allowed */
        int nbit = 0, nbad = 0;
        for (int i = 0; i < 150; i++) {
            float w = (float)a[k].data[i];
            if (fbits(got[k][i]) != fbits(w)) nbit++;
            long long u = ulp_dist(got[k][i], w);
            double d = fabs((double)got[k][i] - (double)w), tol = arith_tol(k, gsv[i], gtv[i], w);
            if (!(d <= tol)) nbad++;
            if (u > maxulp) maxulp = u;
            if (d > maxdiff || d != d) maxdiff = d;
            if (w != 0 && d / fabs((double)w) > maxrel) maxrel = d / fabs((double)w);
            if (tol > 0 && d / tol > worst) worst = d / tol;
        }
        char what[320];
        if (k < 2)
            snprintf(what, sizeof what, "%s: 150 table lookups, bit-exact required; %d differ", names[k], nbit);
        else
            snprintf(what, sizeof what,
                     "%s: 150 entries, tolerance %s; %d not bit-identical, max %lld ulp, max |diff| %.3g (rel %.3g), "
                     "max |diff|/allowed %.2f, %d over",
                     names[k], k < 4 ? "conditioning-aware (2 ulp per softplus + 2 ulp)" : "2 ulp", nbit, maxulp,
                     maxdiff, maxrel, worst, nbad);
        verdict(nbad == 0, what);
    }
    oard_schedule_free(&s);
    for (int k = 0; k < NN; k++) npyl_free(&a[k]);
}

/* ---------------------------------------------------------------------------------------- */
/* (d) gamma tables stored in a weights file                                                  */

static uint64_t rd_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* value of metadata key in the text meta (lines "key value"), copied into out */
static int meta_value(const char *meta, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    for (const char *line = meta; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ') {
            const char *v = line + kl + 1, *e = strchr(v, '\n');
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= outlen) return -1;
            memcpy(out, v, n);
            out[n] = 0;
            return 0;
        }
    }
    return -1;
}

/* finds "tensor <name> f32 <off> <nbytes> 1 <n>" and returns a pointer into the data */
static const float *find_table(const unsigned char *buf, size_t size, const char *meta, uint64_t data_off, const char *name,
                               int *n_out)
{
    char pat[256];
    snprintf(pat, sizeof pat, "tensor %s ", name);
    const char *p = strstr(meta, pat);
    if (!p || (p != meta && p[-1] != '\n')) return NULL;
    char dtype[8];
    unsigned long long off, nb;
    int ndim, d0;
    if (sscanf(p + strlen(pat), "%7s %llu %llu %d %d", dtype, &off, &nb, &ndim, &d0) != 5 || strcmp(dtype, "f32") ||
        ndim != 1 || nb != 4ull * (unsigned)d0 || data_off + off + nb > size)
        return NULL;
    *n_out = d0;
    return (const float *)(const void *)(buf + data_off + off); /* 64-byte aligned in the file */
}

static void test_weights_tables(const char *path)
{
    printf("(d) gamma tables stored in %s vs oard_schedule_init of the schedules its metadata names\n", path);
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (f && size > 64 && (buf = malloc((size_t)size)) && (rewind(f), fread(buf, 1, (size_t)size, f) == (size_t)size) &&
        memcmp(buf, "OARDIFF", 8) == 0) {
    } else {
        printf("    %s: cannot read a weights file\n", path);
        verdict(0, path);
        if (f) fclose(f);
        free(buf);
        return;
    }
    fclose(f);
    uint64_t meta_off = rd_u64(buf + 16), meta_size = rd_u64(buf + 24), data_off = rd_u64(buf + 32);
    if (meta_off + meta_size > (uint64_t)size || data_off > (uint64_t)size) {
        printf("    %s: header offsets out of range\n", path);
        verdict(0, path);
        free(buf);
        return;
    }
    char *meta = malloc(meta_size + 1);
    memcpy(meta, buf + meta_off, meta_size);
    meta[meta_size] = 0;
    char kind[32] = "";
    meta_value(meta, "kind", kind, sizeof kind);
    if (strcmp(kind, "denoiser") != 0) {
        printf("    %s: kind '%s', no schedule tables: skipped\n", path, kind);
        free(meta), free(buf);
        return;
    }
    static const char *which[2][2] = {{"training", "ddpm.schedule.gamma_module.gamma"},
                                      {"sampling", "sampling_schedule.gamma_module.gamma"}};
    for (int k = 0; k < 2; k++) {
        char key[64], sched[64] = "", steps[32] = "", prec[64] = "", label[256], err[OARD_ERRLEN];
        snprintf(key, sizeof key, "%s_schedule", which[k][0]);
        meta_value(meta, key, sched, sizeof sched);
        snprintf(key, sizeof key, "%s_timesteps", which[k][0]);
        meta_value(meta, key, steps, sizeof steps);
        snprintf(key, sizeof key, "%s_precision", which[k][0]);
        meta_value(meta, key, prec, sizeof prec);
        int T = atoi(steps), n = 0;
        double precision = strtod(prec, NULL);
        snprintf(label, sizeof label, "%s: %s (%s, T=%d, precision %g)", path, which[k][1], sched, T, precision);
        const float *tab = find_table(buf, (size_t)size, meta, data_off, which[k][1], &n);
        oard_schedule s;
        if (!tab || n != T + 1) {
            printf("    table missing or of the wrong size (%d entries, metadata says T=%d)\n", n, T);
            verdict(0, label);
        } else if (oard_schedule_init(&s, sched, T, precision, err)) {
            printf("    oard_schedule_init: %s\n", err);
            verdict(0, label);
        } else {
            double *want = malloc((size_t)n * sizeof(double));
            for (int i = 0; i < n; i++) {
                float v;
                memcpy(&v, tab + i, 4);
                want[i] = v;
            }
            compare_gamma(label, s.gamma, want, (size_t)n, strncmp(sched, "csin", 4) == 0);
            free(want);
            oard_schedule_free(&s);
        }
    }
    free(meta), free(buf);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures/golden/schedules";
    if (!npyl_host_is_little_endian()) {
        fprintf(stderr, "test_schedules: big-endian host not supported\n");
        return 1;
    }
    printf("test_schedules (%s engine)\n", OARD_REAL_NAME);
    test_gamma_tables(dir);
    test_repaint(dir);
    test_arithmetic(dir);
    for (int i = 2; i < argc; i++) test_weights_tables(argv[i]);
    printf("test_schedules: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
