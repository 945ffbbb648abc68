# oa_reactdiff.c - build and test. Needs only a C99 compiler and GNU make; python3 (stdlib
# only) for the golden-data tests.
#
#   make                     oa_reactdiff (float32) and oa_reactdiff64 (float64)
#   make test                golden fixtures in the repo, ../shared/golden if present,
#                            tests/run_tests.sh if present
#   make check-golden DIR=d  golden cases of any directory with a manifest.json (OA-ReactDiff
#                            kinds and React-OT's schedule, ot_forward, ot_train_loss, ot_sample)
#   make install PREFIX=p    binaries in p/bin, weights in p/share/oa_reactdiff
#   make OPENMP=0            serial build (default: OpenMP if the compiler supports it)
#   make NATIVE=1            optimise for this machine only (-O3 -march=native). The default
#                            build (-O3, portable) runs its hot kernels on the widest of
#                            AVX-512, AVX2+FMA or the baseline that the CPU has (runtime
#                            dispatch; OARD_ISA=generic|avx2|avx512 picks one), within a few
#                            per cent of NATIVE=1
#   make CC=clang OPT=-O3    other compiler / optimisation
#   make test GOLDEN_FLAGS="--cross -v"   also run the f64 cases in the float32 build
#   make bench               speed of the denoiser (tiny and official-size model), 1 and 2
#                            threads, float64/float32 ratio, one React-OT TS (ode midpoint,
#                            nfe 10) at 2 threads; built with $(BENCH_OPT)
#   make bench-ts            wall time of one TS candidate (150 steps; and RePaint 5 x 5)
#   make bench-rss           memory estimate and peak RSS of one call on 3 x 100 atoms
#   make bench-train         training steps on data/: bundled size (weights.bin) and official
#                            size (build/full.bin), 1 and 2 threads, reactions/s and GFLOP/s
#   make check-dispatch      golden cases on every kernel path this CPU has (part of make test)

CC ?= cc
ifeq ($(NATIVE),1)
  OPT ?= -O3 -march=native
endif
OPT ?= -O3
CSTD ?= -std=c99
WARN ?= -Wall -Wextra
CFLAGS ?= $(OPT) $(CSTD) $(WARN)
LDLIBS ?= -lm
PYTHON ?= python3
GOLDEN_FLAGS ?=
DIR ?= ../shared/golden
GOLDEN ?= ../shared/golden
GOLDEN_OT ?= ../shared/golden_ot
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

.PHONY: all runners test-programs check-golden check-dispatch test test-core test-sanitize test-valgrind fuzz fuzz-run fuzz-replay fuzz-converter install clean bench bench-ts bench-rss bench-train

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

# training support (model save/init, optimizer, checkpoints) in both precisions
build/test_train: tests/test_train.c $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_NO_MAIN tests/test_train.c oa_reactdiff.c -o $@ $(LDLIBS)

build/test_train64: tests/test_train.c $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_DOUBLE -DOARD_NO_MAIN tests/test_train.c oa_reactdiff.c -o $@ $(LDLIBS)

# The backward pass checked by finite differences needs float64.
build/test_backward: tests/test_backward.c $(ENGINE)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -DOARD_DOUBLE -DOARD_NO_MAIN tests/test_backward.c oa_reactdiff.c -o $@ $(LDLIBS)

# SiLU's vectorised exponential against its scalar definition on every float: built as the
# benchmarks are ($(BENCH_OPT)), the build where it is in use (it says SKIP elsewhere).
build/test_silu: tests/test_silu.c $(ENGINE)
	@mkdir -p build
	$(CC) $(BENCH_OPT) $(CSTD) $(WARN) $(OMP_FLAGS) -I. tests/test_silu.c -o $@ $(LDLIBS)

test-programs: build/test_silu build/test_schedules build/test_equivariance build/test_consistency build/test_backward build/test_train \
	build/test_train64

check-golden: runners
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $(DIR)

# Every golden case on every kernel code path of this build that the CPU has (OARD_ISA
# selects it; a build for one target has one path, "native", which test-core checks).
check-dispatch: all runners
	@status=0; for p in generic avx2 avx512; do \
		got=$$(OARD_ISA=$$p ./oa_reactdiff --version 2>/dev/null | sed -n 's/.*kernels //p'); \
		if [ "$$got" != "$$p" ]; then echo "SKIP kernel path $$p (this build or CPU: $$(./oa_reactdiff --version | sed -n 's/.*kernels //p'))"; continue; fi; \
		for d in tests/fixtures/golden $(GOLDEN) tests/fixtures/golden_ot $(GOLDEN_OT); do \
			[ -d $$d ] || continue; \
			echo "== kernel path $$p: golden cases of $$d"; \
			OARD_ISA=$$p $(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $$d || status=1; \
		done; \
	done; exit $$status

# make test: everything CI runs (.ci/run installs the tools first). Parts whose tool is
# missing here print SKIP: xtb (dataset pipeline), valgrind, clang (libFuzzer; without it
# the fuzz corpora and regressions are replayed under ASan + UBSan instead).
test:
	@status=0; \
	$(MAKE) --no-print-directory test-core || status=1; \
	echo "== kernel code paths"; \
	$(MAKE) --no-print-directory check-dispatch || status=1; \
	echo "== sanitizers: the test suite built with ASan + UBSan"; \
	$(MAKE) --no-print-directory test-sanitize || status=1; \
	echo "== fuzzing"; \
	if command -v $(FUZZ_CC) >/dev/null 2>&1 && $(MAKE) --no-print-directory fuzz >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory fuzz-run FUZZ_TIME=$(CI_FUZZ_TIME) || status=1; \
	else \
		echo "SKIP libFuzzer runs ($(FUZZ_CC) with -fsanitize=fuzzer not available); replaying corpora"; \
	fi; \
	$(MAKE) --no-print-directory fuzz-replay || status=1; \
	$(MAKE) --no-print-directory fuzz-converter FUZZ_TIME=$(CI_CONVERTER_FUZZ_TIME) || status=1; \
	echo "== valgrind"; \
	if command -v $(VALGRIND) >/dev/null 2>&1; then $(MAKE) --no-print-directory test-valgrind || status=1; \
	else echo "SKIP valgrind not installed"; fi; \
	echo "== dataset pipeline (tools/datagen/ci_check.sh)"; \
	if command -v xtb >/dev/null 2>&1 && command -v obabel >/dev/null 2>&1; then bash tools/datagen/ci_check.sh || status=1; \
	else echo "SKIP xtb or obabel not installed"; fi; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED (see above)"; else echo "make test: everything passed"; fi; \
	exit $$status

CI_FUZZ_TIME ?= 60
CI_CONVERTER_FUZZ_TIME ?= 60

# Golden data and unit tests, in the build of this tree.
# Every part runs even if an earlier one failed; the target fails if any part did.
test-core: all runners
	@status=0; \
	echo "== golden fixtures (tests/fixtures/golden)"; \
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) tests/fixtures/golden || status=1; \
	if [ -d $(GOLDEN) ]; then \
		echo "== golden data ($(GOLDEN))"; \
		$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $(GOLDEN) || status=1; \
	else \
		echo "note: $(GOLDEN) not found; only the fixtures in tests/fixtures/golden were checked"; \
	fi; \
	echo "== React-OT golden fixtures (tests/fixtures/golden_ot)"; \
	$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) tests/fixtures/golden_ot || status=1; \
	if [ -d $(GOLDEN_OT) ]; then \
		echo "== React-OT golden data ($(GOLDEN_OT))"; \
		$(PYTHON) tests/check_golden.py $(GOLDEN_FLAGS) $(GOLDEN_OT) || status=1; \
	else \
		echo "note: $(GOLDEN_OT) not found; only the fixtures in tests/fixtures/golden_ot were checked"; \
	fi; \
	if [ -f tests/run_tests.sh ]; then \
		echo "== tests/run_tests.sh"; \
		OARD_GOLDEN=$(GOLDEN) bash tests/run_tests.sh || status=1; \
	fi; \
	if [ $$status -ne 0 ]; then echo "test-core: FAILED"; else echo "test-core: all passed"; fi; \
	exit $$status

# ---- fuzzing (tests/fuzz): libFuzzer harnesses for the xyz reader, the reaction-list
# reader, the weights loader, the checkpoint reader and --init-config (the last three
# with structure-aware mutators, LLVMFuzzerCustomMutator). `make fuzz-run FUZZ_TIME=1800` fuzzes each for that many
# seconds (new corpus entries in build/fuzz/corpus_*, crashes in build/fuzz/crash_*; the
# weights and checkpoint mutators may lengthen a file: -max_len 1 MB for them; keep a
# crash as tests/fuzz/regressions/<harness>/<name> once fixed). `make fuzz-replay` runs the
# seed corpora and the regression inputs through the harnesses built with the C compiler
# and ASan + UBSan, no clang needed.
FUZZ_CC ?= clang
FUZZ_TIME ?= 60
FUZZERS = xyz list weights checkpoint init
# clang's integer checks (signed overflow, shifts, division by zero, implicit conversions
# that change a value); unsigned wrap-around stays allowed: CRC-32, FNV-1a, splitmix64 and
# xoshiro256** are modular arithmetic on purpose.
INT_SAN = -fsanitize=integer -fno-sanitize=unsigned-integer-overflow,unsigned-shift-base
FUZZ_FLAGS = -g -O1 -std=c99 -fsanitize=fuzzer,address,undefined,float-cast-overflow $(INT_SAN) -fno-sanitize-recover=all
REPLAY_FLAGS = -g -O1 -std=c99 -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(ENGINE)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. $< -o $@ -lm

build/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h tests/fuzz/replay_main.c $(ENGINE)
	@mkdir -p build/fuzz
	$(CC) $(REPLAY_FLAGS) -I. $< tests/fuzz/replay_main.c -o $@ -lm

fuzz: $(FUZZERS:%=build/fuzz/fuzz_%)

fuzz-run: fuzz
	@status=0; for h in $(FUZZERS); do \
		mkdir -p build/fuzz/corpus_$$h tests/fuzz/regressions/$$h; \
		echo "== fuzz_$$h for $(FUZZ_TIME) s"; \
		ml=; case $$h in weights|checkpoint) ml=-max_len=1048576;; esac; \
		./build/fuzz/fuzz_$$h build/fuzz/corpus_$$h tests/fuzz/corpus/$$h tests/fuzz/regressions/$$h $$ml \
			-max_total_time=$(FUZZ_TIME) -timeout=60 -rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=build/fuzz/crash_$$h- 2>build/fuzz/log_$$h.txt || status=1; \
		grep -E "stat::number_of_executed_units|stat::new_units_added" build/fuzz/log_$$h.txt; \
		if [ $$status -ne 0 ]; then tail -40 build/fuzz/log_$$h.txt; break; fi; \
	done; exit $$status

fuzz-replay: $(FUZZERS:%=build/fuzz/replay_%)
	@status=0; for h in $(FUZZERS); do \
		mkdir -p tests/fuzz/regressions/$$h; \
		ASAN_OPTIONS=detect_leaks=1 ./build/fuzz/replay_$$h tests/fuzz/corpus/$$h tests/fuzz/regressions/$$h || status=1; \
	done; exit $$status

# The converter's fuzzer (tests/fuzz/fuzz_ckpt2bin.py: seeded mutations of pickle opcodes
# and zip members, each input in a child with 1 GB of address space and 10 s): FUZZ_TIME s.
fuzz-converter:
	$(PYTHON) tests/fuzz/fuzz_ckpt2bin.py --seconds $(FUZZ_TIME)

# ---- valgrind memcheck of CLI commands (serial build: no OpenMP thread pools), success
# and error paths; any error or leak fails.
VALGRIND ?= valgrind
VG = $(VALGRIND) -q --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all --error-exitcode=99
build/valgrind/oa_reactdiff: $(ENGINE)
	@mkdir -p build/valgrind
	$(CC) -O1 -g -std=c99 oa_reactdiff.c -o $@ -lm
test-valgrind: build/valgrind/oa_reactdiff
	@set -e; B=build/valgrind/oa_reactdiff; T=build/valgrind; \
	$(VG) $$B ts examples/vinyl_alcohol_react.xyz examples/vinyl_alcohol_prod.xyz -n 2 --steps 6 --resamplings 2 --jump 2 \
		--weights weights_diffusion.bin -o $$T/ts.xyz 2>$$T/ts.log || { cat $$T/ts.log; exit 1; }; \
	$(VG) $$B ts examples/vinyl_alcohol_react.xyz examples/vinyl_alcohol_prod.xyz --nfe 3 --weights weights.bin \
		-o $$T/tsb.xyz 2>$$T/tsb.log || { cat $$T/tsb.log; exit 1; }; \
	$(VG) $$B rmsd $$T/ts.xyz examples/vinyl_alcohol_ts.xyz >/dev/null; \
	$(VG) $$B info weights.bin >/dev/null; \
	$(VG) $$B sample --atoms CH4O --steps 4 --weights weights_diffusion.bin -o $$T/smp 2>/dev/null; \
	rm -rf $$T/train; \
	$(VG) $$B train --data tests/fixtures/train --init weights_diffusion.bin --out $$T/train --steps 2 --batch 2 --val-every 1 --ema 0.9 2>/dev/null; \
	$(VG) $$B train --data tests/fixtures/train --out $$T/train --steps 3 --batch 2 --val-every 1 --resume 2>/dev/null; \
	test -s $$T/train/model.bin; \
	printf '2\n\nC 0 0 0\nQ 1 0 0\n' >$$T/bad.xyz; \
	st=0; $(VG) $$B ts $$T/bad.xyz examples/vinyl_alcohol_prod.xyz --weights weights_diffusion.bin 2>$$T/err.log || st=$$?; \
	if [ $$st -ne 3 ]; then cat $$T/err.log; echo "valgrind: error path exit $$st, expected 3"; exit 1; fi; \
	echo "valgrind memcheck: ts (diffusion and bridge), rmsd, info, sample, train and resume, and an error path: no errors, no leaks"

# The whole test suite again, built with AddressSanitizer and UndefinedBehaviorSanitizer
# (any report fails the run), in a copy of the tree under build/sanitize.
SAN_FLAGS ?= -O2 -g -std=c99 -Wall -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer \
	$(if $(findstring clang,$(CC)),$(INT_SAN))
SAN_FILES = oa_reactdiff.c oa_reactdiff.h Makefile weights.bin weights_diffusion.bin tests tools examples docs data
test-sanitize:
	rm -rf build/sanitize && mkdir -p build/sanitize
	cp -r $(SAN_FILES) build/sanitize/
	rm -rf build/sanitize/tests/fuzz/corpus
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	$(MAKE) --no-print-directory -C build/sanitize test-core CFLAGS="$(SAN_FLAGS)" LDLIBS="-lm" \
		GOLDEN=$(abspath $(GOLDEN)) GOLDEN_OT=$(abspath $(GOLDEN_OT)) PYTHON=$(PYTHON)

# make install PREFIX=/opt/oard: PREFIX/bin/oa_reactdiff{,64} and
# PREFIX/share/oa_reactdiff/weights.bin (the bridge model ts uses) and weights_diffusion.bin
# (the diffusion model sample uses), where the installed binary looks for its weights.
PREFIX ?= /usr/local
DESTDIR ?=
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/oa_reactdiff
	install -m 755 oa_reactdiff oa_reactdiff64 $(DESTDIR)$(PREFIX)/bin/
	install -m 644 weights.bin $(DESTDIR)$(PREFIX)/share/oa_reactdiff/weights.bin
	install -m 644 weights_diffusion.bin $(DESTDIR)$(PREFIX)/share/oa_reactdiff/weights_diffusion.bin
# Benchmarks (tests/bench.c): optimised for this machine with $(BENCH_OPT); nothing is asserted.
BENCH_CFLAGS = $(BENCH_OPT) $(CSTD) $(WARN) $(OMP_FLAGS) -I.
RXN = tests/fixtures/xyz/rxn14_react.xyz tests/fixtures/xyz/rxn14_prod.xyz

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

build/ot_tiny.bin: tests/fixtures/golden_ot/ot_tiny.ckpt tools/ckpt2bin.py
	@mkdir -p build
	$(PYTHON) tools/ckpt2bin.py $< $@ --untrained --quiet

bench: build/bench build/bench64 build/tiny.bin build/full.bin build/ot_tiny.bin
	@build/bench table build/tiny.bin build/full.bin $(RXN) | tee build/bench.out
	@f32=$$(awk '/^bench full rxn14 threads=1 /{sub("ms_per_call=","",$$5); print $$5}' build/bench.out); \
	f64=$$(build/bench64 one build/full.bin full $(RXN) rxn14 1 | sed 's/^bench /bench64 /' | tee /dev/stderr | awk '{sub("ms_per_call=","",$$5); print $$5}'); \
	awk -v a="$$f64" -v b="$$f32" 'BEGIN { printf "bench float64/float32 time ratio (full rxn14 threads=1): %.2f\n", a / b }'
	@build/bench bridge tiny build/ot_tiny.bin $(RXN) 2
	@build/bench bridge full build/full.bin $(RXN) 2

bench-ts: build/bench build/full.bin
	build/bench ts build/full.bin $(RXN) 150 1 1 2
	build/bench ts build/full.bin $(RXN) 150 5 5 2

bench-rss: build/bench build/full.bin
	build/bench rss build/full.bin 100 2

# training speed on data/ (nothing asserted): weights.bin (4 layers, 32 channels) and the
# official size (build/full.bin: 6 x 196 x 96), 1 and 2 threads
TRAIN_DATA ?= data
bench-train: build/bench build/full.bin
	build/bench train-table weights.bin build/full.bin $(TRAIN_DATA)

clean:
	rm -rf build oa_reactdiff oa_reactdiff64
