/* fuzz_checkpoint.c - the checkpoint reader (oard_checkpoint_load, what train --resume
 * reads).
 *
 * Each input is loaded twice from a temporary file: as given (size and checksum checks)
 * and, if it is at least a header long, with the header's file size (bytes 48..55) and
 * CRC-32 (56..59) repaired, so that mutations reach the text parser, the optimizer state,
 * the arrays and the embedded weights image (which has its own checksum; the weights
 * loader behind it is fuzz_weights' target). A load that succeeds must give a model, an
 * optimizer and a key/value list; a failure gives none of them and a message.
 *
 * LLVMFuzzerCustomMutator edits the header as a checkpoint header: one of the section
 * offsets and sizes (text size, model offset, model size, arrays offset) set to an edge
 * value (0, the file size, another field, another field's difference, 2^64 - 64 k, ...),
 * the array count, or libFuzzer's byte mutations on the text or the whole file; the file
 * size and CRC-32 are then repaired as the harness does. */
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

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
    uint64_t rs = seed;
    if (size < 64 || memcmp(data, CKPT_MAGIC, 8) != 0 || fuzz_rand(&rs) % 8 == 0) size = LLVMFuzzerMutate(data, size, max_size);
    else {
        static const int field[4] = {16, 24, 32, 40}; /* text_size, model_off, model_size, arrays_off */
        uint64_t r = fuzz_rand(&rs), v[4];
        for (int k = 0; k < 4; k++) v[k] = rd_u64(data + field[k]);
        int f = (int)(r % 4);
        uint64_t other = v[(r >> 2) % 4], k64 = 64 * (1 + (r >> 8) % (size / 64 + 1)), x;
        switch ((r >> 4) % 8) {
        case 0: x = 0 - k64; break;                        /* wraps when added to a size */
        case 1: x = other; break;
        case 2: x = other - v[(r >> 6) % 4]; break;         /* a difference, maybe negative */
        case 3: x = size - k64 % (size + 1); break;
        case 4: x = v[f] + k64; break;
        case 5: x = v[f] - k64; break;
        case 6: x = (uint64_t)1 << (r >> 20) % 64; break;
        default: x = (r >> 24) % (size + 1);
        }
        if ((r >> 7) % 4 == 0 && f != 0) x &= ~(uint64_t)63; /* offsets are multiples of 64 */
        switch ((r >> 30) % 8) {
        case 0: /* the array count */
            wr_u32(data + 60, (uint32_t)(r >> 40) % 6);
            break;
        case 1: { /* the text, byte mutations in place */
            uint64_t ts = v[0] < size - 64 ? v[0] : size - 64;
            if (ts) LLVMFuzzerMutate(data + 64, (size_t)ts, (size_t)ts);
            break;
        }
        default:
            wr_u64(data + field[f], x);
        }
    }
    if (size >= 64) { /* the size and CRC, as the harness repairs them */
        wr_u64(data + 48, size);
        uint32_t c = oard_crc32(0, data, 56);
        wr_u32(data + 56, oard_crc32(c, data + 60, size - 60));
    }
    return size;
}
