/*
 * test_train.c - the training support of the library: oard_model_save, oard_model_init,
 * the optimizer (AdamW, clipping, EMA) and checkpoints. Built in both precisions
 * (build/test_train, build/test_train64) by tests/run_tests.sh; driven by tests/test_train.sh.
 *
 *   test_train resave IN.bin OUT.bin f32|f64      load and save unchanged
 *   test_train same A.bin B.bin                   every tensor of A bit-identical in B
 *   test_train init SPEC SEED OUT.bin             oard_model_init, saved as float32
 *   test_train optim N STEPS LR WD EMA AMSGRAD CLIP
 *                                                 the optimizer on a vector of N values with
 *                                                 the gradient schedule of check_optim.py;
 *                                                 prints every step (checked there)
 *   test_train arena WEIGHTS.bin DIR              the optimizer on a model's arena: buffers,
 *                                                 padding and unreached tensors untouched;
 *                                                 a checkpoint restores the run bit for bit;
 *                                                 oard_model_save refusals
 * Exit status 0 when every check passed.
 */
#include "oa_reactdiff.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            printf("  ok    ");                                                                                        \
        } else {                                                                                                       \
            printf("  FAIL  ");                                                                                        \
            failures++;                                                                                                \
        }                                                                                                              \
        printf(__VA_ARGS__);                                                                                           \
        printf("\n");                                                                                                  \
    } while (0)

static void die(const char *what, const char *err) {
    printf("  FAIL  %s: %s\n", what, err);
    exit(1);
}

static oard_model *load(const char *path) {
    char err[OARD_ERRLEN];
    oard_model *m;
    if (oard_model_load(path, 0, &m, err)) die("load", err);
    return m;
}

static size_t numel(const oard_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->dims[d];
    return n;
}

/* ---- resave / same / init ---- */
static int cmd_resave(const char *in, const char *out, int f64) {
    char err[OARD_ERRLEN];
    oard_model *m = load(in);
    if (oard_model_save(m, NULL, NULL, f64, out, err)) die("save", err);
    oard_model_free(m);
    return 0;
}

static int cmd_same(const char *a, const char *b) {
    oard_model *A = load(a), *B = load(b);
    int n = oard_tensor_count(A), bad = n != oard_tensor_count(B);
    for (int i = 0; !bad && i < n; i++) {
        oard_tensor ta, tb;
        oard_tensor_info(A, i, &ta);
        oard_tensor_info(B, i, &tb);
        bad = strcmp(ta.name, tb.name) || ta.ndim != tb.ndim || memcmp(ta.dims, tb.dims, sizeof(ta.dims));
        if (bad) {
            printf("  FAIL  tensor %d: %s vs %s\n", i, ta.name, tb.name);
            break;
        }
        size_t k = numel(&ta);
        double *x = malloc(k * sizeof(double)), *y = malloc(k * sizeof(double));
        oard_tensor_get(A, i, oard_param_data(A), x);
        oard_tensor_get(B, i, oard_param_data(B), y);
        if (memcmp(x, y, k * sizeof(double))) {
            printf("  FAIL  tensor %s differs\n", ta.name);
            bad = 1;
        }
        free(x), free(y);
    }
    CHECK(!bad, "%s and %s: %d tensors, every value bit-identical", a, b, n);
    oard_model_free(A), oard_model_free(B);
    return bad;
}

static int cmd_init(const char *spec, const char *seed, const char *out) {
    char err[OARD_ERRLEN];
    oard_model *m;
    if (oard_model_init(spec, strtoull(seed, NULL, 10), &m, err)) {
        printf("%s\n", err);
        return 1;
    }
    if (oard_model_save(m, NULL, NULL, 0, out, err)) die("save", err);
    oard_model_free(m);
    return 0;
}

/* ---- optimizer on a vector: the gradient schedule of tests/check_optim.py ---- */
static double grad_scale(int s) { /* step s = 1, 2, ... */
    if (s == 3) return 1e4;          /* above the initial limit of 4500: clipped */
    if (s == 20) return 0;           /* no gradient: the step is skipped */
    if (s == 55) return 300;         /* a spike against a queue of small norms */
    return 2 + s % 7;
}

static int cmd_optim(int argc, char **argv) {
    if (argc < 9) return 2;
    int n = atoi(argv[2]), steps = atoi(argv[3]);
    oard_optim_opts o;
    oard_optim_defaults(&o);
    o.lr = strtod(argv[4], NULL), o.weight_decay = strtod(argv[5], NULL), o.ema_decay = strtod(argv[6], NULL);
    o.amsgrad = atoi(argv[7]), o.clip = atoi(argv[8]);
    oard_real *p = calloc((size_t)n, sizeof(oard_real)), *g = calloc((size_t)n, sizeof(oard_real));
    for (int i = 0; i < n; i++) p[i] = (oard_real)(0.1 * i - 0.3);
    char err[OARD_ERRLEN];
    oard_optim *opt;
    if (oard_optim_new(NULL, (size_t)n, p, &o, &opt, err)) die("optim_new", err);
    for (int s = 1; s <= steps; s++) {
        double a = grad_scale(s);
        for (int i = 0; i < n; i++) g[i] = (oard_real)(a * ((double)p[i] - (0.25 * (i + 1) - 1)));
        oard_step_info info;
        if (oard_optim_step(opt, p, g, &info, err)) die("step", err);
        printf("step %d %.17g %.17g %d\n", s, info.grad_norm, info.clip_limit, info.clipped);
        printf("p");
        for (int i = 0; i < n; i++) printf(" %.17g", (double)p[i]);
        printf("\n");
        if (oard_optim_ema(opt)) {
            printf("ema");
            for (int i = 0; i < n; i++) printf(" %.17g", (double)oard_optim_ema(opt)[i]);
            printf("\n");
        }
    }
    oard_optim_free(opt);
    free(p), free(g);
    return 0;
}

/* ---- optimizer on a model's arena, checkpoints, save refusals ---- */
static uint64_t lcg = 12345;
static double urand(void) {
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(lcg >> 11) * 0x1.0p-53;
}

/* a gradient with garbage everywhere (padding, buffers), zero on the tensors named *last_layer* */
static void fill_grad(const oard_model *m, oard_real *g, size_t n) {
    for (size_t k = 0; k < n; k++) g[k] = (oard_real)(urand() - 0.5);
    for (int i = 0; i < oard_tensor_count(m); i++) {
        oard_tensor t;
        oard_tensor_info(m, i, &t);
        if (!strstr(t.name, "last_layer")) continue;
        size_t rows = t.ld ? (size_t)t.dims[0] : numel(&t), cols = t.ld ? numel(&t) / rows : 1, ld = t.ld ? (size_t)t.ld : rows;
        for (size_t c = 0; c < cols; c++)
            for (size_t r = 0; r < rows; r++) g[t.offset + c * ld + r] = 0;
    }
}

static int cmd_arena(const char *weights, const char *dir) {
    char err[OARD_ERRLEN], ck[4096], path[4096];
    oard_model *m = load(weights);
    size_t n = oard_param_size(m);
    oard_real *p = oard_param_data(m), *g = malloc(n * sizeof(oard_real)), *before = malloc(n * sizeof(oard_real));
    memcpy(before, p, n * sizeof(oard_real));
    oard_optim_opts o;
    oard_optim_defaults(&o);
    o.lr = 1e-2, o.weight_decay = 0.1, o.ema_decay = 0.9;
    oard_optim *opt;
    if (oard_optim_new(m, 0, p, &o, &opt, err)) die("optim_new", err);
    for (int s = 0; s < 3; s++) {
        fill_grad(m, g, n);
        if (oard_optim_step(opt, p, g, NULL, err)) die("step", err);
    }
    /* what may change: the trainable values that got a gradient; nothing else */
    unsigned char *trainable = calloc(n, 1);
    int moved_ok = 1, frozen_ok = 1, unreached_ok = 1;
    for (int i = 0; i < oard_tensor_count(m); i++) {
        oard_tensor t;
        oard_tensor_info(m, i, &t);
        size_t rows = t.ld ? (size_t)t.dims[0] : numel(&t), cols = t.ld ? numel(&t) / rows : 1, ld = t.ld ? (size_t)t.ld : rows;
        for (size_t c = 0; c < cols; c++)
            for (size_t r = 0; r < rows; r++) {
                size_t k = t.offset + c * ld + r;
                trainable[k] = (unsigned char)(t.trainable ? 1 : 2);
                if (!t.trainable && p[k] != before[k]) frozen_ok = 0;
                else if (t.trainable && strstr(t.name, "last_layer") && p[k] != before[k]) unreached_ok = 0;
                else if (t.trainable && !strstr(t.name, "last_layer") && p[k] == before[k]) moved_ok = 0;
            }
    }
    int pad_ok = 1;
    for (size_t k = 0; k < n; k++)
        if (!trainable[k] && p[k] != 0) pad_ok = 0;
    CHECK(moved_ok, "every trainable value that has a gradient moved (weight decay 0.1, EMA 0.9)");
    CHECK(frozen_ok, "buffers (gamma tables, RBF means and betas) unchanged");
    CHECK(unreached_ok, "a tensor without gradient (last_layer) unchanged despite weight decay");
    CHECK(pad_ok, "padding of the transposed weights still zero");

    /* checkpoint after 3 steps; 2 more steps, or reload and the same 2 steps: identical */
    snprintf(ck, sizeof(ck), "%s/ck.bin", dir);
    const char *meta[] = {"mine", "value with spaces", "other", "1", NULL};
    if (oard_checkpoint_save(ck, m, p, opt, meta, err)) die("checkpoint_save", err);
    uint64_t lcg_saved = lcg;
    for (int s = 0; s < 2; s++) {
        fill_grad(m, g, n);
        if (oard_optim_step(opt, p, g, NULL, err)) die("step", err);
    }
    oard_real *a = malloc(n * sizeof(oard_real)), *ae = malloc(n * sizeof(oard_real));
    memcpy(a, p, n * sizeof(oard_real));
    memcpy(ae, oard_optim_ema(opt), n * sizeof(oard_real));
    oard_model *m2;
    oard_optim *opt2;
    char **meta2;
    if (oard_checkpoint_load(ck, &m2, &opt2, &meta2, err)) die("checkpoint_load", err);
    CHECK(meta2[0] && !strcmp(meta2[0], "mine") && !strcmp(meta2[1], "value with spaces") && !strcmp(meta2[2], "other") &&
              !strcmp(meta2[3], "1") && !meta2[4],
          "checkpoint keeps the caller's key/value lines");
    CHECK(oard_optim_steps(opt2) == 3 && oard_param_size(m2) == n, "checkpoint: 3 steps, same arena size");
    lcg = lcg_saved;
    oard_real *p2 = oard_param_data(m2);
    for (int s = 0; s < 2; s++) {
        fill_grad(m2, g, n);
        if (oard_optim_step(opt2, p2, g, NULL, err)) die("step", err);
    }
    CHECK(!memcmp(a, p2, n * sizeof(oard_real)) && !memcmp(ae, oard_optim_ema(opt2), n * sizeof(oard_real)),
          "3 steps + checkpoint + reload + 2 steps: parameters and EMA bit-identical to 5 steps");
    free(meta2);

    /* refusals: nothing written */
    snprintf(path, sizeof(path), "%s/refused.bin", dir);
    const char *bad_nl[] = {"description", "two\nlines", NULL};
    const char *bad_arch[] = {"num_layers", "3", NULL};
    const char *bad_val[] = {"trained", "yes", NULL};
    int r1 = oard_model_save(m, NULL, bad_nl, 0, path, err);
    CHECK(r1 == OARD_ERR_ARG && strstr(err, "line break"), "save refuses a value with a line break: %s", err);
    int r2 = oard_model_save(m, NULL, bad_arch, 0, path, err);
    CHECK(r2 == OARD_ERR_ARG && strstr(err, "architecture"), "save refuses an architecture change: %s", err);
    int r3 = oard_model_save(m, NULL, bad_val, 0, path, err);
    CHECK(r3 != OARD_OK && strstr(err, "trained"), "save refuses a malformed value: %s", err);
    int first_trainable = -1;
    for (int i = 0; i < oard_tensor_count(m) && first_trainable < 0; i++) {
        oard_tensor t;
        oard_tensor_info(m, i, &t);
        if (t.trainable) first_trainable = i, p[t.offset] = NAN;
    }
    int r4 = oard_model_save(m, NULL, NULL, 0, path, err);
    CHECK(r4 == OARD_ERR_NUMERIC, "save refuses NaN parameters: %s", err);
    CHECK(access(path, F_OK) != 0, "no file left by the refusals");
    fill_grad(m2, g, n);
    g[n / 3] = NAN;
    memcpy(a, p2, n * sizeof(oard_real));
    long long steps_before = oard_optim_steps(opt2);
    int r5 = oard_optim_step(opt2, p2, g, NULL, err);
    CHECK(r5 == OARD_ERR_NUMERIC && strstr(err, "NaN") && !memcmp(a, p2, n * sizeof(oard_real)) &&
              oard_optim_steps(opt2) == steps_before,
          "step refuses a NaN gradient, nothing changes: %s", err);
    const char *reserved[] = {"optim.lr", "1", NULL};
    int r6 = oard_checkpoint_save(ck, m2, p2, opt2, reserved, err);
    CHECK(r6 == OARD_ERR_ARG && strstr(err, "reserved"), "checkpoint refuses a reserved key: %s", err);

    oard_optim_free(opt), oard_optim_free(opt2);
    oard_model_free(m), oard_model_free(m2);
    free(g), free(before), free(trainable), free(a), free(ae);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "resave")) return cmd_resave(argv[2], argv[3], !strcmp(argv[4], "f64"));
    if (argc >= 4 && !strcmp(argv[1], "same")) return cmd_same(argv[2], argv[3]);
    if (argc >= 5 && !strcmp(argv[1], "init")) return cmd_init(argv[2], argv[3], argv[4]);
    if (argc >= 2 && !strcmp(argv[1], "optim")) return cmd_optim(argc, argv);
    if (argc >= 4 && !strcmp(argv[1], "arena")) return cmd_arena(argv[2], argv[3]);
    fprintf(stderr, "usage: test_train resave|same|init|optim|arena ... (see the source)\n");
    return 2;
}
