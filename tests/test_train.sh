#!/usr/bin/env bash
# test_train.sh - training support: writing weights files, fresh models, the optimizer,
# checkpoints, and the train command.
#
#   bash tests/test_train.sh [TINY.bin] [VARIANT.bin]      (from tests/run_tests.sh)
#
# Needs ./oa_reactdiff, ./oa_reactdiff64, build/test_train{,64}, build/golden_runner{,64}
# (make test-programs runners) and the converted golden checkpoints (default build/tiny.bin,
# build/variant.bin). Prints ok/FAIL per check; exit status 1 if any failed.
set -u
TINY_ARG=${1:-build/tiny.bin}
VARIANT_ARG=${2:-build/variant.bin}
. "$(dirname "$0")/cli_env.sh" train ./oa_reactdiff
TINY=$ROOT/$TINY_ARG
VARIANT=$ROOT/$VARIANT_ARG
BIN64=$ROOT/oa_reactdiff64
TT=$ROOT/build/test_train
TT64=$ROOT/build/test_train64
GOLD=$ROOT/tests/fixtures/golden/cases

# check NAME COMMAND...: the command must succeed (its output shown on failure)
check() {
    local name=$1
    shift
    if "$@" >check.out 2>&1; then pass "$name"; else bad "$name"; sed 's/^/        /' check.out | tail -20; fi
}

echo "-- oard_model_save"
check "float32 save of the tiny model, unchanged: byte-identical to tools/ckpt2bin.py's file" \
    bash -c "'$TT' resave '$TINY' resaved32.bin f32 && cmp '$TINY' resaved32.bin"
check "float32 save: every tensor bit-identical after reloading" "$TT" same "$TINY" resaved32.bin
check "float64 save in the float64 build: every tensor bit-identical after reloading" \
    bash -c "'$TT64' resave '$TINY' resaved64.bin f64 && '$TT64' same '$TINY' resaved64.bin && grep -aq 'weight f64 ' resaved64.bin"
check "float64 save of the float64 save: byte-identical (exact round trip)" \
    bash -c "'$TT64' resave resaved64.bin resaved64b.bin f64 && cmp resaved64.bin resaved64b.bin"
check "oa_reactdiff info reads both" bash -c "'$BIN' info resaved32.bin | grep -q verified && '$BIN' info resaved64.bin | grep -q verified"
for c in forward_tiny_rxn14_f32 forward_tiny_batch_f32; do
    check "golden $c with the re-saved float32 file" "$ROOT/build/golden_runner" forward "$GOLD/$c" resaved32.bin "$c"
done
for c in forward_tiny_rxn14_f64 forward_tiny_batch_f64; do
    check "golden $c with the re-saved float64 file" "$ROOT/build/golden_runner64" forward "$GOLD/$c" resaved64.bin "$c"
done

echo "-- oard_model_init (fresh models)"
# tensor list and the deterministic tensors (RBF buffers, gamma tables, LayerNorm) of a fresh
# model must be those of the converted upstream model of the same configuration; the random
# ones within PyTorch's (Linear) or Xavier's bounds
cat >compare_init.py <<'EOF'
import re, struct, sys
def tensors(p):
    b = open(p, "rb").read()
    ms, = struct.unpack_from("<Q", b, 24); do, = struct.unpack_from("<Q", b, 32)
    meta = b[64:64 + ms].decode()
    out, order = {}, []
    for line in meta.splitlines():
        if line.startswith("tensor "):
            f = line.split(); name, dt, off, nb = f[1], f[2], int(f[3]), int(f[4])
            n = nb // (8 if dt == "f64" else 4)
            out[name] = (tuple(map(int, f[6:])), struct.unpack_from("<%d%s" % (n, "d" if dt == "f64" else "f"), b, do + off))
            order.append(name)
    return out, order
ref, ref_order = tensors(sys.argv[1])
new, new_order = tensors(sys.argv[2])
assert ref_order == new_order, "tensor order differs"
xavier = re.compile(r"(x_proj\.\d|rbf_proj|vec_proj|xvec_proj\.\d|vec1_proj|vec2_proj|update_net\.\d)\.weight$")
for k in ref_order:
    shape, vals = new[k]
    assert shape == ref[k][0], k
    if "gamma_module" in k or "radial_emb" in k:
        assert vals == ref[k][1], "%s differs from upstream's" % k
    elif "layernorm.weight" in k:
        assert all(v == 1 for v in vals), k
    elif "layernorm.bias" in k or ("update_net" in k and k.endswith(".bias")):
        assert all(v == 0 for v in vals), k
    else:
        w = k[:-len(".bias")] + ".weight" if k.endswith(".bias") else k
        fan_in = new[w][0][1]
        bound = (6.0 / (new[w][0][0] + fan_in)) ** 0.5 if xavier.search(w) else fan_in ** -0.5
        assert max(abs(v) for v in vals) <= bound * (1 + 1e-6), "%s beyond its bound %g" % (k, bound)
        assert len(vals) < 64 or max(abs(v) for v in vals) > 0.8 * bound, "%s: values well inside the bound %g (wrong init?)" % (k, bound)
print("%d tensors: same names, shapes and order; deterministic ones equal, random ones within bounds" % len(ref_order))
EOF
check "fresh 2x16 model (tiny's configuration): tensors, buffers, gamma tables as upstream" \
    bash -c "'$TT' init layers=2,hidden=16,radial=8 1 init_tiny.bin && $PYTHON compare_init.py '$TINY' init_tiny.bin"
check "fresh variant model (non-legacy, pos_grad, two output blocks, reflect_equiv=0)" \
    bash -c "'$TT' init layers=2,hidden=16,radial=8,legacy=0,pos_grad=1,single_layer_output=0,reflect_equiv=0 1 init_var.bin && $PYTHON compare_init.py '$VARIANT' init_var.bin"
check "fresh model: same seed, same file; other seed, other file" \
    bash -c "'$TT' init layers=2,hidden=16,radial=8 1 again.bin && cmp init_tiny.bin again.bin && '$TT' init layers=2,hidden=16,radial=8 2 other.bin && ! cmp -s init_tiny.bin other.bin"
check "fresh model: info says untrained, ts runs with it" \
    bash -c "'$BIN' info init_tiny.bin | grep -q 'trained *NO' && '$BIN' ts '$ROOT/examples/vinyl_alcohol_react.xyz' '$ROOT/examples/vinyl_alcohol_prod.xyz' --weights init_tiny.bin --steps 4 --resamplings 1 --jump 1 -o ts_init.xyz 2>/dev/null && test -s ts_init.xyz"
if "$TT" init layers=2,hidden=16,bogus=3 1 x.bin >init_err.txt 2>&1 || ! grep -q "unknown key 'bogus'" init_err.txt || [ -e x.bin ]; then
    bad "init refuses an unknown key: $(cat init_err.txt)"
else pass "init refuses an unknown key: $(cat init_err.txt)"; fi
if "$TT" init layers=0 1 x.bin >init_err.txt 2>&1 || ! grep -q "num_layers" init_err.txt; then
    bad "init refuses layers=0: $(cat init_err.txt)"
else pass "init refuses layers=0: $(cat init_err.txt)"; fi

echo "-- optimizer against tests/check_optim.py (AdamW + clipping + EMA in Python)"
check "float64 build: to 1e-12 relative" $PYTHON "$ROOT/tests/check_optim.py" "$TT64" --tol 1e-12
check "float32 build: to 1e-4 (float32 arithmetic)" $PYTHON "$ROOT/tests/check_optim.py" "$TT" --tol 1e-4 --floor 1
echo "-- optimizer on a model's arena, checkpoints, refusals"
mkdir -p arena32 arena64
check "float32 build" "$TT" arena "$TINY" arena32
check "float64 build" "$TT64" arena "$TINY" arena64

echo "-- the train command"
DS=$ROOT/tests/fixtures/train
T="--data $DS --batch 3 --val-every 2"
check "6 steps from the tiny model: exit 0, logs, checkpoint, model" \
    bash -c "'$BIN' train $T --init '$TINY' --out r6 --steps 6 2>r6.err && test -s r6/model.bin && test -s r6/checkpoint.bin"
check "train.log: a header and one line of 7 fields per step 1..6; val.log: steps 2, 4, 6" \
    bash -c "test \"\$(grep -v '^#' r6/train.log | awk 'NF == 7 { print \$1 }' | tr '\n' ' ')\" = '1 2 3 4 5 6 ' &&
             test \"\$(grep -v '^#' r6/val.log | awk 'NF == 4 && \$3 == 4 { print \$1 }' | tr '\n' ' ')\" = '2 4 6 '"
check "model.bin: trained, with the training provenance; ts uses it without the untrained warning" \
    bash -c "'$BIN' info r6/model.bin | grep -q 'trained *yes' && '$BIN' info r6/model.bin | grep -q 'training  *6 steps on' &&
             '$BIN' ts '$ROOT/examples/vinyl_alcohol_react.xyz' '$ROOT/examples/vinyl_alcohol_prod.xyz' --weights r6/model.bin \
                 --steps 4 --resamplings 1 --jump 1 -o ts6.xyz 2>ts6.err && ! grep -q UNTRAINED ts6.err && test -s ts6.xyz"
check "the weights moved, the schedule tables and RBF buffers did not" \
    bash -c "! '$TT' same '$TINY' r6/model.bin >/dev/null && $PYTHON - '$TINY' r6/model.bin <<'EOF'
import struct, sys
def tensors(p):
    b = open(p, 'rb').read()
    ms, = struct.unpack_from('<Q', b, 24); do, = struct.unpack_from('<Q', b, 32)
    out = {}
    for line in b[64:64 + ms].decode().splitlines():
        if line.startswith('tensor '):
            f = line.split(); out[f[1]] = b[do + int(f[3]):do + int(f[3]) + int(f[4])]
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
frozen = [k for k in a if 'gamma_module' in k or 'radial_emb' in k]
assert len(frozen) == 4 and all(a[k] == b[k] for k in frozen)
moved = [k for k in a if a[k] != b[k]]
assert len(moved) > 50, len(moved)
EOF"
check "same command, same model.bin; another seed, another" \
    bash -c "'$BIN' train $T --init '$TINY' --out r6b --steps 6 2>/dev/null && cmp r6/model.bin r6b/model.bin &&
             '$BIN' train $T --init '$TINY' --out r6c --steps 6 --seed 7 2>/dev/null && ! cmp -s r6/model.bin r6c/model.bin"
# N steps + resume to 2N == 2N steps: model.bin byte for byte, the logs' numbers line for line
R="$T --ema 0.9 --checkpoint-every 3 --weight-decay 0.01"
for b in 32 64; do
    B=$BIN
    [ $b = 64 ] && B=$BIN64
    "$B" train $R --init "$TINY" --out full$b --steps 10 2>/dev/null
    "$B" train $R --init "$TINY" --out half$b --steps 5 2>/dev/null
    "$B" train $R --out half$b --steps 10 --resume --threads 2 2>/dev/null
    check "float$b: 10 steps == 5 steps + resume to 10 (EMA, weight decay, checkpoint mid-epoch, 2 threads after resuming)" \
        bash -c "cmp full$b/model.bin half$b/model.bin && diff <(cut -d' ' -f1-6 full$b/train.log) <(cut -d' ' -f1-6 half$b/train.log) &&
                 diff <(awk '\$1 % 2 == 0 { print \$1, \$2 }' full$b/val.log) <(awk '\$1 % 2 == 0 { print \$1, \$2 }' half$b/val.log)"
done
check "float64 build: model.bin holds float64 tensors" bash -c "grep -aq 'weight f64 ' full64/model.bin && '$BIN' info full64/model.bin >/dev/null"
check "--init-config: a fresh 1-layer model trains" \
    bash -c "'$BIN' train $T --init-config layers=1,hidden=8,radial=4 --out fresh --steps 3 2>/dev/null && '$BIN' info fresh/model.bin | grep -q '1 layers, hidden 8'"
# killed by SIGTERM part-way: no partial file; resuming gives the uninterrupted run's model
K="$T --val-every 50 --checkpoint-every 7 --threads 1 --steps 150"
"$BIN" train $K --init "$TINY" --out ref 2>/dev/null
"$BIN" train $K --init "$TINY" --out killed 2>/dev/null &
pid=$!
sleep 0.7
kill -TERM $pid 2>/dev/null
wait $pid
st=$?
left=$(ls killed | grep -c '\.tmp\.')
if [ $st -eq 143 ] && [ ! -e killed/model.bin ] && [ "$left" -eq 0 ] && [ -s killed/checkpoint.bin ]; then
    last=$(grep -v '^#' killed/train.log | tail -1 | cut -d' ' -f1)
    "$BIN" train --out killed --resume 2>/dev/null # data, steps, cadence: the checkpoint's
    if cmp -s ref/model.bin killed/model.bin && diff <(cut -d' ' -f1-6 ref/train.log) <(cut -d' ' -f1-6 killed/train.log) >/dev/null; then
        pass "SIGTERM at step $last of 150: exit 143, no model.bin, no temporary file; resumed: model.bin and train.log as uninterrupted"
    else
        bad "SIGTERM at step $last: the resumed run differs from the uninterrupted one"
    fi
elif [ $st -eq 0 ]; then
    echo "  SKIP  SIGTERM: the run finished within 0.7 s (machine too fast for this test)"
else
    bad "SIGTERM: exit $st, model.bin $([ -e killed/model.bin ] && echo present || echo absent), $left temporary files"
fi

echo
if [ "$fails" -ne 0 ]; then
    echo "test_train: $fails FAILED"
    exit 1
fi
echo "test_train: all passed"
