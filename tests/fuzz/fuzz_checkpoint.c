/* fuzz_checkpoint.c - the checkpoint reader (oard_checkpoint_load, what train --resume
 * reads).
 *
 * Each input is loaded twice from a temporary file: as given (size and checksum checks)
 * and, if it is at least a header long, with the header's file size (bytes 48..55) and
 * CRC-32 (56..59) repaired, so that mutations reach the text parser, the optimizer state,
 * the arrays and the embedded weights image (which has its own checksum; the weights
 * loader behind it is fuzz_weights' target). A load that succeeds must give a model, an
 * optimizer and a key/value list; a failure gives none of them and a message. */
#include "fuzz_common.h"
#include <unistd.h>

static void load_bytes(const uint8_t *data, size_t size) {
    static char path[64];
    if (!path[0]) snprintf(path, sizeof(path), "/tmp/oard-fuzz-checkpoint-%ld.bin", (long)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    char err[OARD_ERRLEN] = "";
    oard_model *m = NULL;
    oard_optim *o = NULL;
    char **meta = NULL;
    int rc = oard_checkpoint_load(path, &m, &o, &meta, err);
    if (rc == OARD_OK) {
        if (!m || !o || !meta || oard_optim_steps(o) < 0) abort();
        for (int i = 0; meta[i]; i++) (void)strlen(meta[i]);
        free(meta);
        oard_optim_free(o);
        oard_model_free(m);
    } else if (m || o || meta || !err[0]) {
        abort();
    }
    remove(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_with_repaired_header(data, size, load_bytes);
    return 0;
}
