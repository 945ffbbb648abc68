# oa_reactdiff.c - build and test. Needs only a C99 compiler and GNU make; python3 (stdlib
# only) for the golden-data tests.
#
#   make                     oa_reactdiff (float32) and oa_reactdiff64 (float64)
#   make test                golden fixtures in the repo, ../shared/golden if present,
#                            tests/run_tests.sh if present
#   make check-golden DIR=d  golden cases of any directory with a manifest.json
#   make OPENMP=0            serial build (default: OpenMP if the compiler supports it)
#   make NATIVE=1            optimise for this machine (-O3 -march=native: AVX-512/AVX2 and
#                            FMA where the CPU has them; about 4x faster than the portable build)
#   make CC=clang OPT=-O3    other compiler / optimisation
#   make test GOLDEN_FLAGS="--cross -v"   also run the f64 cases in the float32 build
#   make bench               speed of the denoiser (tiny and official-size model), 1 and 2
#                            threads, float64/float32 ratio; built with $(BENCH_OPT)
#   make bench-ts            wall time of one TS candidate (150 steps; and RePaint 5 x 5)
#   make bench-rss           memory estimate and peak RSS of one call on 3 x 100 atoms

CC ?= cc
ifeq ($(NATIVE),1)
  OPT ?= -O3 -march=native
endif
OPT ?= -O2
CSTD ?= -std=c99
WARN ?= -Wall -Wextra
CFLAGS ?= $(OPT) $(CSTD) $(WARN)
LDLIBS ?= -lm
PYTHON ?= python3
GOLDEN_FLAGS ?=
DIR ?= ../shared/golden
BENCH_OPT ?= -O3 -march=native
FULL_CKPT ?= ../shared/golden/full.ckpt

# OpenMP: OPENMP=auto (default) compiles and links a tiny OpenMP program with
# $(OPENMP_FLAG); if that fails the build is serial, so `make` works with compilers that
# lack OpenMP (e.g. clang without libomp). OPENMP=1 forces the flag, OPENMP=0 turns it off.
OPENMP ?= auto
OPENMP_FLAG ?= -fopenmp
HASH := \#
OPENMP_PROBE = $(HASH)include <omp.h>\nint main(void) {\n  int n = 0;\n$(HASH)pragma omp parallel reduction(+ : n)\n  n += 1;\n  return n == omp_get_max_threads() ? 0 : 1;\n}\n

ifeq ($(OPENMP),auto)
  ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),all)),)
    OMP_FLAGS := $(shell tmp=$$(mktemp -d 2>/dev/null || echo /tmp/oard-omp-$$$$) && mkdir -p $$tmp && \
      printf '$(OPENMP_PROBE)' > $$tmp/probe.c && \
      $(CC) $(CFLAGS) $(OPENMP_FLAG) $$tmp/probe.c -o $$tmp/probe >/dev/null 2>&1 && \
      $$tmp/probe >/dev/null 2>&1 && echo '$(OPENMP_FLAG)'; rm -rf $$tmp)
    $(info OpenMP: $(if $(OMP_FLAGS),enabled ($(OMP_FLAGS)),not available with $(CC) $(OPENMP_FLAG); building serial))
  endif
else ifeq ($(OPENMP),1)
  OMP_FLAGS := $(OPENMP_FLAG)
else
  OMP_FLAGS :=
endif

ALL_CFLAGS = $(CFLAGS) $(OMP_FLAGS) -I.
ENGINE = oa_reactdiff.c oa_reactdiff.h

.PHONY: all runners test-programs check-golden test clean bench bench-ts bench-rss

all: oa_reactdiff oa_reactdiff64

oa_reactdiff: $(ENGINE)
	$(CC) $(ALL_CFLAGS) oa_reactdiff.c -o $@ $(LDLIBS)

oa_reactdiff64: $(ENGINE)
	$(CC) $(ALL_CFLAGS) -DOARD_DOUBLE oa_reactdiff.c -o $@ $(LDLIBS)

# The golden runners link the engine without its main() (-DOARD_NO_MAIN).
build/golden_runner: tests/golden_runner.c $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_NO_MAIN tests/golden_runner.c oa_reactdiff.c -o $@ $(LDLIBS)

build/golden_runner64: tests/golden_runner.c $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_DOUBLE -DOARD_NO_MAIN tests/golden_runner.c oa_reactdiff.c -o $@ $(LDLIBS)

runners: build/golden_runner build/golden_runner64

# Unit tests (tests/run_tests.sh builds and runs them). The schedule code is precision
# independent: default float32 engine. The equivariance test needs float64.
build/test_schedules: tests/test_schedules.c tests/npy_lite.h $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_NO_MAIN tests/test_schedules.c oa_reactdiff.c -o $@ $(LDLIBS)

build/test_equivariance: tests/test_equivariance.c tests/npy_lite.h $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_DOUBLE -DOARD_NO_MAIN tests/test_equivariance.c oa_reactdiff.c -o $@ $(LDLIBS)

build/test_consistency: tests/test_consistency.c $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_NO_MAIN tests/test_consistency.c oa_reactdiff.c -o $@ $(LDLIBS)

test-programs: build/test_schedules build/test_equivariance build/test_consistency

check-golden: runners
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $(DIR)

# Every part runs even if an earlier one failed; the target fails if any part did.
test: all runners
	@status=0; \
	echo "== golden fixtures (tests/fixtures/golden)"; \
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) tests/fixtures/golden || status=1; \
	if [ -d ../shared/golden ]; then \
		echo "== golden data (../shared/golden)"; \
		$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) ../shared/golden || status=1; \
	else \
		echo "note: ../shared/golden not found; only the fixtures in tests/fixtures/golden were checked"; \
	fi; \
	if [ -f tests/run_tests.sh ]; then \
		echo "== tests/run_tests.sh"; \
		bash tests/run_tests.sh || status=1; \
	fi; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED"; else echo "make test: all passed"; fi; \
	exit $$status

# Benchmarks (tests/bench.c): optimised for this machine with $(BENCH_OPT); nothing is asserted.
BENCH_CFLAGS = $(BENCH_OPT) $(CSTD) $(WARN) $(OMP_FLAGS) -I.
RXN = examples/rxn14_react.xyz examples/rxn14_prod.xyz

build/bench: tests/bench.c $(ENGINE)
	@mkdir -p build
	$(CC) $(BENCH_CFLAGS) -DOARD_NO_MAIN tests/bench.c oa_reactdiff.c -o $@ $(LDLIBS)

build/bench64: tests/bench.c $(ENGINE)
	@mkdir -p build
	$(CC) $(BENCH_CFLAGS) -DOARD_DOUBLE -DOARD_NO_MAIN tests/bench.c oa_reactdiff.c -o $@ $(LDLIBS)

build/tiny.bin: tests/fixtures/golden/tiny.ckpt tools/ckpt2bin.py
	@mkdir -p build
	$(PYTHON) tools/ckpt2bin.py $< $@ --untrained --quiet

build/full.bin: tools/ckpt2bin.py
	@mkdir -p build
	@if [ ! -f "$(FULL_CKPT)" ]; then echo "bench: $(FULL_CKPT) not found (the official-architecture checkpoint; set FULL_CKPT=...)"; exit 1; fi
	@if [ ! -f $@ ] || [ "$(FULL_CKPT)" -nt $@ ] || [ tools/ckpt2bin.py -nt $@ ]; then \
		echo "converting $(FULL_CKPT) -> $@"; $(PYTHON) tools/ckpt2bin.py "$(FULL_CKPT)" $@ --untrained --quiet; fi

bench: build/bench build/bench64 build/tiny.bin build/full.bin
	@build/bench table build/tiny.bin build/full.bin $(RXN) | tee build/bench.out
	@f32=$$(awk '/^bench full rxn14 threads=1 /{sub("ms_per_call=","",$$5); print $$5}' build/bench.out); \
	f64=$$(build/bench64 one build/full.bin full $(RXN) rxn14 1 | sed 's/^bench /bench64 /' | tee /dev/stderr | awk '{sub("ms_per_call=","",$$5); print $$5}'); \
	awk -v a="$$f64" -v b="$$f32" 'BEGIN { printf "bench float64/float32 time ratio (full rxn14 threads=1): %.2f\n", a / b }'

bench-ts: build/bench build/full.bin
	build/bench ts build/full.bin $(RXN) 150 1 1 2
	build/bench ts build/full.bin $(RXN) 150 5 5 2

bench-rss: build/bench build/full.bin
	build/bench rss build/full.bin 100 2

clean:
	rm -rf build oa_reactdiff oa_reactdiff64
