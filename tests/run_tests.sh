#!/usr/bin/env bash
# run_tests.sh - build and run the unit tests (called by `make test`; runs standalone too).
#
#   bash tests/run_tests.sh
#
#   test_schedules     gamma tables, DiffSchedule arithmetic and RePaint lists vs upstream;
#                      the gamma tables stored in the converted weights vs recomputed ones
#   test_equivariance  rotation / translation symmetry of the denoiser (float64 build), tiny
#                      and variant models, reactions rxn14 and rxnfar
#   test_consistency   speed paths: dump vs no dump, 1 vs 2 threads, workspace reuse give
#                      bit-identical outputs (float32 build); the memory limit refuses
#   test_backward      the backward pass: finite differences for every trainable tensor,
#                      training forward = inference forward, 1 vs 2 threads, zero gradient
#                      of buffers and padding (float64 build)
#   test_silu          the vectorised SiLU equals its scalar definition on all 2^32 floats
#   test_loader.sh     the loader refuses corrupted weights files with one clear line
#   test_cli.sh        every command, its errors, batch runs (shards, interruption, resume)
#   test_errors.sh     one test per row of the README's failure table
#   test_hostile.sh    deliberate input (issue 20): one test per defect D1-D12, peak memory
#                      of each refusal under 100 MB (/usr/bin/time -v)
#   test_train.sh      model save/init, the optimizer against a Python reference,
#                      checkpoints, the train command (resume bit-identical, its errors)
#   test_bridge.sh     React-OT through the command line: upstream's deployed result
#                      (run_model.py), symmetries, errors, train --objective bridge
#   test_evaluate.sh   tools/evaluate.py on two test reactions: outputs, counts, RMSDs equal
#                      to `oa_reactdiff rmsd`, self-check, failures (xtb part: SKIP without xtb)
#   test_refine.sh     tools/refine.py: a displaced TS refined to the reference, the reactant
#                      failed:freq, refused inputs; evaluate.py --refine (xtb part: SKIP without xtb)
#
# The checkpoints in tests/fixtures/golden are converted into build/ with tools/ckpt2bin.py
# (again only when the checkpoint or the converter is newer). If $OARD_GOLDEN/full.ckpt
# (default ../shared/golden/full.ckpt)
# exists, the official-architecture model is converted too (about 30 s the first time) and
# also checked. Every part runs even if an earlier one failed; exit status 1 if any failed.
set -u
cd "$(dirname "$0")/.." || exit 2
MAKE=${MAKE:-make}
PYTHON=${PYTHON:-python3}
FIX=tests/fixtures/golden

echo "== building the test programs"
if ! $MAKE --no-print-directory oa_reactdiff oa_reactdiff64 build/test_schedules build/test_equivariance build/test_consistency \
    build/test_backward build/test_train build/test_train64 build/test_silu build/golden_runner build/golden_runner64; then
    echo "run_tests: build FAILED"
    exit 1
fi

status=0
failed=()

# convert CKPT OUT: tools/ckpt2bin.py --untrained, skipped when OUT is up to date
convert() {
    if [ -f "$2" ] && [ "$2" -nt "$1" ] && [ "$2" -nt tools/ckpt2bin.py ]; then return 0; fi
    echo "converting $1 -> $2"
    "$PYTHON" tools/ckpt2bin.py "$1" "$2" --untrained --quiet
}

# run NAME COMMAND...: runs one test, records a failure
run() {
    local name=$1
    shift
    echo
    echo "== $name: $*"
    if "$@"; then
        echo "-- $name: passed"
    else
        echo "-- $name: FAILED"
        status=1
        failed+=("$name")
    fi
}

mkdir -p build
for m in tiny variant conf_tiny; do
    if ! convert "$FIX/$m.ckpt" "build/$m.bin"; then
        echo "run_tests: converting $FIX/$m.ckpt FAILED"
        status=1
        failed+=("convert $m")
    fi
done
if ! convert tests/fixtures/golden_ot/ot_tiny.ckpt build/ot_tiny.bin; then
    echo "run_tests: converting tests/fixtures/golden_ot/ot_tiny.ckpt FAILED"
    status=1
    failed+=("convert ot_tiny")
fi
FULL=
GOLDEN=${OARD_GOLDEN:-../shared/golden}
if [ -f "$GOLDEN/full.ckpt" ]; then
    if convert "$GOLDEN/full.ckpt" build/full.bin; then
        FULL=build/full.bin
    else
        status=1
        failed+=("convert full")
    fi
else
    echo "note: $GOLDEN/full.ckpt not found; the official-architecture model is not checked"
fi

run "schedules" build/test_schedules "$FIX/schedules" build/tiny.bin build/variant.bin build/conf_tiny.bin $FULL
run "equivariance rxn14" build/test_equivariance build/tiny.bin build/variant.bin "$FIX/cases/forward_tiny_rxn14_f64"
run "equivariance rxnfar" build/test_equivariance build/tiny.bin build/variant.bin "$FIX/cases/forward_tiny_rxnfar_f64"
if [ -n "$FULL" ]; then
    run "equivariance full model" build/test_equivariance "$FULL" - "$FIX/cases/forward_tiny_rxn14_f64"
fi
run "consistency" build/test_consistency build/tiny.bin build/variant.bin $FULL
run "backward pass" build/test_backward build/tiny.bin build/variant.bin
run "SiLU on every float" build/test_silu
run "loader" bash tests/test_loader.sh ./oa_reactdiff build/tiny.bin build/conf_tiny.bin
run "command line" bash tests/test_cli.sh ./oa_reactdiff build/conf_tiny.bin
run "failure table" bash tests/test_errors.sh ./oa_reactdiff build/conf_tiny.bin
run "hostile input" bash tests/test_hostile.sh ./oa_reactdiff build/conf_tiny.bin build/tiny.bin
run "React-OT bridge" bash tests/test_bridge.sh ./oa_reactdiff build/ot_tiny.bin
run "evaluation tool" bash tests/test_evaluate.sh ./oa_reactdiff build/conf_tiny.bin
run "TS refinement" bash tests/test_refine.sh ./oa_reactdiff build/conf_tiny.bin
run "training" bash tests/test_train.sh build/tiny.bin build/variant.bin

echo
if [ "$status" -ne 0 ]; then
    echo "run_tests: FAILED: ${failed[*]}"
else
    echo "run_tests: all passed"
fi
exit "$status"
