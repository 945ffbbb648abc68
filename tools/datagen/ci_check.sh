#!/usr/bin/env bash
# CI check of the GFN2-xTB reaction generator (tools/datagen).
#  (a) runs the pipeline end to end on formaldehyde and acetaldehyde (pinned
#      reactant geometries, a few edits each) into a temporary directory and
#      checks that reactions are accepted, files and index are written, and a
#      rerun resumes (nothing left to do);
#  (b) checks that the verifier accepts a generated TS and rejects non-saddles
#      (an energy minimum, a second-order saddle, a non-stationary point);
#  (c) checks the P-RFO's Bofill Hessian update on a quadratic surface;
#  (d) checks --simple-first (same tasks, fewer bond changes first within
#      each reactant) and the report's per-edit-class accounting.
# Needs: xtb and obabel (Debian packages xtb, openbabel), python3.  ~1 minute.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
fix="$root/tests/datagen"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OMP_STACKSIZE="${OMP_STACKSIZE:-1G}"
command -v xtb >/dev/null || { echo "ci_check: xtb not installed" >&2; exit 1; }
command -v obabel >/dev/null || { echo "ci_check: obabel not installed" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "ci_check: FAIL: $*" >&2; exit 1; }

# ---- (a) end-to-end run
mkdir -p "$tmp/data/reactants"
cp "$fix"/m*.xyz "$tmp/data/reactants/"
gen=(python3 "$here/datagen.py" --data "$tmp/data" --molecules "$fix/ci_molecules.smi"
     --seed 1 --workers 2 --max-per-reactant 4)
"${gen[@]}" > "$tmp/run1.log" 2>&1 || { cat "$tmp/run1.log"; fail "generator exited non-zero"; }
cat "$tmp/run1.log"
[ -s "$tmp/data/index.tsv" ] || fail "index.tsv missing"
nacc=$(($(wc -l < "$tmp/data/index.tsv") - 1))
natt=$(($(wc -l < "$tmp/data/attempts.tsv") - 1))
echo "ci_check: $nacc accepted of $natt attempted"
[ "$natt" -ge 3 ] || fail "expected at least 3 attempts, got $natt"
[ "$nacc" -ge 2 ] || fail "expected at least 2 accepted reactions, got $nacc"
first=""
while IFS=$'\t' read -r id formula natoms rest; do
  [ "$id" = id ] && continue
  d="$tmp/data/reactions/$id"
  for f in react.xyz ts.xyz prod.xyz info.json; do
    [ -s "$d/$f" ] || fail "$id: $f missing"
  done
  for f in react ts prod; do
    [ "$(head -1 "$d/$f.xyz" | tr -d ' ')" = "$natoms" ] || fail "$id: $f.xyz atom count"
  done
  # same atom order (element column identical)
  a=$(tail -n +3 "$d/react.xyz" | awk '{print $1}'); b=$(tail -n +3 "$d/ts.xyz" | awk '{print $1}')
  c=$(tail -n +3 "$d/prod.xyz" | awk '{print $1}')
  [ "$a" = "$b" ] && [ "$b" = "$c" ] || fail "$id: atom order differs"
  first=${first:-$id}
done < "$tmp/data/index.tsv"
python3 - "$tmp/data/index.tsv" <<'PY' || fail "index values out of range"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
head, rows = rows[0], rows[1:]
for r in rows:
    d = dict(zip(head, r))
    assert float(d["imag_freq_cm1"]) < -50, d
    assert 0 < float(d["barrier_fwd_kcal"]) <= 150, d
    assert float(d["barrier_rev_kcal"]) > 0, d
    assert float(d["e_ts"]) > max(float(d["e_react"]), float(d["e_prod"])), d
    assert d["split"] in ("train", "val", "test"), d
PY
"${gen[@]}" > "$tmp/run2.log" 2>&1 || { cat "$tmp/run2.log"; fail "rerun exited non-zero"; }
grep -q " 0 to run" "$tmp/run2.log" || { cat "$tmp/run2.log"; fail "rerun did not resume"; }
[ $(($(wc -l < "$tmp/data/attempts.tsv") - 1)) -eq "$natt" ] || fail "rerun repeated attempts"

# ---- (b) verifier: accepts a real TS, rejects non-saddles
d="$tmp/data/reactions/$first"
python3 "$here/verify.py" "$d/ts.xyz" "$d/react.xyz" "$d/prod.xyz" || fail "verifier rejected an accepted TS"
expect_reject() {
  local out rc=0
  out=$(python3 "$here/verify.py" "$@") || rc=$?
  echo "$out"
  [ "$rc" -eq 1 ] || fail "verifier did not reject ($*), exit $rc"
}
expect_reject "$d/react.xyz" "$d/react.xyz" "$d/prod.xyz"            # a minimum
expect_reject "$d/prod.xyz" "$d/react.xyz" "$d/prod.xyz"             # the other minimum
expect_reject "$fix/ch4_planar.xyz" "$fix/ch4_planar.xyz" "$fix/ch4_planar.xyz"  # non-stationary
python3 - "$here" "$fix/ch4_planar.xyz" <<'PY' || fail "two-imaginary-mode saddle not rejected"
# D4h methane optimised in-plane is a higher-order saddle: the frequency test must refuse it
import sys
sys.path.insert(0, sys.argv[1])
import chem, tssearch, xtbrun
syms, xyz, _ = chem.read_xyz(sys.argv[2])
r = 1.0
for it in range(30):                       # relax the C-H length in the plane (symmetric)
    e, g = xtbrun.gradient(syms, xyz)
    gr = g[3] * 0.52917721067              # dE/dx of H1 (Eh/Angstrom), along its bond
    r -= 0.2 * gr
    xyz = [[0, 0, 0], [r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0]]
_, h = xtbrun.hessian(syms, xyz)
ok, reason, fs, _ = tssearch.check_frequencies(syms, xyz, h)
print("planar CH4 r=%.3f: %s; lowest %s" % (r, reason, ["%.0f" % f for f in fs[:3]]))
assert not ok and "second imaginary" in reason, reason
PY
python3 - "$here" <<'PY' || fail "Bofill Hessian update"
# the P-RFO's Hessian update: symmetric, satisfies the secant condition H' s = y,
# and leaves an exact Hessian of a quadratic surface unchanged
import random, sys
sys.path.insert(0, sys.argv[1])
import tssearch
rnd = random.Random(3)
n = 9
a = [[0.0] * n for _ in range(n)]
for i in range(n):
    for j in range(i, n):
        a[i][j] = a[j][i] = rnd.uniform(-1, 1) + (3.0 * (i - 1) if i == j else 0.0)  # indefinite
s = [rnd.uniform(-0.1, 0.1) for _ in range(n)]
y = [sum(a[i][j] * s[j] for j in range(n)) for i in range(n)]
h = [[a[i][j] + (0.05 * rnd.uniform(-1, 1) if i == j else 0.0) for j in range(n)] for i in range(n)]
h = tssearch.bofill_update(h, s, y)
sec = max(abs(sum(h[i][j] * s[j] for j in range(n)) - y[i]) for i in range(n))
sym = max(abs(h[i][j] - h[j][i]) for i in range(n) for j in range(n))
same = tssearch.bofill_update([r[:] for r in a], s, y)
diff = max(abs(same[i][j] - a[i][j]) for i in range(n) for j in range(n))
print("bofill: secant residual %.2e, asymmetry %.2e, change of an exact Hessian %.2e" % (sec, sym, diff))
assert sec < 1e-12 and sym < 1e-12 and diff < 1e-14, (sec, sym, diff)
PY
python3 - "$here" "$tmp/data" "$fix"/m*.xyz <<'PY' || fail "--simple-first order or edit-class report"
# --simple-first reorders each reactant's edits by the number of bond changes
# and keeps the same set of tasks; report.py counts attempts per edit class
import argparse, sys
sys.path.insert(0, sys.argv[1])
import chem, datagen, report
mols = []
for path in sys.argv[3:]:
    syms, xyz, comment = chem.read_xyz(path)
    can = dict(x.split("=", 1) for x in comment.split() if "=" in x)["canonical"]
    mols.append({"molid": can, "canonical": can, "syms": syms, "xyz": xyz})
def tasks(simple):
    a = argparse.Namespace(max_atoms=99, max_break=2, max_form=2, seed=1, max_per_reactant=10**6,
                           data="", scan_points=12, no_neb=True, neb_iters=40, prfo_hess_every=4,
                           prfo_max_iter=30, simple_first=simple)
    return datagen.build_tasks(mols, a, {}, "")
plain, simple = tasks(False), tasks(True)
assert sorted(t["id"] for t in plain) == sorted(t["id"] for t in simple), "task sets differ"
nch = lambda t: len(t["edit"]["break"]) + len(t["edit"]["form"])
for m in mols:
    seq = [nch(t) for t in simple if t["mol"] is m]
    assert seq == sorted(seq), (m["molid"], seq)
assert [nch(t) for t in plain] != [nch(t) for t in simple], "order unchanged: test is vacuous"
print("simple-first: %d tasks, bond changes per reactant in order %s" % (
    len(simple), ["".join(str(nch(t)) for t in simple if t["mol"] is m) for m in mols]))
assert report.edit_counts("b:0-1;2-3|f:0-2") == (2, 1) and report.edit_counts("b:4-5|f:") == (1, 0)
att = report.read_tsv(sys.argv[2] + "/attempts.tsv")
table = report.edit_class_table(att)
rows = [l.split("|")[2:4] for l in table.splitlines()[2:]]
assert sum(int(r[0]) for r in rows) == len(att), table
assert sum(int(r[1]) for r in rows) == sum(1 for r in att if r["stage"] == "done"), table
print(table)
PY
# (e) the reactant enumerator: complete and rule-abiding on two heavy atoms (the
# expected set is written out by hand from the rules in its docstring; a rule broken,
# e.g. N-F allowed, gives 16 molecules), no duplicate molecules among larger ones
# by obabel's canonical SMILES, and --exclude leaves out exactly the listed molecules.
enum=(python3 "$here/enumerate_molecules.py")
canon() { cut -d' ' -f1 | obabel -ismi -ocan 2>/dev/null | cut -f1 | sort; }
"${enum[@]}" --heavy 2 2>/dev/null | canon > "$tmp/enum2.can"
printf '%s\n' CC C=C C#C CN C=N C#N CO C=O CF NN N=N N#N NO | canon > "$tmp/enum2.want"
diff "$tmp/enum2.want" "$tmp/enum2.can" || fail "enumerator: two-heavy-atom set differs from the hand-written one"
"${enum[@]}" --heavy 4 2>/dev/null | canon > "$tmp/enum4.can"
[ "$(wc -l < "$tmp/enum4.can")" -gt 50 ] || fail "enumerator: too few four-heavy-atom molecules"
[ -z "$(uniq -d "$tmp/enum4.can")" ] || fail "enumerator: duplicate molecules: $(uniq -d "$tmp/enum4.can" | head -3 | tr '\n' ' ')"
head -20 "$tmp/enum4.can" > "$tmp/enum4.excl"
"${enum[@]}" --heavy 4 --exclude "$tmp/enum4.excl" 2>/dev/null | canon > "$tmp/enum4b.can"
[ "$(comm -12 "$tmp/enum4.excl" "$tmp/enum4b.can" | wc -l)" -eq 0 ] || fail "enumerator: --exclude ignored"
[ "$(wc -l < "$tmp/enum4b.can")" -eq $(($(wc -l < "$tmp/enum4.can") - 20)) ] || fail "enumerator: --exclude removed the wrong molecules"
echo "ci_check: enumerator: $(wc -l < "$tmp/enum2.can") two-heavy-atom molecules as expected, $(wc -l < "$tmp/enum4.can") four-heavy-atom ones, no duplicates"
echo "ci_check: OK"
