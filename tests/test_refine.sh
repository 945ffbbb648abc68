#!/usr/bin/env bash
# test_refine.sh - tools/refine.py (candidates to verified GFN2-xTB transition states) and
# tools/evaluate.py --refine.
#   Without xtb: bad inputs, a missing xtb, a failing xtb and an unwritable output are
#   refused with one line, the right exit status and no output file.
#   With xtb (else a SKIP line), on the 5-atom test reaction rdb25b7688ec7 (CH2N2) of data/:
#   - the reference TS displaced at random (0.1 A per coordinate, fixed seed) is refined back
#     to within 0.05 A RMSD of the reference TS (oa_reactdiff rmsd), with exactly one
#     imaginary mode below -50 cm^-1 and none other below -20 cm^-1, and barriers and
#     imaginary frequency equal to the dataset's (0.05 kcal/mol, 5 cm^-1);
#   - the reactant itself, checked as it is (--max-iter 0), is reported failed:freq (a
#     minimum has no imaginary mode); a non-stationary geometry is failed:stationary;
#   - evaluate.py --refine on one reaction with the reference as the first candidate: the
#     reference refines to itself (verified, RMSD < 0.01 A) and the table is written.
#
#   bash tests/test_refine.sh [BINARY]
set -u
. "$(dirname "$0")/cli_env.sh" refine "$@"
RF="$PYTHON $ROOT/tools/refine.py"
RX=rdb25b7688ec7
D=$ROOT/data/reactions/$RX
R=$D/react.xyz
P=$D/prod.xyz

# the reference TS displaced at random, then the reactant (same atom order)
$PYTHON - "$ROOT/tools/datagen" "$D" <<'PY' >cands.xyz || exit 1
import random, sys
sys.path.insert(0, sys.argv[1])
import chem
syms, xts, _ = chem.read_xyz(sys.argv[2] + "/ts.xyz")
_, xr, _ = chem.read_xyz(sys.argv[2] + "/react.xyz")
rng = random.Random(1)
moved = [[c + rng.gauss(0, 0.1) for c in p] for p in xts]
sys.stdout.write(chem.xyz_text(syms, moved, "reference TS displaced") + chem.xyz_text(syms, xr, "reactant"))
PY

# no_output DIR: nothing but the inputs this test put there
clean_dir() { [ -z "$(ls -A "$1" 2>/dev/null | grep -v -e '^cands.xyz$' -e '^swapped.xyz$' -e '^ws$')" ]; }

echo "== refused inputs (no xtb needed)"
awk 'NR==3{l=$0; next} NR==4{print; print l; next} {print}' "$R" >swapped.xyz   # atoms 1 and 2 exchanged
mkdir ws
expect_failure "atom order differs" 3 "swapped.xyz: atom 1 is C, $R has N there" ws/out.xyz -- \
    $RF "$R" "$P" swapped.xyz -o ws/out.xyz
expect_failure "missing candidates file" 1 "nofile.xyz: cannot open" ws/out.xyz -- \
    $RF "$R" "$P" nofile.xyz -o ws/out.xyz
printf '5\n\nC 0 0 0\nN 1 0 0\n' >ws/short.xyz
expect_failure "truncated candidates file" 3 "short.xyz: truncated: fewer atom lines than the atom count" ws/out.xyz -- \
    $RF "$R" "$P" ws/short.xyz -o ws/out.xyz
rm ws/short.xyz
expect_failure "R and P with the same bonds" 3 "have the same bonds" ws/out.xyz -- \
    $RF "$R" "$R" cands.xyz -o ws/out.xyz
expect_failure "bad option" 2 "--workers must be at least 1" ws/out.xyz -- \
    $RF "$R" "$P" cands.xyz -o ws/out.xyz --workers 0
expect_failure "xtb missing" 2 "xtb program ('$TMP/no-xtb') is not installed" ws/out.xyz -- \
    env XTB="$TMP/no-xtb" $RF "$R" "$P" cands.xyz -o ws/out.xyz
printf '#!/bin/sh\necho "fake xtb: failing on purpose" >&2\nexit 1\n' >fakextb && chmod +x fakextb
expect_failure "xtb failing" 6 "react.xyz: xtb single point failed" ws/out.xyz -- \
    env XTB="$TMP/fakextb" $RF "$R" "$P" cands.xyz -o ws/out.xyz
expect_failure "unwritable output" 1 "nodir/out.xyz: cannot write" nodir/out.xyz -- \
    env XTB="$TMP/fakextb" $RF "$R" "$P" cands.xyz -o nodir/out.xyz
rm fakextb
clean_dir ws && pass "no output or temporary file left in ws/" || bad "files left in ws/: $(ls -A ws)"

if ! command -v "${XTB:-xtb}" >/dev/null 2>&1; then
    echo "SKIP refinement with GFN2-xTB (xtb not installed)"
    echo "refine: $fails failure(s)"
    [ "$fails" -eq 0 ]
    exit
fi

# field FILE FRAME KEY: a key=value field of a frame's comment line
field() { $PYTHON - "$@" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
i = k = 0
while k < int(sys.argv[2]):
    i += int(lines[i]) + 2
    k += 1
m = re.search(r'(?:^| )%s=("[^"]*"|\S+)' % re.escape(sys.argv[3]), lines[i + 1])
print(m.group(1).strip('"') if m else "MISSING")
PY
}
idx() { awk -F'\t' -v id=$RX -v col="$1" 'NR==1{for(i=1;i<=NF;i++) c[$i]=i; next} $1==id{print $c[col]}' \
    "$ROOT/data/index.tsv"; }

echo "== refinement with GFN2-xTB: reaction $RX ($(idx formula), $(idx n_atoms) atoms)"
before=$("$BIN" rmsd cands.xyz "$D/ts.xyz" | head -1)
if $RF "$R" "$P" cands.xyz -o ws/out.xyz --workers 2 >out.txt 2>err.txt; then
    pass "refine exit 0: $(tail -1 err.txt)"
else
    bad "refine exit $?: $(tail -2 err.txt)"
fi
[ "$(grep -c '^[0-9]*$' ws/out.xyz)" -eq 2 ] && [ "$(wc -l <out.txt)" -eq 2 ] &&
    pass "2 frames in out.xyz, 2 lines on stdout" || bad "frames $(grep -c '^[0-9]*$' ws/out.xyz), stdout $(wc -l <out.txt) lines"
cand=$(field ws/out.xyz 0 candidate); verdict=$(field ws/out.xyz 0 verdict)
after=$("$BIN" rmsd ws/out.xyz "$D/ts.xyz" | head -1)
imag=$(field ws/out.xyz 0 imag_freq); nimag=$(field ws/out.xyz 0 n_imag)
fwd=$(field ws/out.xyz 0 barrier_fwd); rev=$(field ws/out.xyz 0 barrier_rev)
echo "  displaced reference: RMSD $before A before, $after A after; $verdict, imag_freq $imag cm-1, n_imag $nimag," \
     "barriers $fwd / $rev kcal/mol (dataset: $(idx imag_freq_cm1) cm-1, $(idx barrier_fwd_kcal) / $(idx barrier_rev_kcal));" \
     "$(field ws/out.xyz 0 n_grad) gradients, $(field ws/out.xyz 0 n_hess) Hessians"
[ "$cand" = 0 ] && [ "$verdict" = verified ] && pass "frame 0 is candidate 0, verdict=verified" ||
    bad "frame 0: candidate=$cand verdict=$verdict ($(field ws/out.xyz 0 reason))"
awk -v b="$before" -v a="$after" 'BEGIN{exit !(b > 0.1 && a < 0.05)}' &&
    pass "refined to $after A of the reference TS (< 0.05; started $before A away, > 0.1)" ||
    bad "RMSD $before -> $after A (need > 0.1 before, < 0.05 after)"
awk -v f="$imag" -v n="$nimag" -v r="$(idx imag_freq_cm1)" 'BEGIN{exit !(n == 1 && f < -50 && (f-r)^2 < 25)}' &&
    pass "exactly one imaginary mode, $imag cm-1 (dataset $(idx imag_freq_cm1), tolerance 5)" ||
    bad "imaginary modes: n_imag $nimag, lowest $imag cm-1 (dataset $(idx imag_freq_cm1))"
awk -v f="$fwd" -v r="$rev" -v F="$(idx barrier_fwd_kcal)" -v R="$(idx barrier_rev_kcal)" \
    'BEGIN{exit !((f-F)^2 < 0.0025 && (r-R)^2 < 0.0025)}' &&
    pass "barriers $fwd / $rev kcal/mol equal the dataset's within 0.05" || bad "barriers $fwd / $rev kcal/mol"
grep -q "^candidate=0 verdict=verified energy=$(field ws/out.xyz 0 energy) " out.txt &&
    pass "stdout line 1 carries the frame's fields" || bad "stdout: $(head -1 out.txt)"
[ "$(ls -A ws)" = out.xyz ] && pass "ws/ holds out.xyz only (no temporary file)" || bad "ws/: $(ls -A ws)"

echo "== non-saddles checked as they are (--max-iter 0)"
$RF "$R" "$P" cands.xyz -o ws/asis.xyz --max-iter 0 >asis.txt 2>asis.err || bad "refine --max-iter 0 exit $?"
v0=$(field ws/asis.xyz 0 verdict); v1=$(field ws/asis.xyz 1 verdict)
echo "  displaced TS: $v0 ($(field ws/asis.xyz 0 reason)); reactant: $v1 ($(field ws/asis.xyz 1 reason))"
[ "$v1" = failed:freq ] && [ "$(field ws/asis.xyz 1 n_imag)" = 0 ] &&
    pass "the reactant itself: verdict=failed:freq, no imaginary mode" || bad "the reactant: verdict=$v1"
[ "$v0" = failed:stationary ] && pass "the displaced TS as it is: verdict=failed:stationary" || bad "displaced TS: $v0"
grep -q '^candidate=1 verdict=failed:freq ' asis.txt && pass "stdout reports the reactant's stage" ||
    bad "stdout: $(cat asis.txt)"

echo "== evaluate.py --refine (reference as the first candidate, one reaction)"
if $PYTHON "$ROOT/tools/evaluate.py" --data "$ROOT/data" --split test --limit 1 --binary "$BIN" -n 1 \
        --reference-as-candidate --refine --out ev >ev.out 2>ev.err; then
    pass "evaluate --refine exit 0"
else
    bad "evaluate --refine exit $?: $(tail -2 ev.err)"
fi
$PYTHON - ev <<'PY' && pass "refine.tsv, summary.json and summary.md agree: $(cut -f2,3,9,10 ev/refine.tsv | tail -1)" || bad "evaluate --refine outputs"
import json, sys
d = sys.argv[1]
s = json.load(open(d + "/summary.json"))["refine"]
rows = [l.rstrip("\n").split("\t") for l in open(d + "/refine.tsv")]
head, row = rows[0], dict(zip(rows[0], rows[1]))
assert len(rows) == 2 and s["reactions"] == 1, (len(rows), s["reactions"])
assert row["first_verdict"] == "verified" and float(row["first_rmsd"]) < 0.01, row
assert s["first"]["verified"] == 1 and s["first"]["within"] == 1, s["first"]
assert s["first"]["median_n_hess"] == int(row["first_n_hess"]), s["first"]
assert s["midpoint"]["verified"] == (row["midpoint_verdict"] == "verified"), s["midpoint"]
md = open(d + "/summary.md").read()
assert "| search ends at a verified TS | 100.0% (1) |" in md, md
PY

echo "refine: $fails failure(s)"
[ "$fails" -eq 0 ]
