#!/usr/bin/env bash
# test_bridge.sh - React-OT (the bridge) through the command line: upstream's deployed
# result, the symmetries a user relies on, the errors, training with --objective bridge.
#
#   bash tests/test_bridge.sh [BINARY] [BRIDGE_WEIGHTS]
#
# BINARY defaults to ./oa_reactdiff (BINARY64 = BINARY with 64 appended, the float64 build);
# BRIDGE_WEIGHTS defaults to build/ot_tiny.bin (tests/run_tests.sh converts
# tests/fixtures/golden_ot/ot_tiny.ckpt, upstream's untrained SBModule). Every check prints
# what it measured; the script exits 1 if any check failed.
set -u
. "$(dirname "$0")/cli_env.sh" bridge "$1" "${2:-build/ot_tiny.bin}"
OT=$CONF
BIN64=${BIN}64
FIX=$ROOT/tests/fixtures/golden_ot
XT="$PYTHON $ROOT/tests/xyz_transform.py"
BC="$PYTHON $ROOT/tests/bridge_check.py"
RXN=$ROOT/tests/fixtures/xyz

check() { # check NAME COMMAND...: the command's output is shown, its status decides
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then pass "$name: $(tail -1 <<<"$out")"; else bad "$name: $(tail -3 <<<"$out" | tr '\n' ' ')"; fi
}

echo "== the bundled default (weights.bin) is a bridge model; sample finds weights_diffusion.bin"
check "the README's first command: one bridge candidate of the example reaction with the default weights" \
    bash -c "env -u OA_REACTDIFF_WEIGHTS '$BIN' ts '$ROOT/examples/vinyl_alcohol_react.xyz' '$ROOT/examples/vinyl_alcohol_prod.xyz' -o first.xyz 2>/dev/null &&
             grep -c '^Properties=.*method=bridge solver=ode nfe=10 ode_method=midpoint.*weights=\"$ROOT/weights.bin\"' first.xyz"
check "sample with no --weights uses weights_diffusion.bin" \
    bash -c "env -u OA_REACTDIFF_WEIGHTS -u OA_REACTDIFF_DIFFUSION_WEIGHTS '$BIN' sample --atoms CH4O --steps 4 -o smp 2>/dev/null &&
             grep -c 'weights_diffusion.bin' smp_0_ts.xyz"

echo "== converter and info"
check "ckpt2bin: the EMA copy is another set of weights" \
    bash -c "'$PYTHON' '$ROOT/tools/ckpt2bin.py' '$FIX/ot_tiny.ckpt' ema.bin --untrained --ema --quiet &&
             ! cmp -s ema.bin '$OT' && '$BIN' info ema.bin | grep 'EMA weights' && echo 'ema.bin differs from state_dict weights'"
check "info shows the objective and the SB schedule" \
    bash -c "'$BIN' info '$OT' | grep -E '^objective +bridge' >/dev/null && '$BIN' info '$OT' | grep -E 'SB, T=3000, beta_max 0.3, power 0.5, inv_power 1$'"

echo "== upstream's deployed path (run_model.py: centring, Kabsch fit of P onto R, %.6f, EnSB.sample)"
for c in "ode-midpoint10 --solver ode --nfe 10" "ddpm100 --solver ddpm --nfe 100"; do
    set -- $c
    name=$1
    shift
    "$BIN" ts "$FIX/reactions/rxn14rot_react.xyz" "$FIX/reactions/rxn14rot_prod.xyz" --weights "$OT" "$@" -o rm_$name.xyz 2>/dev/null
    check "float32 ts $*: TS vs upstream's out_TS_pos within 1e-3 A" \
        $BC deploy rm_$name.xyz "$FIX/reactions/rxn14rot_react.xyz" "$FIX/deploy/runmodel_${name}_ot_tiny_rxn14rot_f32/out_TS_pos.npy" 1e-3
done

echo "== symmetries (float64 build; the inputs pass through %.6f as upstream's, so 'equal' is to 1e-5 A)"
B=$BIN64
"$B" ts "$RXN/rxn14_react.xyz" "$RXN/rxn14_prod.xyz" --weights "$OT" -o ts0.xyz 2>/dev/null
$XT "$RXN/rxn14_prod.xyz" p_moved.xyz --seed 3 --rotate --translate
"$B" ts "$RXN/rxn14_react.xyz" p_moved.xyz --weights "$OT" -o ts_p.xyz 2>/dev/null
check "P rotated and translated alone: the same TS" $BC same ts_p.xyz ts0.xyz 1e-5
$XT "$RXN/rxn14_react.xyz" r_moved.xyz --seed 4 --rotate --translate
$XT ts0.xyz ts0_moved.xyz --seed 4 --rotate --translate
"$B" ts r_moved.xyz "$RXN/rxn14_prod.xyz" --weights "$OT" -o ts_r.xyz 2>/dev/null
check "R rotated and translated: the TS moves with it" $BC same ts_r.xyz ts0_moved.xyz 1e-5
perm=$($XT "$RXN/rxn14_react.xyz" r_perm.xyz --seed 5 --permute --print-perm)
$XT "$RXN/rxn14_prod.xyz" p_perm.xyz --seed 5 --permute
"$B" ts r_perm.xyz p_perm.xyz --weights "$OT" -o ts_perm.xyz 2>/dev/null
check "R and P permuted alike: the TS permuted alike" $BC same ts_perm.xyz ts0.xyz 1e-5 "$(tr ' ' ',' <<<"$perm")"
check "the TS is a real move from the midpoint (the check above is not vacuous)" \
    bash -c "! $BC same ts0.xyz ts_p.xyz 0 >/dev/null || ! $BC same ts0.xyz '$RXN/rxn14_react.xyz' 0.05"

echo "== errors"
R=$RXN/rxn14_react.xyz
$XT "$RXN/rxn14_prod.xyz" p_shuffled.xyz --seed 6 --permute
expect_failure "R and P not atom-mapped" 3 "a bridge model needs R and P atom-mapped" out.xyz -- \
    "$BIN" ts "$R" p_shuffled.xyz --weights "$OT" -o out.xyz
expect_failure "-n 2 with a bridge model" 2 "gives one candidate (-n 1)" out.xyz -- \
    "$BIN" ts "$R" "$RXN/rxn14_prod.xyz" --weights "$OT" -n 2 -o out.xyz
expect_failure "--resamplings with a bridge model" 2 "--steps, --resamplings and --jump apply to diffusion" out.xyz -- \
    "$BIN" ts "$R" "$RXN/rxn14_prod.xyz" --weights "$OT" --resamplings 3 -o out.xyz
expect_failure "--solver with a diffusion model" 2 "apply to bridge (React-OT) models" out.xyz -- \
    "$BIN" ts "$R" "$RXN/rxn14_prod.xyz" --weights "$ROOT/weights_diffusion.bin" --solver ode -o out.xyz
expect_failure "unknown solver" 2 "--solver: 'rk4' is not ode, ddpm or ei" out.xyz -- \
    "$BIN" ts "$R" "$RXN/rxn14_prod.xyz" --weights "$OT" --solver rk4 -o out.xyz
expect_failure "--ode-method without the ode solver" 2 "--ode-method applies to --solver ode" out.xyz -- \
    "$BIN" ts "$R" "$RXN/rxn14_prod.xyz" --weights "$OT" --solver ddpm --ode-method euler -o out.xyz
expect_failure "nfe beyond the schedule" 2 "--nfe 5000: at most 2999" out.xyz -- \
    "$BIN" ts "$R" "$RXN/rxn14_prod.xyz" --weights "$OT" --nfe 5000 -o out.xyz
expect_failure "sample needs a diffusion model" 4 "sample needs a diffusion model" gen_0_ts.xyz -- \
    "$BIN" sample --atoms CH4O --weights "$OT" -o gen

echo "== ts --list with a bridge model"
printf '%s %s a\n%s %s b\n' "$R" "$RXN/rxn14_prod.xyz" r_moved.xyz "$RXN/rxn14_prod.xyz" >list.txt
check "two reactions, the first equal to the single ts run" \
    bash -c "'$B' ts --list list.txt --outdir res --weights '$OT' 2>/dev/null && $BC same res/a.xyz ts0.xyz 0 && test -s res/b.xyz"

echo "== train --objective bridge"
T="--data $ROOT/tests/fixtures/train --batch 2 --val-every 2 --lr 1e-3"
TINY=$ROOT/build/tiny.bin
check "from a diffusion model: 4 steps, the result is a bridge model without diffusion tables" \
    bash -c "'$BIN' train $T --init '$TINY' --objective bridge --out b4 --steps 4 2>/dev/null &&
             '$BIN' info b4/model.bin | grep -E '^objective +bridge' && ! '$BIN' info b4/model.bin | grep -q 'sampling schedule' &&
             ! grep -aq gamma_module b4/model.bin && echo 'objective bridge, no gamma tables'"
check "the loss is React-OT's: the first step's loss is below 2 (a diffusion loss on this data is ~1-3; the label's mean square is ~0.2-0.5)" \
    awk 'NR==2 { print "step 1 loss " $2; exit !($2 > 0 && $2 < 2) }' b4/train.log
"$BIN" train $T --init "$TINY" --objective bridge --out b2 --steps 2 2>/dev/null
"$BIN" train --out b2 --resume --steps 4 2>/dev/null
check "2 steps + resume to 4 == 4 steps (model.bin byte for byte)" bash -c "cmp b4/model.bin b2/model.bin && echo identical"
check "the trained bridge model runs ts" bash -c "'$BIN' ts '$R' '$RXN/rxn14_prod.xyz' --weights b4/model.bin -o tb.xyz 2>/dev/null && grep -c '^Properties' tb.xyz"
check "a fresh bridge model (--init-config --objective bridge) trains" \
    bash -c "'$BIN' train $T --init-config layers=1,hidden=8,radial=4 --objective bridge --out bf --steps 2 2>/dev/null && '$BIN' info bf/model.bin | grep -E '^objective +bridge'"
expect_failure "--objective diffusion on a bridge checkpoint" 2 "--objective diffusion" b2/none -- \
    "$BIN" train --out b2 --resume --steps 6 --objective diffusion
expect_failure "unknown objective" 2 "--objective: 'flow' is not diffusion or bridge" b9/model.bin -- \
    "$BIN" train $T --init "$TINY" --objective flow --out b9 --steps 2

[ "$fails" -eq 0 ] && echo "bridge: all passed" || echo "bridge: $fails FAILED"
[ "$fails" -eq 0 ]
