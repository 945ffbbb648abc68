/*
 * fuzz_common.h - shared by the fuzz harnesses (tests/fuzz/fuzz_*.c).
 *
 * Each harness includes the whole engine with its command-line code (main renamed), so
 * the parsers the CLI really uses are fuzzed, static functions included. A harness is one
 * function, LLVMFuzzerTestOneInput: built with clang -fsanitize=fuzzer it is a libFuzzer
 * target; built with replay_main.c (any C compiler) it replays files, which is how the
 * regression inputs run in `make test`.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H
#define _GNU_SOURCE
#define main oard_cli_main
#include "../../oa_reactdiff.c"
#undef main

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* the input as a read-only stream (fmemopen refuses size 0: use an empty temporary) */
static FILE *fuzz_stream(const uint8_t *data, size_t size) {
    if (size == 0) return tmpfile();
    return fmemopen((void *)data, size, "r");
}

/* Runs load on the input as given and, when it is long enough to hold a weights-file
 * header, again with the header's file size and CRC-32 repaired, so that mutations get
 * past the integrity checks to the parsers behind them. */
static void fuzz_with_repaired_header(const uint8_t *data, size_t size, void (*load)(const uint8_t *, size_t)) {
    load(data, size);
    if (size < 64) return;
    uint8_t *b = malloc(size);
    if (!b) return;
    memcpy(b, data, size);
    for (int k = 0; k < 8; k++) b[48 + k] = (uint8_t)((uint64_t)size >> (8 * k));
    uint32_t c = oard_crc32(0, b, 56);
    c = oard_crc32(c, b + 60, size - 60);
    for (int k = 0; k < 4; k++) b[56 + k] = (uint8_t)(c >> (8 * k));
    load(b, size);
    free(b);
}

/* ---- structure-aware mutation (LLVMFuzzerCustomMutator of fuzz_weights, fuzz_checkpoint,
 * fuzz_init). Byte flips rarely turn a number into another valid number, so these
 * mutators edit the formats' fields: numbers in metadata lines and the tensor directory,
 * header offsets and sizes, replaced by values near the edges (0, 2^31, 2^32, 2^63,
 * 2^64 - 64 k, huge floats), then put the file back together with its sizes and CRC-32
 * consistent. Built with replay_main.c they are never called. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

static uint64_t fuzz_rand(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* an edge value as text, for a number in a text field (hint: a size of the file) */
static void fuzz_edge_number(uint64_t *rs, uint64_t hint, char *out, size_t n) {
    static const char *const huge[] = {"1e10", "-1e10", "1e300", "4294967296", "9223372036854775808",
                                       "18446744073709551615", "-19968", "nan", "inf", "2147483648"};
    static const char *const small[] = {"0", "1", "-1", "2", "3", "7", "9", "33", "63", "64", "65", "1024", "8193",
                                        "1000001", "0.5", "1e-300", "-2147483649"};
    uint64_t r = fuzz_rand(rs), k;
    switch (r % 4) {
    case 0: /* 2^64 - 64 k: an offset that wraps; k small half of the time (64 k within a small tensor) */
        k = 1 + (r >> 8) % ((r >> 3) % 2 ? 8 : hint / 64 + 1);
        snprintf(out, n, "%llu", (unsigned long long)(0 - 64 * k));
        break;
    case 1: /* a multiple of 64 up to the hint: an offset inside or just past the file */
        snprintf(out, n, "%llu", (unsigned long long)(64 * ((r >> 8) % (hint / 64 + 2))));
        break;
    case 2: /* out of every range, or wrapping when read as another type */
        snprintf(out, n, "%s", huge[(r >> 8) % (sizeof(huge) / sizeof(huge[0]))]);
        break;
    default:
        snprintf(out, n, "%s", small[(r >> 8) % (sizeof(small) / sizeof(small[0]))]);
    }
}

/* replace one number of the text that starts in [lo, hi) (after a space, ',' or '=') by an
 * edge value: text has len bytes in a buffer of cap; returns the new length */
static size_t fuzz_replace_number(uint64_t *rs, char *text, size_t len, size_t cap, uint64_t hint, size_t lo, size_t hi) {
    size_t starts[512];
    int k = 0;
    for (size_t i = lo; i < hi && i < len && k < 512; i++) {
        int num = isdigit((unsigned char)text[i]) || (text[i] == '-' && i + 1 < len && isdigit((unsigned char)text[i + 1]));
        if (num && (i == 0 || text[i - 1] == ' ' || text[i - 1] == ',' || text[i - 1] == '=')) starts[k++] = i;
    }
    if (!k) return len;
    size_t a = starts[fuzz_rand(rs) % (uint64_t)k], b = a;
    while (b < len && text[b] != ' ' && text[b] != ',' && text[b] != '\n') b++;
    char val[48];
    fuzz_edge_number(rs, hint, val, sizeof(val));
    size_t vl = strlen(val);
    if (len - (b - a) + vl > cap) return len;
    memmove(text + a + vl, text + b, len - b);
    memcpy(text + a, val, vl);
    return len - (b - a) + vl;
}
#endif
