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
 *   bench train MODEL.bin NAME DATA THREADS [--steps K] [--batch B]
 *       training steps (oard_train_loss with the gradient) on the train split of a
 *       dataset: bench-train <name> threads=<n> reactions_per_s=<r> gflops=<rate> ...
 *   bench train-table SMALL.bin FULL.bin DATA: the FMA peak, then both models at 1 and 2
 *       threads, each line with peak_fraction (make bench-train)
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

/* ---- training steps on a dataset (bench train) ----
 * The train split of DATA/index.tsv (columns id and split; DATA/reactions/<id>/{react,ts,
 * prod}.xyz), every reaction as given and with reactant and product exchanged, in a fixed
 * shuffled order, batches of B (default 14, as `oa_reactdiff train`); t uniform in 0..T.
 * One call of oard_train_loss with the gradient is one step (the optimizer, a few ms at
 * most, is not included). */
typedef struct {
    int n;
    oard_real *xh[3]; /* (n, nf) centred positions, one-hot, Z */
    double flops;     /* matrix-product operations of one training call on it */
} train_item;

/* Floating-point operations of the matrix products of one sample's training call
 * (oard_train_loss with the gradient), as the training kernels run them: the forward pass
 * of leftnet_train (every Linear on its rows; lin3 on unmasked edges and once for the
 * masked ones; edge_out_trans of the last layer on unmasked edges only), then per Linear
 * the weight gradient (as many as forward) and the input gradient (as many again, except
 * for the layers fed by inputs: encoders' first layers, radial_lin first layer, rbf_proj,
 * pos_expansion first layer). Unmasked edges: same-fragment pairs within the cutoff of the
 * clean structure. Elementwise work (SiLU, LayerNorm, sums over edges) is not counted. */
static double count_train_flops(const oard_config *c, int n, double Eu_frag) {
    const double H = c->hidden_channels, R = c->num_radial, L = c->num_layers, I = c->in_hidden_channels;
    const double EW = 3 * H + R, N = 3.0 * n, E = N * (N - 1), Eu = Eu_frag, Em = E - Eu;
    const double F = c->node_nfs[0] - c->pos_dim, Eemb = I - c->condition_time - c->condition_nf;
    double fw = 0, in_only = 0; /* MACs forward; MACs of layers whose input needs no gradient */
    /* encoders (3 fragments of n rows): F -> 2F -> Eemb... as core.py MLP widths */
    fw += N * (F * 2 * F + 2 * F * Eemb), in_only += N * F * 2 * F;
    fw += E * (R * H + H * H), in_only += E * R * H;                     /* radial_lin */
    fw += 2 * N * I * H;                                                   /* embedding, neighbor_emb */
    fw += N * H * H;                                                       /* s2v_lin1 */
    fw += (2 * Eu + (Em > 0)) * H * (3 * H / 4 + H / 4);                   /* edge lin3 */
    fw += N * (3 * H / 2 + H / 2 * H), in_only += N * 3 * H / 2;          /* pos_expansion */
    for (int l = 0; l < (int)L; l++) {
        fw += 2 * N * H * H + E * EW * H + E * H * H + E * H;              /* edge_mlp, att_mlp */
        fw += N * (2 * H * 2 * H + 2 * H * H);                             /* node_mlp (2H -> 2H -> H) */
        fw += (l == (int)L - 1 ? Eu : E) * H * EW;                         /* edge_out_trans */
        fw += N * (H * H + H * 3 * H);                                     /* x_proj */
        fw += Eu * (EW * 3 * H + 9 * H * H + R * 3 * H), in_only += Eu * R * 3 * H; /* dir_proj, rbf_proj */
        if (c->update)
            fw += 3 * N * H * 2 * H + N * H * (3 * 48 + 48 * 8 + 8) + N * (2 * H * H + H * 3 * H);
        if (c->pos_grad) fw += N * (H * H / 2 + H / 2 * 3);
    }
    /* the output block(s): vec1/vec2 projections on 3N rows, update_net on N rows */
    if (c->single_layer_output)
        fw += 3 * N * (H * H + H * 1) + N * (2 * H * H + H * 2);
    else
        fw += 3 * N * (H * H + H * H / 2) + N * (2 * H * H + H * H) + 3 * N * (H / 2 * H / 2 + H / 2) +
              N * (H * H / 2 + H / 2 * 2);
    return 2 * (3 * fw - in_only);
}

static char *read_line(FILE *f) {
    static char buf[65536];
    if (!fgets(buf, sizeof buf, f)) return NULL;
    buf[strcspn(buf, "\r\n")] = 0;
    return buf;
}

/* column index of name in a tab-separated header, or -1 */
static int tsv_column(const char *header, const char *name) {
    int col = 0;
    for (const char *p = header; p; col++) {
        const char *q = strchr(p, '\t');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == strlen(name) && strncmp(p, name, len) == 0) return col;
        p = q ? q + 1 : NULL;
    }
    return -1;
}

static void tsv_field(const char *line, int col, char *out, size_t cap) {
    for (int k = 0; k < col && line; k++) line = strchr(line, '\t') ? strchr(line, '\t') + 1 : NULL;
    size_t len = line ? strcspn(line, "\t") : 0;
    if (len >= cap) len = cap - 1;
    memcpy(out, line ? line : "", len);
    out[len] = 0;
}

static train_item *read_train_items(const oard_config *c, const char *dir, int *count) {
    char path[4096], id[512], split[64];
    snprintf(path, sizeof path, "%s/index.tsv", dir);
    FILE *f = fopen(path, "r");
    char *line = f ? read_line(f) : NULL;
    if (!line) die("cannot read DATA/index.tsv");
    int cid = tsv_column(line, "id"), csp = tsv_column(line, "split"), n = 0, cap = 0;
    if (cid < 0 || csp < 0) die("index.tsv: no id or split column");
    train_item *items = NULL;
    while ((line = read_line(f)) != NULL) {
        tsv_field(line, cid, id, sizeof id);
        tsv_field(line, csp, split, sizeof split);
        if (strcmp(split, "train") != 0) continue;
        const char *names[3] = {"react", "ts", "prod"};
        int na[3], *el[3];
        double *xyz[3];
        for (int k = 0; k < 3; k++) {
            snprintf(path, sizeof path, "%s/reactions/%s/%s.xyz", dir, id, names[k]);
            read_xyz(path, c, &na[k], &el[k], &xyz[k]);
        }
        if (na[1] != na[0] || na[2] != na[0]) die("a reaction's three structures differ in atom count");
        if (n + 2 > cap) cap = cap ? 2 * cap : 256, items = realloc(items, (size_t)cap * sizeof(train_item));
        if (!items) die("out of memory");
        const int nf = c->node_nfs[0], a = na[0];
        double Eu = 0;
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < a; i++)
                for (int j = 0; j < a; j++) {
                    double d2 = 0;
                    for (int q = 0; q < 3; q++) d2 += pow(xyz[k][3 * i + q] - xyz[k][3 * j + q], 2);
                    Eu += i != j && sqrt(d2) < c->cutoff;
                }
        for (int dirn = 0; dirn < 2; dirn++) { /* as given, then reactant and product exchanged */
            train_item *it = &items[n++];
            it->n = a;
            it->flops = count_train_flops(c, a, Eu);
            for (int k = 0; k < 3; k++) {
                const double *src = xyz[dirn && k != 1 ? 2 - k : k];
                double mean[3] = {0, 0, 0};
                for (int i = 0; i < a; i++)
                    for (int q = 0; q < 3; q++) mean[q] += src[3 * i + q] / a;
                it->xh[k] = xcalloc((size_t)a * nf, sizeof(oard_real));
                for (int i = 0; i < a; i++) {
                    oard_real *row = it->xh[k] + (size_t)i * nf;
                    for (int q = 0; q < 3; q++) row[q] = (oard_real)(src[3 * i + q] - mean[q]);
                    for (int e = 0; e < c->n_elements; e++) row[3 + e] = (oard_real)(e == el[0][i]);
                    row[3 + c->n_elements] = (oard_real)c->element_z[el[0][i]];
                }
            }
        }
        for (int k = 0; k < 3; k++) free(el[k]), free(xyz[k]);
    }
    fclose(f);
    if (n == 0) die("no train reactions in DATA/index.tsv");
    *count = n;
    return items;
}

/* one bench-train line: `steps` timed steps (after one warm-up) of batches of B; with
 * peak > 0 (GFLOP/s) also the fraction of it reached */
static void train_line(const char *path, const char *name, const char *data, int threads, int steps, int B,
                       double peak) {
    oard_model *m = load(path);
    const oard_config *c = oard_model_config(m);
    int n_items;
    if (threads < 1 || steps < 1 || B < 1) die("bad THREADS, --steps or --batch");
    train_item *items = read_train_items(c, data, &n_items);
    int *order = xcalloc((size_t)n_items, sizeof(int));
    uint64_t s = 2024;
    for (int i = 0; i < n_items; i++) order[i] = i;
    for (int i = n_items - 1; i > 0; i--) { /* Fisher-Yates with an LCG: a fixed order */
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int j = (int)((s >> 33) % (uint64_t)(i + 1));
        int tmp = order[i];
        order[i] = order[j], order[j] = tmp;
    }
    const int nf = c->node_nfs[0];
    oard_real *grad = xcalloc(oard_param_size(m), sizeof(oard_real));
    double *ms = xcalloc((size_t)steps, sizeof(double)), flops = 0, cpu = 0;
    oard_rng rng;
    oard_rng_seed(&rng, 7);
    char err[OARD_ERRLEN];
    int at = 0;
    for (int k = -1; k < steps; k++) { /* one warm-up step */
        int sizes[256], t_int[256];
        size_t rows = 0;
        if (B > 256) die("--batch at most 256");
        for (int b = 0; b < B; b++) rows += items[order[(at + b) % n_items]].n;
        oard_real *xh[3];
        for (int f = 0; f < 3; f++) xh[f] = xcalloc((size_t)rows * nf, sizeof(oard_real));
        double fl = 0;
        for (int b = 0, r = 0; b < B; b++) {
            const train_item *it = &items[order[(at + b) % n_items]];
            sizes[b] = it->n;
            t_int[b] = (int)((uint64_t)(at + b) * 2654435761u % (uint64_t)(c->training_timesteps + 1));
            for (int f = 0; f < 3; f++) memcpy(xh[f] + (size_t)r * nf, it->xh[f], (size_t)it->n * nf * sizeof(oard_real));
            r += it->n;
            fl += it->flops;
        }
        oard_batch batch = {B, sizes, threads};
        const oard_real *cx[3] = {xh[0], xh[1], xh[2]};
        double loss, t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        if (oard_train_loss(m, &batch, cx, NULL, t_int, &rng, &loss, NULL, grad, err)) die(err);
        if (k >= 0) ms[k] = 1e3 * (now() - t0), cpu += 1e3 * (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0), flops += fl;
        for (int f = 0; f < 3; f++) free(xh[f]);
        at += B;
    }
    double total = 0;
    for (int k = 0; k < steps; k++) total += ms[k];
    qsort(ms, (size_t)steps, sizeof(double), cmp_double);
    /* rates over all timed steps (total time), the median step for reference */
    double gflops = flops / (total * 1e-3) * 1e-9;
    printf("bench-train %s threads=%d reactions_per_s=%.1f gflops=%.1f", name, threads, steps * B / (total * 1e-3),
           gflops);
    if (peak > 0) printf(" peak_fraction=%.2f", gflops / peak);
    printf(" ms_per_step=%.1f median_ms=%.1f cpu_ms_per_step=%.1f steps=%d batch=%d\n", total / steps, ms[steps / 2],
           cpu / steps, steps, B);
    fflush(stdout);
    for (int i = 0; i < n_items; i++)
        for (int f = 0; f < 3; f++) free(items[i].xh[f]);
    free(items), free(order), free(grad), free(ms);
    oard_model_free(m);
}

/* bench train MODEL.bin NAME DATA THREADS [--steps K] [--batch B] */
static void cmd_train(int argc, char **argv) {
    int steps = 12, B = 14;
    for (int i = 6; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
        if (strcmp(argv[i], "--batch") == 0) B = atoi(argv[i + 1]);
    }
    train_line(argv[2], argv[3], argv[4], atoi(argv[5]), steps, B, 0);
}

/* bench train-table SMALL.bin FULL.bin DATA [--steps K] [--full-steps K]: the FMA peak at 1
 * and 2 threads, then both models at 1 and 2 threads */
static void cmd_train_table(int argc, char **argv) {
    int steps = 12, full_steps = 3;
    for (int i = 5; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
        if (strcmp(argv[i], "--full-steps") == 0) full_steps = atoi(argv[i + 1]);
    }
    double peak[3] = {0, peak_gflops(1), peak_gflops(2)};
    for (int nt = 1; nt <= 2; nt++) printf("bench peak float32 fma threads=%d gflops=%.1f\n", nt, peak[nt]);
    for (int nt = 1; nt <= 2; nt++) train_line(argv[2], "small", argv[4], nt, steps, 14, peak[nt]);
    for (int nt = 1; nt <= 2; nt++) train_line(argv[3], "full", argv[4], nt, full_steps, 14, peak[nt]);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    for (int i = 1; i < argc; i++) show_cpu |= strcmp(argv[i], "--cpu") == 0;
    if (strcmp(mode, "table") == 0 && argc >= 6) cmd_table(argc, argv);
    else if (strcmp(mode, "one") == 0 && argc >= 8) cmd_one(argc, argv);
    else if (strcmp(mode, "ts") == 0 && argc >= 9) cmd_ts(argv);
    else if (strcmp(mode, "rss") == 0 && argc >= 5) cmd_rss(argv);
    else if (strcmp(mode, "train") == 0 && argc >= 6) cmd_train(argc, argv);
    else if (strcmp(mode, "train-table") == 0 && argc >= 5) cmd_train_table(argc, argv);
    else if (strcmp(mode, "bridge") == 0 && argc >= 7) cmd_bridge(argv);
    else {
        fprintf(stderr, "usage: bench table TINY.bin FULL.bin R.xyz P.xyz [--reps K]\n"
                        "       bench bridge NAME WEIGHTS.bin R.xyz P.xyz THREADS\n"
                        "       bench one MODEL.bin NAME R.xyz P.xyz rxn14|batch8 THREADS [--reps K]\n"
                        "       bench ts MODEL.bin R.xyz P.xyz STEPS RESAMPLINGS JUMP THREADS\n"
                        "       bench rss MODEL.bin ATOMS THREADS\n"
                        "       bench train MODEL.bin NAME DATA THREADS [--steps K] [--batch B]\n"
                        "       bench train-table SMALL.bin FULL.bin DATA [--steps K] [--full-steps K]\n");
        return 2;
    }
    return 0;
}
