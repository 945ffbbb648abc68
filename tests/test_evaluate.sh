#!/usr/bin/env bash
# test_evaluate.sh - tools/evaluate.py on two test reactions with the bundled (untrained)
# weights and quick sampler settings: outputs, counts, RMSDs equal to `oa_reactdiff rmsd`
# called directly, the reference-as-candidate self-check (RMSD 0), resuming, refusing a rerun
# with other settings, the R-P midpoint baseline, a reaction whose ts run fails, missing inputs, --confidence ranking,
# and (only where xtb is installed; else a SKIP line) the GFN2-xTB energies.
#
#   bash tests/test_evaluate.sh [BINARY] [CONFIDENCE_WEIGHTS]
#
# Every check prints what it measured; the script exits 1 if any check failed.
set -u
. "$(dirname "$0")/cli_env.sh" evaluate "$@"
EV="$PYTHON $ROOT/tools/evaluate.py"
DATA=$ROOT/data
Q="--steps 10 --resamplings 1 -n 2 --threads 2"
COMMON="--data $DATA --split test --limit 2 --binary $BIN"

# json FILE EXPR: a value of a JSON file (EXPR in Python, the document is d)
json() { $PYTHON -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"; }

echo "== two test reactions, untrained weights, $Q"
if $EV $COMMON --weights "$ROOT/weights_diffusion.bin" $Q --out ev >ev.out 2>ev.err; then
    pass "evaluate exit 0"
else
    bad "evaluate exit $?: $(tail -3 ev.err)"
fi
for f in list.txt config.json ts.log per_reaction.tsv summary.json summary.md rmsd.png; do
    [ -s "ev/$f" ] && pass "ev/$f written" || bad "ev/$f missing or empty"
done
n_list=$(grep -vc '^#' ev/list.txt)
n_ts=$(ls ev/ts/*.xyz 2>/dev/null | wc -l)
n_rows=$(($(wc -l <ev/per_reaction.tsv) - 1))
[ "$n_list" -eq 2 ] && [ "$n_ts" -eq 2 ] && [ "$n_rows" -eq 2 ] &&
    pass "2 reactions in the list, 2 candidate files, 2 rows" ||
    bad "list $n_list, candidate files $n_ts, rows $n_rows (expected 2 each)"
counts=$(json ev/summary.json '"%(reactions)d %(evaluated)d %(failed)d %(candidates)d" % d["counts"]')
[ "$counts" = "2 2 0 4" ] && pass "summary counts: reactions evaluated failed candidates = $counts" ||
    bad "summary counts '$counts', expected '2 2 0 4'"
grep -q '^| | first candidate | best of 2 (oracle) |$' ev/summary.md && cmp -s ev/summary.md ev.out &&
    pass "summary.md holds the table and is what was printed" || bad "summary.md"
if $PYTHON - ev/rmsd.png <<'EOF'; then pass "rmsd.png is a 900 x 520 PNG"; else bad "rmsd.png"; fi
import struct, sys, zlib
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR"
assert struct.unpack(">II", b[16:24]) == (900, 520)
n = struct.unpack(">I", b[33:37])[0]
assert b[37:41] == b"IDAT" and len(zlib.decompress(b[41:41 + n])) == 520 * (1 + 900 * 3)
EOF

echo "== RMSDs equal to oa_reactdiff rmsd called directly"
ok=0
while IFS=$'\t' read -r id formula natoms status ncand first best bestk all rest; do
    [ "$id" = id ] && continue
    direct=$("$BIN" rmsd "ev/ts/$id.xyz" "$DATA/reactions/$id/ts.xyz" | paste -sd, -)
    dmin=$(tr , '\n' <<<"$direct" | sort -g | head -1)
    dfirst=${direct%%,*}
    if [ "$status" = ok ] && [ "$all" = "$direct" ] && [ "$first" = "$dfirst" ] && [ "$best" = "$dmin" ]; then
        ok=$((ok + 1))
        pass "$id: first $first, best $best (frame $bestk), all $all"
    else
        bad "$id: tsv status $status first $first best $best all $all; rmsd directly: $direct"
    fi
done <ev/per_reaction.tsv
[ "$ok" -eq 2 ] || bad "$ok of 2 rows agree"
if $PYTHON - ev <<'EOF'; then pass "summary medians, means and fractions recomputed from the TSV"; else bad "summary vs TSV"; fi
import json, statistics, sys
d = json.load(open(sys.argv[1] + "/summary.json"))
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1] + "/per_reaction.tsv")]
h = rows[0]
for which in ("first", "best"):
    v = [float(dict(zip(h, r))["rmsd_" + which]) for r in rows[1:]]
    s = d["rmsd"][which]
    assert s["n"] == 2 and abs(s["median"] - statistics.median(v)) < 1e-12 and abs(s["mean"] - sum(v) / 2) < 1e-12, s
    for t in ("0.1", "0.2", "0.5"):
        assert s["fraction_below"][t] == sum(x < float(t) for x in v) / 2, s
EOF

echo "== rerun: resumes, same results"
if $EV $COMMON --weights "$ROOT/weights_diffusion.bin" $Q --out ev >ev2.out 2>ev2.err &&
    grep -q "0 computed, 2 already done" ev2.err && cmp -s ev2.out ev.out; then
    pass "rerun computed nothing and printed the same summary"
else
    bad "rerun: $(grep -v UNTRAINED ev2.err | tail -2)"
fi
cp ev/per_reaction.tsv keep.tsv
expect_failure "rerun with another -n refused" 2 "other settings (n 2 vs 3 now)" ev/none -- \
    $EV $COMMON --weights "$ROOT/weights_diffusion.bin" $Q -n 3 --out ev
cmp -s keep.tsv ev/per_reaction.tsv && pass "refused rerun left the results alone" || bad "refused rerun changed results"

echo "== self-check: the reference TS as its own candidates"
if $EV $COMMON -n 3 --reference-as-candidate --out self >self.out 2>self.err; then
    pass "reference-as-candidate exit 0"
else
    bad "reference-as-candidate exit $?: $(tail -2 self.err)"
fi
if $PYTHON - self <<'EOF'; then pass "every RMSD of the reference (and its moved, permuted, mirrored copies) is 0"; else bad "self-check RMSDs"; fi
import json, sys
d = json.load(open(sys.argv[1] + "/summary.json"))
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1] + "/per_reaction.tsv")]
h = rows[0]
vals = [float(x) for r in rows[1:] for x in dict(zip(h, r))["rmsd_all"].split(",")]
assert len(vals) == 6 and max(vals) < 1e-6, vals
assert dict(zip(h, rows[1]))["rmsd_first"] == "0.00000000"
assert d["counts"]["evaluated"] == 2 and d["rmsd"]["best"]["fraction_below"]["0.1"] == 1.0, d
print("  max RMSD %.1e over %d frames" % (max(vals), len(vals)))
EOF

echo "== the midpoint baseline: with P a rotated, moved copy of R, the midpoint is R"
mkdir -p mid/reactions
head -1 "$DATA/index.tsv" >mid/index.tsv
grep "$(printf '\ttest\t')" "$DATA/index.tsv" | head -1 >>mid/index.tsv
mid_id=$(sed -n 2p mid/index.tsv | cut -f1)
cp -r "$DATA/reactions/$mid_id" mid/reactions/
# P := R turned 90 degrees about z and shifted: superimposed on R it is R again
awk 'NR > 2 { printf "%s %.10f %.10f %.10f\n", $1, -$3 + 1.5, $2 - 2.0, $4 + 0.7; next } { print }' \
    "$DATA/reactions/$mid_id/react.xyz" >mid/reactions/$mid_id/prod.xyz
if $EV --data mid --split test --binary "$BIN" --reference-as-candidate -n 2 --out evmid >mid.out 2>mid.err; then
    got=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "rmsd_midpoint") c = i } NR == 2 { print $c }' evmid/per_reaction.tsv)
    want=$("$BIN" rmsd "$DATA/reactions/$mid_id/react.xyz" "$DATA/reactions/$mid_id/ts.xyz")
    if $PYTHON -c "import sys; g, w = float(sys.argv[1]), float(sys.argv[2]); print('  midpoint %.8f, R to TS %.8f, |diff| %.1e' % (g, w, abs(g - w))); sys.exit(abs(g - w) > 1e-7)" "$got" "$want" &&
        grep -q "^Without a model: the midpoint of R and P" evmid/summary.md; then
        pass "midpoint baseline equals oa_reactdiff rmsd of R itself (tolerance 1e-7), stated in summary.md"
    else
        bad "midpoint baseline $got, R to TS $want"
    fi
else
    bad "midpoint run: exit $?: $(tail -2 mid.err)"
fi

echo "== a reaction whose ts run fails"
mkdir -p bad/reactions
head -1 "$DATA/index.tsv" >bad/index.tsv
grep "$(printf '\ttest\t')" "$DATA/index.tsv" | head -2 >>bad/index.tsv
good_id=$(sed -n 2p bad/index.tsv | cut -f1)
bad_id=$(sed -n 3p bad/index.tsv | cut -f1)
cp -r "$DATA/reactions/$good_id" "$DATA/reactions/$bad_id" bad/reactions/
# first atom of the product becomes F: composition mismatch, the batch reports it
awk 'NR == 3 { $1 = "F" } { print }' "$DATA/reactions/$bad_id/prod.xyz" >bad/reactions/$bad_id/prod.xyz
$EV --data bad --split test --binary "$BIN" --weights "$ROOT/weights_diffusion.bin" $Q --out evbad >bad.out 2>bad.err
st=$?
counts=$(json evbad/summary.json '"%(reactions)d %(evaluated)d %(failed)d" % d["counts"]' 2>/dev/null)
failed=$(json evbad/summary.json '",".join(f["id"] + ":" + f["status"] for f in d["failed"])' 2>/dev/null)
row=$(grep "^$bad_id" evbad/per_reaction.tsv | cut -f4)
if [ "$st" -eq 3 ] && [ "$counts" = "2 1 1" ] && [ "$failed" = "$bad_id:ts_failed" ] && [ "$row" = ts_failed ] &&
    grep -q "^evaluate: $bad_id: ts_failed: .*composition mismatch" bad.err &&
    grep -q "1 reaction(s) failed" evbad/summary.md; then
    pass "exit 3, counted (reactions evaluated failed = $counts), listed on stderr, in summary.md and the TSV"
else
    bad "failing reaction: exit $st, counts '$counts', failed '$failed', row '$row': $(tail -2 bad.err)"
fi

echo "== missing inputs: one line, exit 2"
expect_failure "missing binary" 2 "no such executable" none/summary.json -- \
    $EV $COMMON --binary "$TMP/nope" --weights "$ROOT/weights_diffusion.bin" --out none
expect_failure "missing weights" 2 "weights file not found" none/summary.json -- \
    $EV $COMMON --weights "$TMP/nope.bin" --out none
expect_failure "no weights given" 2 "--weights is required" none/summary.json -- \
    $EV $COMMON --out none
expect_failure "missing data" 2 "index.tsv: no such file" none/summary.json -- \
    $EV --data "$TMP/nodata" --weights "$ROOT/weights_diffusion.bin" --binary "$BIN" --out none
expect_failure "unknown split" 2 "no reactions in split 'tset'" none/summary.json -- \
    $EV --data "$DATA" --split tset --weights "$ROOT/weights_diffusion.bin" --binary "$BIN" --out none
expect_failure "bad option" 2 "unrecognized arguments: --sed" none/summary.json -- \
    $EV $COMMON --weights "$ROOT/weights_diffusion.bin" --sed 3 --out none
mkdir -p nots/reactions && head -2 bad/index.tsv >nots/index.tsv && cp -r "bad/reactions/$good_id" nots/reactions/ &&
    rm "nots/reactions/$good_id/ts.xyz"
expect_failure "missing reference TS" 2 "$good_id/ts.xyz: missing" none/summary.json -- \
    $EV --data nots --split test --weights "$ROOT/weights_diffusion.bin" --binary "$BIN" --out none

echo "== --confidence: frame 0 is the top-ranked candidate"
if [ -f "$CONF" ]; then
    if $EV $COMMON --weights "$ROOT/weights_diffusion.bin" $Q --confidence "$CONF" --out evconf >conf.out 2>conf.err &&
        [ "$(grep -c ' rank=1 ' evconf/ts/*.xyz | awk -F: '{s += $2} END {print s}')" -eq 2 ] &&
        sed -n 2p "evconf/ts/$good_id.xyz" | grep -q ' rank=1 ' &&
        grep -q "top-ranked by the confidence model" evconf/summary.md; then
        pass "ranked candidates, frame 0 has rank=1"
    else
        bad "--confidence: $(tail -2 conf.err)"
    fi
else
    bad "--confidence: $CONF not found (tests/run_tests.sh converts it)"
fi

echo "== --xtb: a failing xtb is reported per candidate, not hidden (a stand-in xtb that fails)"
printf '#!/bin/sh\necho "fake xtb: failing on purpose" >&2\nexit 1\n' >fakextb && chmod +x fakextb
if XTB=$TMP/fakextb $EV $COMMON -n 2 --reference-as-candidate --xtb --out selffail >sf.out 2>sf.err &&
    [ "$(json selffail/summary.json '"%(n_ok)d %(n_failed)d" % d["energy"]["best"]')" = "0 2" ] &&
    [ "$(cut -f16 selffail/per_reaction.tsv | grep -c '^xtb failed')" -eq 2 ] &&
    grep -q "energy failures (garbage geometry or xtb failed) | 2 of 2 | 2 of 2 |" selffail/summary.md &&
    grep -q "^evaluate: .*2 of 2 first candidates" sf.err; then
    pass "xtb failures: counted in summary.json and summary.md, stated in the TSV and on stderr"
else
    bad "failing xtb: $(tail -2 sf.err)"
fi
expect_failure "--xtb without xtb" 2 "is not installed" none/summary.json -- \
    env XTB="$TMP/no-xtb" $EV $COMMON -n 2 --reference-as-candidate --xtb --out none

echo "== GFN2-xTB energies (--xtb)"
if command -v xtb >/dev/null 2>&1; then
    if $EV $COMMON -n 3 --reference-as-candidate --xtb --out self >selfx.out 2>selfx.err &&
        $PYTHON - self <<'EOF'; then
import json, sys
d = json.load(open(sys.argv[1] + "/summary.json"))
for which in ("first", "best"):
    e = d["energy"][which]
    assert e["n_ok"] == 2 and e["n_failed"] == 0 and e["max_abs_kcal"] < 0.01, e
print("  largest |E - e_ts| of the reference copies: %.2e kcal/mol" % d["energy"]["best"]["max_abs_kcal"])
EOF
        pass "self-check: xtb reproduces e_ts of the reference TSs"
    else
        bad "self-check with --xtb: $(tail -2 selfx.err)"
    fi
    # the untrained model's candidates: every row has an energy or a stated failure
    if $EV $COMMON --weights "$ROOT/weights_diffusion.bin" $Q --xtb --out ev >evx.out 2>evx.err &&
        $PYTHON - ev <<'EOF'; then
import json, sys
d = json.load(open(sys.argv[1] + "/summary.json"))
rows = [dict(zip(*[l.rstrip("\n").split("\t") for l in (open(sys.argv[1] + "/per_reaction.tsv").readline(), r)]))
        for r in open(sys.argv[1] + "/per_reaction.tsv").readlines()[1:]]
for which in ("first", "best"):
    e = d["energy"][which]
    assert e["n_ok"] + e["n_failed"] == 2 and len(e["failures"]) == e["n_failed"], e
    for r in rows:
        st = r["energy_" + which]
        assert (st == "ok") == (r["e_" + which] != "NA"), r
        assert st == "ok" or st.startswith("garbage") or st.startswith("xtb failed"), st
    print("  %s: %d with an energy, %d failures (%s)" % (which, e["n_ok"], e["n_failed"],
          "; ".join(f["why"] for f in e["failures"])[:150]))
EOF
        pass "model candidates: each has an xtb energy or a reported failure"
    else
        bad "--xtb on model candidates: $(tail -2 evx.err)"
    fi
else
    echo "  SKIP  --xtb checks (xtb not installed)"
fi

echo "test_evaluate: $fails failure(s)"
[ "$fails" -eq 0 ]
