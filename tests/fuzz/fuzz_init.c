/* fuzz_init.c - a fresh model from a --init-config spec (oard_model_init: the spec parser,
 * the metadata checks, image_build and the loader behind it).
 *
 * The input is the spec text, after small defaults (layers=1,hidden=8,radial=4,
 * training_timesteps=100, which it may override: the last value of a key counts). Specs
 * that ask for a large model (more than 3 layers, 64 channels, 64 radial functions or
 * 2000 timesteps) are skipped to keep executions fast: size is not what this harness is
 * after. A success must give a model whose metadata
 * round-trips (oard_model_save to memory is exercised by the train tests), a failure a
 * message.
 *
 * LLVMFuzzerCustomMutator writes specs from the keys and plausible values (so that the
 * metadata text takes every length, e.g. a multiple of 64 bytes), or mutates the bytes. */
#include "fuzz_common.h"

static const char *const KEYS[] = {"layers", "hidden", "radial", "cutoff", "in_hidden_channels", "reflect_equiv", "legacy",
                                   "update", "pos_grad", "single_layer_output", "object_aware", "training_schedule",
                                   "sampling_schedule", "training_timesteps", "sampling_timesteps", "training_precision",
                                   "sampling_precision"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char small[] = "layers=1,hidden=8,radial=4,training_timesteps=100,";
    if (size > 400) return 0;
    char spec[460], copy[460], err[OARD_ERRLEN] = "";
    memcpy(spec, small, sizeof(small) - 1);
    memcpy(spec + sizeof(small) - 1, data, size);
    spec[sizeof(small) - 1 + size] = 0;
    if (memchr(data, 0, size)) return 0;
    memcpy(copy, spec, sizeof(copy));
    for (char *it = strtok(copy, ","); it; it = strtok(NULL, ",")) { /* skip large models */
        char *eq = strchr(it, '=');
        if (!eq) continue;
        double v = strtod(eq + 1, NULL);
        if ((!strncmp(it, "layers=", 7) && v > 3) || (!strncmp(it, "hidden=", 7) && v > 64) ||
            (!strncmp(it, "radial=", 7) && v > 64) || (!strncmp(it, "in_hidden_channels=", 19) && v > 64) ||
            (strstr(it, "timesteps=") && v > 2000))
            return 0;
    }
    oard_model *m = NULL;
    int rc = oard_model_init(spec, 7, &m, err);
    if (rc == OARD_OK) {
        if (!m || oard_model_config(m)->n_params == 0) abort();
        oard_model_free(m);
    } else if (m || !err[0]) {
        abort();
    }
    return 0;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
    uint64_t rs = seed;
    if (fuzz_rand(&rs) % 4 == 0) return LLVMFuzzerMutate(data, size, max_size);
    static const char *const scheds[] = {"cosine", "polynomial_2", "polynomial_1.5", "linear", "csin_0.1_0.9_1", "cosine_2"};
    char out[400] = "";
    int items = 1 + (int)(fuzz_rand(&rs) % 6);
    for (int i = 0; i < items; i++) {
        const char *k = KEYS[fuzz_rand(&rs) % (sizeof(KEYS) / sizeof(KEYS[0]))];
        char v[64];
        uint64_t r = fuzz_rand(&rs);
        if (!strcmp(k, "layers")) snprintf(v, sizeof(v), "%d", 1 + (int)(r % 3));
        else if (!strcmp(k, "hidden") || !strcmp(k, "in_hidden_channels")) snprintf(v, sizeof(v), "%d", 4 + (int)(r % 29));
        else if (!strcmp(k, "radial")) snprintf(v, sizeof(v), "%d", 1 + (int)(r % 16));
        else if (!strcmp(k, "cutoff")) snprintf(v, sizeof(v), "%.*f", (int)(r % 7), 1 + (double)(r >> 8 & 0xFFFF) / 4096.0);
        else if (strstr(k, "schedule")) snprintf(v, sizeof(v), "%s", scheds[r % 6]);
        else if (strstr(k, "timesteps")) snprintf(v, sizeof(v), "%d", 1 + (int)(r % 300));
        else if (strstr(k, "precision")) snprintf(v, sizeof(v), "%.*g", 1 + (int)(r % 6), 1e-5 * (1 + (double)(r >> 8 & 0xFF)));
        else snprintf(v, sizeof(v), "%d", (int)(r % 2));
        snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s=%s", i ? "," : "", k, v);
    }
    size_t n = strlen(out);
    if (n > max_size) return LLVMFuzzerMutate(data, size, max_size);
    memcpy(data, out, n);
    return n;
}
