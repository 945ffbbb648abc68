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
#endif
