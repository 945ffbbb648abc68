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
#endif
