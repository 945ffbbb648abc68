/* fuzz_weights.c - the weights loader (oard_model_load, the public entry point).
 *
 * Each input is loaded twice from a temporary file: as given (so the size and checksum
 * checks are exercised) and, if it is at least a header long, with the header's file
 * size and CRC-32 repaired, so that mutations reach the metadata parser, the tensor
 * directory and the model builder behind the checksum. */
#include "fuzz_common.h"
#include <unistd.h>

static void load_bytes(const uint8_t *data, size_t size) {
    static char path[64];
    if (!path[0]) snprintf(path, sizeof(path), "/tmp/oard-fuzz-weights-%ld.bin", (long)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    char err[OARD_ERRLEN];
    oard_model *m = NULL;
    int rc = oard_model_load(path, 0, &m, err);
    if (rc == OARD_OK) {
        const oard_config *c = oard_model_config(m);
        if (!c || c->n_params == 0) abort();
        oard_model_free(m);
    } else if (m || !err[0]) {
        abort(); /* a failure leaves no model and always says why */
    }
    remove(path);
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    load_bytes(data, size);
    if (size >= 64) {
        uint8_t *b = malloc(size);
        memcpy(b, data, size);
        uint64_t n = size;
        for (int k = 0; k < 8; k++) b[48 + k] = (uint8_t)(n >> (8 * k));
        uint32_t c = oard_crc32(0, b, 56);
        c = oard_crc32(c, b + 60, size - 60);
        put_u32(b + 56, c);
        load_bytes(b, size);
        free(b);
    }
    return 0;
}
