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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_with_repaired_header(data, size, load_bytes);
    return 0;
}
