/*
 * bench.c - speed of the denoiser (one call of upstream EGNNDynamics.forward), the
 * samplers, and memory use. Built by `make bench` against the engine (-DOARD_NO_MAIN),
 * in float32 (build/bench) and float64 (build/bench64). No timing is asserted anywhere.
 *
 *   bench table TINY.bin FULL.bin R.xyz P.xyz [--reps K]
 *       first the machine's float32 multiply-add peak at 1 and 2 threads, measured
 *       (bench peak float32 fma threads=<n> gflops=<rate>); then,
 *       for the tiny and the full model, on the reaction (one candidate: "rxn14") and on
 *       8 copies of it in one batch ("batch8"), at 1 and 2 threads, one line each:
 *       bench <model> <case> threads=<n> ms_per_call=<median> gflops=<rate>
 *   bench one MODEL.bin NAME R.xyz P.xyz CASE THREADS [--reps K]
 *       one such line (CASE rxn14 or batch8); used for the float64/float32 ratio
 *   bench ts MODEL.bin R.xyz P.xyz STEPS RESAMPLINGS JUMP THREADS
 *       wall time of one TS candidate by inpainting (oard_inpaint), as `oa_reactdiff ts`
 *   bench rss MODEL.bin ATOMS THREADS
 *       one denoiser call on a synthetic reaction of 3 x ATOMS atoms: the engine's memory
 *       estimate, the peak resident set size (getrusage) and the time
 *
 * ms_per_call is the median over K calls (default 9 for the tiny model, 5 for the full
 * model), after one warm-up call, measured with CLOCK_MONOTONIC around oard_denoise_ws
 * (graph, work buffers and threads are set up once, as in the samplers).
 *
 * gflops counts the floating-point operations of the matrix products the implementation
 * performs (2 x in x out per row of every Linear, on the rows it actually runs: e.g. the
 * equivariant message only on unmasked edges, the first edge_mlp layer split into node
 * and edge parts), divided by the median time. Elementwise work (SiLU, LayerNorm, frames,
 * scatter sums) is not counted. The "dense" count printed on the '#' lines is the
 * textbook one: every Linear on every edge of every layer (about 25 GFLOP per call for the
 * official model on the 42-node reaction); dense_gflop / ms gives the speed in those units.
 */
#define _POSIX_C_SOURCE 200809L
#include "oa_reactdiff.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }

/* with --cpu, lines also give the process CPU time per call (median): on a shared machine
 * that shows the work done, however much of the CPU the process got */
static int show_cpu;
static double cpu_ms_median;

static void die(const char *msg) {
    fprintf(stderr, "bench: %s\n", msg);
    exit(2);
}

static void *xcalloc(size_t n, size_t s) {
    void *p = calloc(n ? n : 1, s ? s : 1);
    if (!p) die("out of memory");
    return p;
}

static oard_model *load(const char *path) {
    char err[OARD_ERRLEN];
    oard_model *m = NULL;
    if (oard_model_load(path, OARD_KIND_DENOISER, &m, err)) die(err);
    return m;
}

/* ---- a reaction: positions and element indices per fragment ---- */
typedef struct {
    int n;
    int *elem;
    double *xyz[3]; /* R, TS, P: (n, 3) */
} reaction;

static int elem_index(const oard_config *c, const char *sym) {
    for (int i = 0; i < c->n_elements; i++) {
        const char *a = c->element_sym[i], *b = sym;
        while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) a++, b++;
        if (!*a && !*b) return i;
    }
    return -1;
}

static void read_xyz(const char *path, const oard_config *c, int *n, int **elem, double **xyz) {
    FILE *f = fopen(path, "r");
    char line[512], sym[16], msg[600];
    if (!f || !fgets(line, sizeof line, f) || sscanf(line, "%d", n) != 1 || *n <= 0 || !fgets(line, sizeof line, f)) {
        snprintf(msg, sizeof msg, "%s: cannot read an xyz file", path);
        die(msg);
    }
    *elem = xcalloc((size_t)*n, sizeof(int));
    *xyz = xcalloc((size_t)*n * 3, sizeof(double));
    for (int a = 0; a < *n; a++) {
        double *p = *xyz + 3 * a;
        if (!fgets(line, sizeof line, f) || sscanf(line, "%15s %lf %lf %lf", sym, p, p + 1, p + 2) != 4 ||
            ((*elem)[a] = elem_index(c, sym)) < 0) {
            snprintf(msg, sizeof msg, "%s: bad atom line %d", path, a + 3);
            die(msg);
        }
    }
    fclose(f);
}

/* R and P from files (same atom order), the TS halfway between them */
static reaction reaction_from_files(const oard_config *c, const char *rpath, const char *ppath) {
    reaction r;
    int np, *pe;
    read_xyz(rpath, c, &r.n, &r.elem, &r.xyz[0]);
    read_xyz(ppath, c, &np, &pe, &r.xyz[2]);
    if (np != r.n) die("reactant and product have different atom counts");
    free(pe);
    r.xyz[1] = xcalloc((size_t)r.n * 3, sizeof(double));
    for (int i = 0; i < 3 * r.n; i++) r.xyz[1][i] = 0.5 * (r.xyz[0][i] + r.xyz[2][i]);
    return r;
}

/* A synthetic molecule-like reaction of n atoms: a jittered cubic lattice, 1.5 A apart,
 * carbon and hydrogen alternating; the product is the reactant jittered again. */
static reaction reaction_synthetic(const oard_config *c, int n) {
    reaction r;
    r.n = n;
    r.elem = xcalloc((size_t)n, sizeof(int));
    int side = 1;
    while (side * side * side < n) side++;
    uint64_t s = 12345;
    for (int f = 0; f < 3; f++) r.xyz[f] = xcalloc((size_t)n * 3, sizeof(double));
    for (int a = 0; a < n; a++) {
        int g[3] = {a % side, (a / side) % side, a / (side * side)};
        r.elem[a] = elem_index(c, a % 2 ? "H" : "C");
        if (r.elem[a] < 0) r.elem[a] = 0;
        for (int k = 0; k < 3; k++) {
            double j[2];
            for (int q = 0; q < 2; q++) { /* splitmix64 uniform in [-0.2, 0.2) */
                uint64_t z = (s += 0x9E3779B97F4A7C15ull);
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
                z ^= z >> 31;
                j[q] = ((double)(z >> 11) / 9007199254740992.0 - 0.5) * 0.4;
            }
            r.xyz[0][3 * a + k] = 1.5 * g[k] + j[0];
            r.xyz[2][3 * a + k] = 1.5 * g[k] + j[1];
            r.xyz[1][3 * a + k] = 1.5 * g[k] + 0.5 * (j[0] + j[1]);
        }
    }
    return r;
}

/* B copies of the reaction in the engine's layout, positions centred per fragment */
typedef struct {
    int B, n, nf;
    int *sizes;
    oard_real *xh[3], *eps[3], *t;
} input;

static input make_input(const oard_config *c, const reaction *r, int B) {
    input in;
    in.B = B, in.n = r->n, in.nf = c->node_nfs[0];
    in.sizes = xcalloc((size_t)B, sizeof(int));
    in.t = xcalloc((size_t)B, sizeof(oard_real));
    for (int b = 0; b < B; b++) in.sizes[b] = r->n, in.t[b] = (oard_real)0.4;
    for (int f = 0; f < 3; f++) {
        double mean[3] = {0, 0, 0};
        for (int a = 0; a < r->n; a++)
            for (int k = 0; k < 3; k++) mean[k] += r->xyz[f][3 * a + k] / r->n;
        in.xh[f] = xcalloc((size_t)B * r->n * in.nf, sizeof(oard_real));
        in.eps[f] = xcalloc((size_t)B * r->n * in.nf, sizeof(oard_real));
        for (int b = 0; b < B; b++)
            for (int a = 0; a < r->n; a++) {
                oard_real *row = in.xh[f] + ((size_t)b * r->n + a) * in.nf;
                for (int k = 0; k < 3; k++) row[k] = (oard_real)(r->xyz[f][3 * a + k] - mean[k]);
                for (int k = 0; k < c->n_elements; k++) row[3 + k] = (oard_real)(k == r->elem[a]);
                row[3 + c->n_elements] = (oard_real)c->element_z[r->elem[a]];
            }
    }
    return in;
}

static void free_input(input *in) {
    for (int f = 0; f < 3; f++) free(in->xh[f]), free(in->eps[f]);
    free(in->sizes), free(in->t);
}

/* ---- floating-point operations of one call (matrix products only, see the top) ----
 * performed: what oa_reactdiff.c runs; dense: every Linear on every edge and node. */
static void count_flops(const oard_config *c, const reaction *r, int B, double *performed, double *dense) {
    const double H = c->hidden_channels, R = c->num_radial, L = c->num_layers, I = c->in_hidden_channels;
    const double EW = 3 * H + R;
    const double N = 3.0 * r->n * B, E = N * (3.0 * r->n - 1); /* full graph per sample */
    double Eu = 0; /* unmasked edges: distance below the cutoff, same fragment when object_aware */
    for (int f = 0; f < 3; f++)
        for (int g = 0; g < 3; g++)
            for (int a = 0; a < r->n; a++)
                for (int b = 0; b < r->n; b++) {
                    if ((f == g && a == b) || (c->object_aware && f != g)) continue;
                    double d2 = 0;
                    for (int k = 0; k < 3; k++) d2 += pow(r->xyz[f][3 * a + k] - r->xyz[g][3 * b + k], 2);
                    Eu += sqrt(d2) < c->cutoff;
                }
    Eu *= B;
    /* per node: embeddings, LayerNormed projections, pos_expansion, node_mlp, x_proj,
     * vec_proj, xvec_proj, output block */
    double node0 = I * H * 2 /* embedding, neighbor_emb */ + H * H /* s2v */ + I * H /* embedding_out */ +
                   3 * H * H * 1 /* vec1_proj */ + 3 * H + (2 * H * H + H * 2) /* update_net */;
    double node_layer = (3 * H / 2 + H / 2 * H) /* pos_expansion */ + 2 * H * H /* edge_mlp node blocks */ +
                        (2 * H * H + H * H) /* node_mlp */ + (H * H + H * 3 * H) /* x_proj */ +
                        3 * H * 2 * H /* vec_proj */ + H * (3 * 48 + 48 * 8 + 8) /* lin3 */ +
                        (2 * H * H + H * 3 * H) /* xvec_proj */;
    double edge0 = R * H + H * H /* radial_lin */ + 2 * H * (3 * H / 4 + H / 4) /* edge lin3 */;
    double edge_gcl = EW * H + H * H + H;                 /* edge_mlp (edge block), att */
    double edge_out = H * EW;                             /* edge_out_trans */
    double edge_msg = EW * 3 * H + 9 * H * H + R * 3 * H; /* dir_proj, rbf_proj */
    /* masked edges: radial_lin and lin3 once (constant), no message, and no edge_out_trans in
     * the last layer (their edge weights are not read again) */
    double p = N * (node0 + L * node_layer) + (Eu + 1) * edge0 + L * (E * edge_gcl + Eu * edge_msg) +
               ((L - 1) * E + Eu) * edge_out;
    double d = N * (node0 + L * (node_layer - 2 * H * H)) + E * edge0 +
               L * E * (edge_gcl + edge_out + 2 * H * H + edge_msg);
    *performed = 2 * p;
    *dense = 2 * d;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* median ms per call of K calls after one warm-up */
static double time_calls(const oard_model *m, input *in, int threads, int K) {
    char err[OARD_ERRLEN];
    oard_batch batch = {in->B, in->sizes, threads};
    const oard_real *xh[3] = {in->xh[0], in->xh[1], in->xh[2]};
    double *ms = xcalloc((size_t)K, sizeof(double)), *cpu = xcalloc((size_t)K, sizeof(double));
    oard_workspace *ws;
    if (oard_workspace_new(m, &batch, 0, &ws, err)) die(err);
    for (int k = -1; k < K; k++) {
        double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (oard_denoise_ws(ws, xh, in->t, NULL, in->eps, err)) die(err);
        if (k >= 0) ms[k] = 1e3 * (now() - t0), cpu[k] = 1e3 * (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0);
    }
    oard_workspace_free(ws);
    qsort(ms, (size_t)K, sizeof(double), cmp_double);
    qsort(cpu, (size_t)K, sizeof(double), cmp_double);
    double med = ms[K / 2];
    cpu_ms_median = cpu[K / 2];
    free(ms), free(cpu);
    return med;
}

static double bench_line(const oard_model *m, const char *name, const reaction *r, const char *cas, int threads,
                         int reps) {
    int B = strcmp(cas, "batch8") == 0 ? 8 : 1;
    input in = make_input(oard_model_config(m), r, B);
    double fl, dense;
    count_flops(oard_model_config(m), r, B, &fl, &dense);
    double ms = time_calls(m, &in, threads, reps);
    printf("bench %s %s threads=%d ms_per_call=%.2f gflops=%.1f", name, cas, threads, ms, fl / ms * 1e-6);
    if (show_cpu) printf(" cpu_ms_per_call=%.2f", cpu_ms_median);
    printf("\n");
    fflush(stdout);
    free_input(&in);
    return ms;
}

/* The machine's float32 peak: PEAK_CHAINS independent multiply-add chains per thread, which
 * the compiler keeps in vector registers (-O3 -march=native: 12 AVX-512 registers here),
 * so that nothing but the FMA units limits it. Portable C, no intrinsics. */
#define PEAK_CHAINS 192
static float peak_kernel(long iters, float b, float c) {
    float a[PEAK_CHAINS];
    for (int j = 0; j < PEAK_CHAINS; j++) a[j] = (float)j;
    for (long k = 0; k < iters; k++) {
#if defined(__GNUC__)
#pragma GCC unroll 192
#endif
        for (int j = 0; j < PEAK_CHAINS; j++) a[j] = fmaf(a[j], b, c);
    }
    float s = 0;
    for (int j = 0; j < PEAK_CHAINS; j++) s += a[j];
    return s;
}

/* GFLOP/s of peak_kernel on `threads` threads (best of 3 runs of about 0.1 s) */
static double peak_gflops(int threads) {
    const long iters = 4000000;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        volatile float sink = 0;
        double t0 = now();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
        {
            float s = peak_kernel(iters, 0.9999999f, 1e-7f);
#ifdef _OPENMP
#pragma omp critical
#endif
            sink += s;
        }
        double g = 2.0 * PEAK_CHAINS * (double)iters * threads / (now() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

static int reps_arg(int argc, char **argv, int dflt) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--reps") == 0) return atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : dflt;
    return dflt;
}

static void cmd_table(int argc, char **argv) {
    const char *paths[2] = {argv[2], argv[3]}, *names[2] = {"tiny", "full"}, *cases[2] = {"rxn14", "batch8"};
    double peak[3] = {0, peak_gflops(1), peak_gflops(2)};
    for (int nt = 1; nt <= 2; nt++) printf("bench peak float32 fma threads=%d gflops=%.1f\n", nt, peak[nt]);
    for (int k = 0; k < 2; k++) {
        oard_model *m = load(paths[k]);
        const oard_config *c = oard_model_config(m);
        reaction r = reaction_from_files(c, argv[4], argv[5]);
        for (int ci = 0; ci < 2; ci++) {
            double fl, dense;
            count_flops(c, &r, ci ? 8 : 1, &fl, &dense);
            printf("# %s %s: %d nodes, %.0f edges; %.2f GFLOP performed, %.2f GFLOP dense per call\n", names[k],
                   cases[ci], 3 * r.n * (ci ? 8 : 1), 3.0 * r.n * (3 * r.n - 1) * (ci ? 8 : 1), fl * 1e-9, dense * 1e-9);
            double t1 = 0, c1 = 0;
            for (int nt = 1; nt <= 2; nt++) {
                double ms = bench_line(m, names[k], &r, cases[ci], nt, reps_arg(argc, argv, k ? 5 : 9));
                if (nt == 1) t1 = ms, c1 = cpu_ms_median;
                else /* CPU time well above 1 thread's means the threads waited for a CPU */
                    printf("# %s %s: 1 -> 2 threads speed-up %.2fx (CPU time per call %.2f ms at 1 thread, %.2f at 2);"
                           " fraction of the measured peak %.0f%% at 1 thread, %.0f%% at 2\n",
                           names[k], cases[ci], t1 / ms, c1, cpu_ms_median, 100 * fl / t1 * 1e-6 / peak[1],
                           100 * fl / ms * 1e-6 / peak[2]);
            }
        }
        oard_model_free(m);
    }
}

static void cmd_one(int argc, char **argv) {
    oard_model *m = load(argv[2]);
    reaction r = reaction_from_files(oard_model_config(m), argv[4], argv[5]);
    bench_line(m, argv[3], &r, argv[6], atoi(argv[7]), reps_arg(argc, argv, 5));
    oard_model_free(m);
}

static int n_progress;
static void count_progress(void *ctx, int done, int total) {
    (void)ctx, (void)done, (void)total;
    n_progress++;
}

static void cmd_ts(char **argv) {
    char err[OARD_ERRLEN];
    oard_model *m = load(argv[2]);
    const oard_config *c = oard_model_config(m);
    reaction r = reaction_from_files(c, argv[3], argv[4]);
    input in = make_input(c, &r, 1);
    oard_batch batch = {1, in.sizes, atoi(argv[8])};
    oard_sampler_opts o = {atoi(argv[5]), NULL, 0, atoi(argv[6]), atoi(argv[7]), count_progress, NULL};
    oard_rng rng;
    oard_rng_seed(&rng, 1);
    const oard_real *fixed[3] = {in.xh[0], in.xh[1], in.xh[2]};
    double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    if (oard_inpaint(m, &batch, &o, NULL, fixed, in.eps, &rng, err)) die(err);
    double s = now() - t0, cs = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("bench ts steps=%s resamplings=%s jump=%s threads=%s calls=%d seconds=%.2f ms_per_call=%.2f", argv[5],
           argv[6], argv[7], argv[8], n_progress + 1, s, 1e3 * s / (n_progress + 1));
    if (show_cpu) printf(" cpu_seconds=%.2f", cs);
    printf("\n");
    free_input(&in);
    oard_model_free(m);
}

/* One React-OT TS (the ts default: ode midpoint, nfe 10, 20 network calls) for a bridge
 * model; a diffusion model is taken as the bridge of the same network
 * (oard_model_to_bridge), which is what the time depends on. */
static void cmd_bridge(char **argv) {
    char err[OARD_ERRLEN];
    oard_model *m = load(argv[3]);
    if (oard_model_config(m)->objective != OARD_OBJECTIVE_BRIDGE) {
        oard_model *b;
        if (oard_model_to_bridge(m, 3000, 0.3, 0.5, 1.0, &b, err)) die(err);
        oard_model_free(m);
        m = b;
    }
    const oard_config *c = oard_model_config(m);
    reaction r = reaction_from_files(c, argv[4], argv[5]);
    input in = make_input(c, &r, 1);
    oard_batch batch = {1, in.sizes, atoi(argv[6])};
    oard_bridge_opts o;
    memset(&o, 0, sizeof o);
    o.nfe = 10;
    oard_real *ts = xcalloc((size_t)r.n * 3, sizeof(oard_real));
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) { /* the fastest of three */
        double t0 = now();
        if (oard_bridge_sample(m, &batch, &o, NULL, (const oard_real *const *)in.xh, ts, NULL, NULL, err)) die(err);
        if (now() - t0 < best) best = now() - t0;
    }
    printf("bench bridge %s ts solver=ode method=midpoint nfe=10 threads=%s calls=20 seconds=%.3f ms_per_call=%.2f\n",
           argv[2], argv[6], best, 1e3 * best / 20);
    free(ts);
    free_input(&in);
    oard_model_free(m);
}

static void cmd_rss(char **argv) {
    char err[OARD_ERRLEN];
    oard_model *m = load(argv[2]);
    const oard_config *c = oard_model_config(m);
    int n = atoi(argv[3]);
    if (n < 2) die("rss: need at least 2 atoms");
    reaction r = reaction_synthetic(c, n);
    input in = make_input(c, &r, 1);
    oard_batch batch = {1, in.sizes, atoi(argv[4])};
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long before = ru.ru_maxrss;
    const oard_real *xh[3] = {in.xh[0], in.xh[1], in.xh[2]};
    double t0 = now();
    if (oard_denoise(m, &batch, xh, in.t, NULL, in.eps, NULL, NULL, err)) die(err);
    double s = now() - t0;
    getrusage(RUSAGE_SELF, &ru);
    printf("bench rss atoms=3x%d nodes=%d edges=%d estimate_mib=%.1f peak_rss_mib=%.1f (before the call: %.1f) "
           "seconds=%.2f\n",
           n, 3 * n, 3 * n * (3 * n - 1), oard_memory_estimate(m, &batch) / 1048576.0, ru.ru_maxrss / 1024.0,
           before / 1024.0, s);
    free_input(&in);
    oard_model_free(m);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    for (int i = 1; i < argc; i++) show_cpu |= strcmp(argv[i], "--cpu") == 0;
    if (strcmp(mode, "table") == 0 && argc >= 6) cmd_table(argc, argv);
    else if (strcmp(mode, "one") == 0 && argc >= 8) cmd_one(argc, argv);
    else if (strcmp(mode, "ts") == 0 && argc >= 9) cmd_ts(argv);
    else if (strcmp(mode, "rss") == 0 && argc >= 5) cmd_rss(argv);
    else if (strcmp(mode, "bridge") == 0 && argc >= 7) cmd_bridge(argv);
    else {
        fprintf(stderr, "usage: bench table TINY.bin FULL.bin R.xyz P.xyz [--reps K]\n"
                        "       bench bridge NAME WEIGHTS.bin R.xyz P.xyz THREADS\n"
                        "       bench one MODEL.bin NAME R.xyz P.xyz rxn14|batch8 THREADS [--reps K]\n"
                        "       bench ts MODEL.bin R.xyz P.xyz STEPS RESAMPLINGS JUMP THREADS\n"
                        "       bench rss MODEL.bin ATOMS THREADS\n");
        return 2;
    }
    return 0;
}
