#!/usr/bin/env bash
# test_cli.sh - the command line as a user meets it: every command, its errors, batch runs.
#
#   bash tests/test_cli.sh [BINARY] [CONFIDENCE_WEIGHTS]
#
# BINARY defaults to ./oa_reactdiff (with the bundled weights.bin beside it);
# CONFIDENCE_WEIGHTS defaults to build/conf_tiny.bin (tests/run_tests.sh converts it).
# Every check prints what it measured; the script exits 1 if any check failed.
set -u
. "$(dirname "$0")/cli_env.sh" cli "$@"
# These checks are about the diffusion method (RePaint, seeds, several candidates): its
# model is weights_diffusion.bin; the bundled default weights.bin is a bridge model
# (tests/test_bridge.sh checks the default).
export OA_REACTDIFF_WEIGHTS=$ROOT/weights_diffusion.bin
EX=$ROOT/tests/fixtures/xyz   # rxn14 (golden reaction: chiral, two-molecule product)
XT="$PYTHON $ROOT/tests/xyz_transform.py"

# quick sampler settings: the checks are about the command line, not the chemistry
Q="--steps 12 --resamplings 2 --jump 2"

# errors_only FILE: stderr lines that are not the untrained-weights warning
errors_only() { grep -v "UNTRAINED" "$1" || true; }

# coordinates of an xyz file (comment lines dropped)
coords() { awk 'NR==1{n=$1} {i=(NR-1)%(n+2)} i>=2' "$1"; }

echo "== help"
for c in ts sample rmsd score info; do
    if "$BIN" $c --help >help.txt 2>&1 && grep -q "usage: oa_reactdiff $c" help.txt; then
        pass "$c --help ($(wc -l <help.txt) lines)"
    else
        bad "$c --help"
    fi
done
"$BIN" --help >help.txt && grep -q "ts " help.txt && pass "--help" || bad "--help"
"$BIN" >/dev/null 2>&1
[ $? -eq 2 ] && pass "no command: exit 2" || bad "no command: exit status"

echo "== ts"
# the README's example reaction, with the bundled diffusion model
if "$BIN" ts "$ROOT/examples/vinyl_alcohol_react.xyz" "$ROOT/examples/vinyl_alcohol_prod.xyz" -n 2 $Q -o example.xyz 2>err.txt &&
    [ "$(grep -c '^Properties=' example.xyz)" -eq 2 ]; then
    pass "example reaction: 2 diffusion candidates for vinyl alcohol -> acetaldehyde"
else
    bad "README example: $(errors_only err.txt)"
fi
if "$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -n 3 $Q -o ts.xyz 2>err.txt; then
    nframes=$(grep -c '^Properties=' ts.xyz)
    [ "$nframes" -eq 3 ] && pass "ts -n 3 wrote 3 frames" || bad "ts -n 3 wrote $nframes frames"
else
    bad "ts failed: $(cat err.txt)"
fi
# the comment lines are extended XYZ: Properties first, then key=value pairs (strings quoted)
if $PYTHON - ts.xyz "$EX/rxn14_react.xyz" <<'EOF'; then pass "extended XYZ metadata parses, atoms in the reactant's order"; else bad "extended XYZ metadata"; fi
import re, sys
text = open(sys.argv[1]).read().splitlines()
react = [l.split()[0] for l in open(sys.argv[2]).read().splitlines()[2:] if l.strip()]
pair = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)')
i = 0
frames = 0
while i < len(text):
    n = int(text[i]); comment = text[i + 1]; pos = 0; kv = {}
    while pos < len(comment):
        m = pair.match(comment, pos)
        if not m:
            sys.exit("unparsable comment at %r" % comment[pos:])
        kv[m.group(1)] = m.group(2); pos = m.end()
    assert kv["Properties"] == "species:S:1:pos:R:3", kv
    for key in ("sample", "n_samples", "seed", "steps", "resamplings", "jump", "weights", "weights_crc32", "trained"):
        assert key in kv, key
    assert int(kv["sample"]) == frames and kv["steps"] == "12" and kv["resamplings"] == "2", kv
    atoms = [l.split()[0] for l in text[i + 2:i + 2 + n]]
    assert atoms == react, "atom order differs from the reactant's"
    for l in text[i + 2:i + 2 + n]:
        [float(v) for v in l.split()[1:4]]
    i += 2 + n; frames += 1
print("  frames:", frames)
EOF
"$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -n 3 $Q -o again.xyz 2>/dev/null
cmp -s ts.xyz again.xyz && pass "same seed, same output (bytewise)" || bad "same seed gives a different output"
"$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -n 3 $Q --seed 7 -o other.xyz 2>/dev/null
cmp -s <(coords ts.xyz) <(coords other.xyz) && bad "another seed gives the same output" || pass "another seed, other candidates"

echo "== ts: atom order of the inputs does not matter"
$XT "$EX/rxn14_prod.xyz" p_perm.xyz --permute --seed 11 >/dev/null
"$BIN" ts "$EX/rxn14_react.xyz" p_perm.xyz -n 2 $Q -o tsp.xyz 2>/dev/null
"$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -n 2 $Q -o ts2.xyz 2>/dev/null
cmp -s <(coords ts2.xyz) <(coords tsp.xyz) && pass "product in another atom order: identical TS" || bad "product atom order changes the TS"
$XT "$EX/rxn14_react.xyz" r_perm.xyz --permute --seed 5 --print-perm >perm.txt
"$BIN" ts r_perm.xyz "$EX/rxn14_prod.xyz" -n 2 $Q -o tsr.xyz 2>/dev/null
if $PYTHON - ts2.xyz tsr.xyz perm.txt <<'EOF'; then pass "reactant in another atom order: the same TS in that order"; else bad "reactant atom order changes the TS"; fi
import sys
def frames(p):
    L = open(p).read().splitlines(); out = []; i = 0
    while i < len(L):
        n = int(L[i]); out.append(L[i + 2:i + 2 + n]); i += 2 + n
    return out
a, b = frames(sys.argv[1]), frames(sys.argv[2])
perm = list(map(int, open(sys.argv[3]).read().split()))
sys.exit(0 if len(a) == len(b) and all(b[f][k] == a[f][perm[k]] for f in range(len(a)) for k in range(len(perm))) else 1)
EOF

echo "== ts: errors (one line, non-zero exit, no output file)"
head -8 "$EX/rxn14_prod.xyz" | sed '1s/.*/6/' >short.xyz
expect_failure "composition mismatch" 3 "composition mismatch" out.xyz -- "$BIN" ts "$EX/rxn14_react.xyz" short.xyz $Q -o out.xyz
sed '3s/^ *[A-Z][a-z]*/Xq/' "$EX/rxn14_react.xyz" >unknown.xyz
expect_failure "unknown element" 3 "unknown element 'Xq'" out.xyz -- "$BIN" ts unknown.xyz "$EX/rxn14_prod.xyz" $Q -o out.xyz
sed '3s/^ *[A-Z][a-z]*/Cl/' "$EX/rxn14_react.xyz" >chlorine.xyz
sed '3s/^ *[A-Z][a-z]*/Cl/' "$EX/rxn14_prod.xyz" >chlorine_p.xyz
expect_failure "element not in the model" 3 "Cl, which the model does not know" out.xyz -- "$BIN" ts chlorine.xyz chlorine_p.xyz $Q -o out.xyz
expect_failure "missing file" 1 "missing.xyz: cannot open" out.xyz -- "$BIN" ts missing.xyz "$EX/rxn14_prod.xyz" $Q -o out.xyz
expect_failure "unknown option" 2 "unknown option '--bogus'" out.xyz -- "$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" --bogus -o out.xyz
expect_failure "bad count" 2 "not an integer" out.xyz -- "$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -n 0 -o out.xyz
expect_failure "missing weights" 1 "nothere.bin: cannot open" out.xyz -- "$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" --weights nothere.bin -o out.xyz
expect_failure "unwritable output" 1 "cannot write" nodir/out.xyz -- "$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" $Q -o nodir/out.xyz

echo "== rmsd"
worst=0
for s in 1 2 3 4 5 6; do
    $XT "$EX/rxn14_react.xyz" copy.xyz --rotate --translate --permute --mirror --seed $s >/dev/null
    for m in auto hungarian; do
        r=$("$BIN" rmsd "$EX/rxn14_react.xyz" copy.xyz --method $m)
        worst=$($PYTHON -c "print(max($worst, $r))")
    done
    $XT "$EX/rxn14_prod.xyz" copy.xyz --rotate --translate --permute --mirror --seed $s >/dev/null
    r=$("$BIN" rmsd "$EX/rxn14_prod.xyz" copy.xyz)
    worst=$($PYTHON -c "print(max($worst, $r))")
done
$PYTHON -c "import sys; sys.exit(0 if $worst < 1e-6 else 1)" &&
    pass "rotated, translated, permuted, mirrored copies: max RMSD $worst (< 1e-6)" ||
    bad "rotated/permuted/mirrored copy: RMSD $worst"
$XT "$EX/rxn14_react.xyz" copy.xyz --rotate --translate --permute --mirror --seed 1 >/dev/null
r=$("$BIN" rmsd "$EX/rxn14_react.xyz" copy.xyz --no-reflection)
$PYTHON -c "import sys; sys.exit(0 if $r > 0.1 else 1)" && pass "--no-reflection: the mirror image of the chiral reactant is $r A away" ||
    bad "--no-reflection: $r"
$XT "$EX/rxn14_react.xyz" copy.xyz --rotate --translate --seed 3 >/dev/null
r=$("$BIN" rmsd "$EX/rxn14_react.xyz" copy.xyz --same-order --no-reflection)
$PYTHON -c "import sys; sys.exit(0 if $r < 1e-6 else 1)" && pass "--same-order of a rotated copy: $r" || bad "--same-order: $r"
# the Hungarian search finds the global optimum that exhaustive enumeration finds
maxdiff=0
for s in $(seq 1 12); do
    $XT "$EX/rxn14_react.xyz" noisy.xyz --rotate --translate --permute --noise 0.3 --seed $s >/dev/null
    a=$("$BIN" rmsd "$EX/rxn14_react.xyz" noisy.xyz --method hungarian)
    b=$("$BIN" rmsd "$EX/rxn14_react.xyz" noisy.xyz --method exhaustive)
    maxdiff=$($PYTHON -c "print(max($maxdiff, abs($a - $b)))")
done
$PYTHON -c "import sys; sys.exit(0 if $maxdiff < 1e-8 else 1)" &&
    pass "Hungarian = exhaustive (241,920 permutations) on 12 noisy copies (0.3 A): max difference $maxdiff" ||
    bad "Hungarian misses the optimum by $maxdiff"
nl=$("$BIN" rmsd ts.xyz "$EX/rxn14_react.xyz" | wc -l)
[ "$nl" -eq 3 ] && pass "rmsd of a 3-frame file: one line per frame" || bad "rmsd of a 3-frame file printed $nl lines"
expect_failure "rmsd composition mismatch" 3 "composition mismatch" none -- "$BIN" rmsd "$EX/rxn14_react.xyz" chlorine.xyz
expect_failure "rmsd different sizes" 3 "atoms" none -- "$BIN" rmsd "$EX/rxn14_react.xyz" short.xyz

echo "== score and ts --confidence"
"$BIN" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -n 4 $Q --confidence "$CONF" -o ranked.xyz 2>/dev/null
if $PYTHON - ranked.xyz <<'EOF'; then pass "ts --confidence: frames carry rank and confidence, best first"; else bad "ts --confidence ranking"; fi
import re, sys
c = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("Properties=")]
s = [float(re.search(r" confidence=(\S+)", l).group(1)) for l in c]
r = [int(re.search(r" rank=(\d+)", l).group(1)) for l in c]
print("  scores:", s)
sys.exit(0 if len(s) == 4 and r == [1, 2, 3, 4] and s == sorted(s, reverse=True) else 1)
EOF
awk 'NR==1{n=$1} NR<=n+2' ranked.xyz >best.xyz
want=$(sed -n 2p ranked.xyz | grep -o ' confidence=[^ ]*' | cut -d= -f2)
got=$("$BIN" score "$EX/rxn14_react.xyz" best.xyz "$EX/rxn14_prod.xyz" --confidence "$CONF" 2>/dev/null)
$PYTHON -c "import sys; d=abs($got-$want)/abs($want); sys.exit(0 if d < 1e-6 else 1)" &&
    pass "score of the best frame = its ts confidence ($got vs $want)" || bad "score $got vs ts confidence $want"
# invariance, on a chemically sensible stand-in for the TS (the reactant itself; the
# untrained model's candidates are hundreds of Angstrom apart). Float64 build: exact to
# rounding (1e-9). Float32 build: 1e-3, because the product's CO has degenerate two-atom
# node frames that amplify float32 rounding (upstream's model, see README audit notes).
$XT "$EX/rxn14_react.xyz" ts_moved.xyz --rotate --translate --permute --seed 9 >/dev/null
$XT "$EX/rxn14_prod.xyz" prod_moved.xyz --rotate --translate --permute --mirror --seed 10 >/dev/null
for b in "$BIN:1e-3" "${BIN}64:1e-9"; do
    exe=${b%%:*} tol=${b##*:}
    [ -x "$exe" ] || continue
    s1=$("$exe" score "$EX/rxn14_react.xyz" "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" --confidence "$CONF" 2>/dev/null)
    s2=$("$exe" score "$EX/rxn14_react.xyz" ts_moved.xyz prod_moved.xyz --confidence "$CONF" 2>/dev/null)
    $PYTHON -c "import sys; d=abs($s2-$s1)/abs($s1); print('  %s: relative change %.1e' % ('$(basename "$exe")', d)); sys.exit(0 if d < $tol else 1)" &&
        pass "score invariant to moving, mirroring and permuting TS and P ($(basename "$exe"), tol $tol)" ||
        bad "score changes with orientation/order ($(basename "$exe")): $s2 vs $s1"
done
expect_failure "score without --confidence" 2 "needs --confidence" none -- "$BIN" score "$EX/rxn14_react.xyz" best.xyz "$EX/rxn14_prod.xyz"
expect_failure "score with a denoiser" 4 "" none -- "$BIN" score "$EX/rxn14_react.xyz" best.xyz "$EX/rxn14_prod.xyz" --confidence "$ROOT/weights_diffusion.bin"

echo "== sample"
if "$BIN" sample --atoms C2H4O -n 2 --steps 12 -o smp 2>err.txt; then
    n=$(ls smp_*_react.xyz smp_*_ts.xyz smp_*_prod.xyz 2>/dev/null | wc -l)
    atoms=$(awk 'NR>2{print $1}' smp_1_ts.xyz | sort | tr -d '\n')
    [ "$n" -eq 6 ] && [ "$atoms" = "CCHHHHO" ] && pass "sample -n 2: 6 files (react/ts/prod per sample), atoms $atoms" ||
        bad "sample wrote $n files, atoms $atoms"
else
    bad "sample failed: $(cat err.txt)"
fi
expect_failure "sample unknown element" 2 "unknown element" smp_0_react.xyz -- "$BIN" sample --atoms C2Qx -o smp

echo "== info"
if "$BIN" info "$ROOT/weights_diffusion.bin" >info.txt && grep -q "^kind *denoiser" info.txt && grep -q "^parameters" info.txt &&
    grep -q "verified" info.txt; then
    pass "info: $(grep '^parameters' info.txt | tr -s ' ')"
else
    bad "info"
fi
cp "$ROOT/weights_diffusion.bin" corrupt.bin
printf 'X' | dd of=corrupt.bin bs=1 seek=5000 conv=notrunc 2>/dev/null
expect_failure "info on a corrupted file" 4 "checksum" none -- "$BIN" info corrupt.bin

echo "== batch: ts --list, shards, interruption and resume"
mkdir -p rx
cp "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" rx/
for i in 1 2 3 4 5; do
    $XT rx/rxn14_react.xyz rx/r$i.xyz --rotate --translate --seed $i >/dev/null
    $XT rx/rxn14_prod.xyz rx/p$i.xyz --permute --seed $i >/dev/null
done
printf '# a list\nr1.xyz p1.xyz one\nr2.xyz p2.xyz two  # comment\n\nr3.xyz p3.xyz three\nr4.xyz p4.xyz\n' >rx/list.txt
"$BIN" ts --list rx/list.txt --outdir sh $Q --shard 0/2 2>/dev/null
"$BIN" ts --list rx/list.txt --outdir sh $Q --shard 1/2 2>/dev/null
[ "$(ls sh | tr '\n' ' ')" = "one.xyz r4.xyz three.xyz two.xyz " ] && pass "shards 0/2 and 1/2 cover the list: $(ls sh | tr '\n' ' ')" ||
    bad "shards wrote: $(ls sh | tr '\n' ' ')"
[ "$(ls sh | wc -l)" -eq 4 ] && "$BIN" ts --list rx/list.txt --outdir whole $Q 2>/dev/null &&
    diff -r sh whole >/dev/null && pass "sharded run = one whole run (bytewise)" || bad "sharded and whole runs differ"
seed=$(sed -n 2p whole/two.xyz | grep -o ' seed=[0-9]*' | cut -d= -f2)
"$BIN" ts rx/r2.xyz rx/p2.xyz $Q --seed "$seed" -o single.xyz 2>/dev/null
cmp -s <(coords single.xyz) <(coords whole/two.xyz) && pass "a list entry is reproduced by ts with the recorded seed" ||
    bad "list entry not reproducible from its seed"
# interrupt a slower batch after its first result, then rerun it
SLOW="--steps 30 --resamplings 2 --jump 2 -n 3"
"$BIN" ts --list rx/list.txt --outdir intr $SLOW 2>intr1.txt &
pid=$!
for _ in $(seq 1 6000); do [ -e intr/one.xyz ] && break; sleep 0.01; done
kill -TERM $pid 2>/dev/null
wait $pid
st=$?
first=$(md5sum <intr/one.xyz 2>/dev/null)
left=$(ls intr | grep -v '\.xyz$' | wc -l)
nout=$(ls intr/*.xyz 2>/dev/null | wc -l)
if [ -n "$first" ] && [ "$nout" -lt 4 ] && [ "$left" -eq 0 ]; then
    pass "SIGTERM during the batch: exit $st, $nout of 4 results, no temporary files"
else
    bad "interruption: exit $st, $nout results, $left other files"
fi
"$BIN" ts --list rx/list.txt --outdir intr $SLOW 2>intr2.txt
skipped=$(grep -c "done already" intr2.txt)
computed=$(grep -c ": wrote " intr2.txt)
if [ "$(ls intr/*.xyz | wc -l)" -eq 4 ] && [ "$skipped" -eq "$nout" ] && [ $((skipped + computed)) -eq 4 ] &&
    [ "$(md5sum <intr/one.xyz)" = "$first" ]; then
    pass "rerun: $skipped finished reactions skipped (files untouched), $computed computed"
else
    bad "rerun: skipped $skipped, computed $computed"
fi
"$BIN" ts --list rx/list.txt --outdir whole4 $SLOW 2>/dev/null
diff -r intr whole4 >/dev/null && pass "interrupted + resumed = uninterrupted run (bytewise)" || bad "resumed batch differs from an uninterrupted run"
printf 'r1.xyz p1.xyz one\nr1.xyz\n' >rx/badlist.txt
expect_failure "malformed list" 3 "badlist.txt:2: expected" none -- "$BIN" ts --list rx/badlist.txt --outdir bl $Q
[ ! -e bl ] && pass "malformed list: nothing computed, no output directory" || bad "malformed list created output"
printf 'r1.xyz p1.xyz one\nr2.xyz p2.xyz one\n' >rx/duplist.txt
expect_failure "duplicate names" 3 "already used on line 1" none -- "$BIN" ts --list rx/duplist.txt --outdir bl $Q
printf 'r1.xyz p1.xyz one\nr2.xyz short.xyz two\nr3.xyz p3.xyz three\n' >rx/faillist.txt
cp short.xyz rx/
"$BIN" ts --list rx/faillist.txt --outdir fl $Q 2>fl.txt
st=$?
[ "$st" -eq 7 ] && [ -e fl/one.xyz ] && [ -e fl/three.xyz ] && [ ! -e fl/two.xyz ] && grep -q "two (.*faillist.txt:2): .*composition mismatch" fl.txt &&
    pass "a failing reaction is reported, the others finish, exit 7" || bad "batch with a failing reaction: exit $st"

echo "== make install"
if make -C "$ROOT" --no-print-directory install PREFIX="$TMP/prefix" >install.txt 2>&1 &&
    env -u OA_REACTDIFF_WEIGHTS "$TMP/prefix/bin/oa_reactdiff" ts "$EX/rxn14_react.xyz" "$EX/rxn14_prod.xyz" -o inst.xyz 2>/dev/null &&
    grep -q "share/oa_reactdiff/weights.bin" inst.xyz && grep -q "method=bridge" inst.xyz &&
    env -u OA_REACTDIFF_WEIGHTS "$TMP/prefix/bin/oa_reactdiff" sample --atoms CH4O --steps 4 -o inst_smp 2>/dev/null &&
    test -s inst_smp_0_ts.xyz; then
    pass "make install PREFIX=...: the installed binary finds weights.bin (ts, bridge) and weights_diffusion.bin (sample) in share/oa_reactdiff"
else
    bad "make install: $(tail -3 install.txt)"
fi

echo
if [ $fails -ne 0 ]; then
    echo "test_cli: $fails FAILED"
    exit 1
fi
echo "test_cli: all passed"
