# oa_reactdiff.c - build and test. Needs only a C99 compiler and GNU make; python3 (stdlib
# only) for the golden-data tests.
#
#   make                     oa_reactdiff (float32) and oa_reactdiff64 (float64)
#   make test                golden fixtures in the repo, ../shared/golden if present,
#                            tests/run_tests.sh if present
#   make check-golden DIR=d  golden cases of any directory with a manifest.json
#   make install PREFIX=p    binaries in p/bin, weights in p/share/oa_reactdiff
#   make OPENMP=0            serial build (default: OpenMP if the compiler supports it)
#   make CC=clang OPT=-O3    other compiler / optimisation
#   make test GOLDEN_FLAGS="--cross -v"   also run the f64 cases in the float32 build

CC ?= cc
OPT ?= -O2
CSTD ?= -std=c99
WARN ?= -Wall -Wextra
CFLAGS ?= $(OPT) $(CSTD) $(WARN)
LDLIBS ?= -lm
PYTHON ?= python3
GOLDEN_FLAGS ?=
DIR ?= ../shared/golden
GOLDEN ?= ../shared/golden

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

.PHONY: all runners test-programs check-golden test test-sanitize install clean

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

test-programs: build/test_schedules build/test_equivariance

check-golden: runners
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $(DIR)

# Every part runs even if an earlier one failed; the target fails if any part did.
test: all runners
	@status=0; \
	echo "== golden fixtures (tests/fixtures/golden)"; \
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) tests/fixtures/golden || status=1; \
	if [ -d $(GOLDEN) ]; then \
		echo "== golden data ($(GOLDEN))"; \
		$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $(GOLDEN) || status=1; \
	else \
		echo "note: $(GOLDEN) not found; only the fixtures in tests/fixtures/golden were checked"; \
	fi; \
	if [ -f tests/run_tests.sh ]; then \
		echo "== tests/run_tests.sh"; \
		OARD_GOLDEN=$(GOLDEN) bash tests/run_tests.sh || status=1; \
	fi; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED"; else echo "make test: all passed"; fi; \
	exit $$status

# The whole test suite again, built with AddressSanitizer and UndefinedBehaviorSanitizer
# (any report fails the run), in a copy of the tree under build/sanitize.
SAN_FLAGS ?= -O1 -g -std=c99 -Wall -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_FILES = oa_reactdiff.c oa_reactdiff.h Makefile weights.bin tests tools examples docs
test-sanitize:
	rm -rf build/sanitize && mkdir -p build/sanitize
	cp -r $(SAN_FILES) build/sanitize/
	rm -rf build/sanitize/tests/fuzz/corpus
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	$(MAKE) --no-print-directory -C build/sanitize test CFLAGS="$(SAN_FLAGS)" LDLIBS="-lm" \
		GOLDEN=$(abspath $(GOLDEN)) PYTHON=$(PYTHON)

# make install PREFIX=/opt/oard: PREFIX/bin/oa_reactdiff{,64} and
# PREFIX/share/oa_reactdiff/weights.bin, where the installed binary looks for its weights.
PREFIX ?= /usr/local
DESTDIR ?=
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/oa_reactdiff
	install -m 755 oa_reactdiff oa_reactdiff64 $(DESTDIR)$(PREFIX)/bin/
	install -m 644 weights.bin $(DESTDIR)$(PREFIX)/share/oa_reactdiff/weights.bin

clean:
	rm -rf build oa_reactdiff oa_reactdiff64
