/* fuzz_weights.c - the weights loader (oard_model_load, the public entry point).
 *
 * Each input is loaded twice from a temporary file: as given (so the size and checksum
 * checks are exercised) and, if it is at least a header long, with the header's file
 * size and CRC-32 repaired, so that mutations reach the metadata parser, the tensor
 * directory and the model builder behind the checksum. A load that succeeds must have
 * every tensor inside the data section (checked here from the directory, so a wrapped
 * offset is found even where the read it causes stays inside the buffer).
 *
 * LLVMFuzzerCustomMutator edits the file as a weights file: a number in a metadata line
 * or the tensor directory replaced by an edge value (fuzz_common.h), a tensor's offset
 * set so that offset + nbytes passes 2^64 (by less than nbytes), a line dropped or
 * repeated, libFuzzer's byte mutations on the metadata text only, or on the header's
 * count, kind and version; the header's sizes, tensor count and CRC-32 are then made
 * consistent, so nearly every mutant reaches the parsers. */
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
        uint64_t data_size = size - m->file.data_offset;
        for (int i = 0; i < m->file.n_t; i++) { /* every tensor lies in the data section */
            const wtensor *t = &m->file.t[i];
            if (t->offset > data_size || t->nbytes > data_size - t->offset) abort();
        }
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

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
    uint64_t rs = seed;
    if (size < 64 || memcmp(data, WFILE_MAGIC, 8) != 0 || fuzz_rand(&rs) % 16 == 0)
        return LLVMFuzzerMutate(data, size, max_size);
    uint64_t meta_size = rd_u64(data + 24), data_off = rd_u64(data + 32);
    if (meta_size > size - 64 || data_off > size || data_off < 64 + meta_size) return LLVMFuzzerMutate(data, size, max_size);
    size_t dlen = size - (size_t)data_off, cap = (size_t)meta_size + 4096;
    char *text = malloc(cap);
    uint8_t *dsec = malloc(dlen + 1);
    if (!text || !dsec) return free(text), free(dsec), size;
    memcpy(text, data + 64, (size_t)meta_size);
    memcpy(dsec, data + data_off, dlen);
    size_t len = (size_t)meta_size;
    uint8_t header[64];
    memcpy(header, data, 64);
    int recount = 1;
    switch (fuzz_rand(&rs) % 8) {
    case 3: { /* a tensor's offset so that offset + nbytes passes 2^64 by at most nbytes */
        size_t tl[4096], nt = 0;
        for (size_t i = 0; i + 7 <= len && nt < 4096; i++)
            if ((i == 0 || text[i - 1] == '\n') && !memcmp(text + i, "tensor ", 7)) tl[nt++] = i;
        if (!nt) break;
        size_t a = tl[fuzz_rand(&rs) % nt];
        char *e = memchr(text + a, '\n', len - a), name[200], dtype[8];
        size_t b = e ? (size_t)(e - text) : len;
        unsigned long long off, nb;
        int pos = 0;
        char line[400];
        if (b - a >= sizeof(line)) break;
        memcpy(line, text + a, b - a), line[b - a] = 0;
        if (sscanf(line, "tensor %199s %7s %llu %llu%n", name, dtype, &off, &nb, &pos) != 4 || nb < 64) break;
        char nl[400];
        int n2 = snprintf(nl, sizeof(nl), "tensor %s %s %llu %llu%s", name, dtype,
                          (unsigned long long)(0 - 64 * (1 + fuzz_rand(&rs) % (nb / 64))), nb, line + pos);
        if (n2 <= 0 || (size_t)n2 >= sizeof(nl) || len - (b - a) + (size_t)n2 > cap) break;
        memmove(text + a + n2, text + b, len - b);
        memcpy(text + a, nl, (size_t)n2);
        len = len - (b - a) + (size_t)n2;
        break;
    }
    case 0: case 1: case 2: { /* a number of one line, the tensor lines more often */
        size_t line0[4096], tl[4096], nl = 0, nt = 0;
        for (size_t i = 0; i < len && nl < 4096; i++)
            if (i == 0 || text[i - 1] == '\n') {
                line0[nl++] = i;
                if (len - i > 7 && !memcmp(text + i, "tensor ", 7)) tl[nt++] = i;
            }
        if (!nl) break;
        size_t a = (nt && fuzz_rand(&rs) % 2) ? tl[fuzz_rand(&rs) % nt] : line0[fuzz_rand(&rs) % nl];
        char *e = memchr(text + a, '\n', len - a);
        len = fuzz_replace_number(&rs, text, len, cap, dlen, a, e ? (size_t)(e - text) : len);
        break;
    }
    case 4: { /* drop or repeat a line */
        size_t a = fuzz_rand(&rs) % (len ? len : 1);
        while (a > 0 && text[a - 1] != '\n') a--;
        char *e = memchr(text + a, '\n', len - a);
        size_t b = e ? (size_t)(e - text) + 1 : len;
        if (fuzz_rand(&rs) % 2) memmove(text + a, text + b, len - b), len -= b - a;
        else if (len + (b - a) <= cap) memmove(text + b + (b - a), text + b, len - b), memcpy(text + b, text + a, b - a), len += b - a;
        break;
    }
    case 5: /* libFuzzer's mutations on the metadata text */
        len = LLVMFuzzerMutate((uint8_t *)text, len, cap);
        break;
    case 6: /* the header's tensor count, kind or version */
        LLVMFuzzerMutate(header + 8, 8, 8);
        if (fuzz_rand(&rs) % 2) LLVMFuzzerMutate(header + 60, 4, 4), recount = 0;
        break;
    default: /* the data section's bytes */
        if (dlen) dlen = LLVMFuzzerMutate(dsec, dlen, dlen);
    }
    uint64_t doff = (64 + len + 63) / 64 * 64, total = doff + dlen;
    if (total > max_size) {
        free(text), free(dsec);
        return LLVMFuzzerMutate(data, size, max_size);
    }
    uint32_t n_t = 0;
    for (size_t i = 0; i + 7 <= len; i++)
        if ((i == 0 || text[i - 1] == '\n') && !memcmp(text + i, "tensor ", 7)) n_t++;
    memcpy(data, header, 64);
    memcpy(data + 64, text, len);
    memset(data + 64 + len, 0, (size_t)(doff - 64 - len));
    memcpy(data + doff, dsec, dlen);
    wr_u64(data + 24, len);
    wr_u64(data + 32, doff);
    wr_u64(data + 40, dlen);
    wr_u64(data + 48, total);
    if (recount) wr_u32(data + 60, n_t);
    uint32_t c = oard_crc32(0, data, 56);
    wr_u32(data + 56, oard_crc32(c, data + 60, (size_t)total - 60));
    free(text), free(dsec);
    return (size_t)total;
}
