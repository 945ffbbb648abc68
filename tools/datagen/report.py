#!/usr/bin/env python3
"""Dataset statistics: writes DATA/README.md and DATA/barriers.png from
DATA/index.tsv and DATA/attempts.tsv (stdlib only; the PNG encoder and the
bitmap font are our own, in tools/plotlib.py).

usage: report.py [DATA]      (default: the repository's data/ directory)
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # tools/: the shared PNG code
from plotlib import Canvas, histogram  # noqa: E402

STAGES = [("product", "product optimised to the intended bonding"),
          ("ts", "P-RFO converged to a stationary point"),
          ("freq", "exactly one imaginary frequency"),
          ("irc", "+/- mode minimisation reaches reactant and product"),
          ("barrier", "barriers positive and forward <= 150 kcal/mol")]


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    if not rows:
        return []
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[1:]]


def pct(a, b):
    return "%.1f%%" % (100.0 * a / b) if b else "-"


def edit_counts(edit):
    """(bonds broken, bonds formed) of an attempts.tsv edit 'b:i-j;k-l|f:i-k'."""
    parts = dict(p.split(":", 1) for p in edit.split("|"))
    return tuple(len([x for x in parts.get(k, "").split(";") if x]) for k in ("b", "f"))


def edit_class_table(att):
    """Markdown table: attempts, acceptance and attempt seconds per accepted
    reaction for each (broken, formed) edit class."""
    cls = {}
    for r in att:
        try:
            k = edit_counts(r.get("edit", ""))
        except ValueError:
            continue
        c = cls.setdefault(k, [0, 0, 0.0])
        c[0] += 1
        c[1] += r.get("stage") == "done"
        try:
            c[2] += float(r.get("seconds") or 0)
        except ValueError:
            pass
    lines = ["| bonds broken / formed | attempts | accepted | rate | attempt seconds per accepted |",
             "|---|---|---|---|---|"]
    for k in sorted(cls):
        n, a, t = cls[k]
        lines.append("| %d / %d | %d | %d | %s | %s |" % (k[0], k[1], n, a, pct(a, n),
                                                      "%.0f" % (t / a) if a else "-"))
    return "\n".join(lines)


def main(argv):
    data = os.path.abspath(argv[0] if argv else os.path.join(HERE, "..", "..", "data"))
    idx = read_tsv(os.path.join(data, "index.tsv"))
    att = read_tsv(os.path.join(data, "attempts.tsv"))
    fwd = [float(r["barrier_fwd_kcal"]) for r in idx]
    rev = [float(r["barrier_rev_kcal"]) for r in idx]
    imag = [float(r["imag_freq_cm1"]) for r in idx]
    natoms = [int(r["n_atoms"]) for r in idx]

    cv = Canvas(900, 620)
    c1 = histogram(cv, 70, 20, 780, 240, fwd, 0, 150, 30, (40, 90, 200), 2)
    c2 = histogram(cv, 70, 330, 780, 240, rev, 0, 150, 30, (200, 90, 40), 2)
    with open(os.path.join(data, "barriers.png"), "wb") as f:
        f.write(cv.png())

    # ---- stage accounting
    n_att = len(att)
    by_stage = {}
    secs = 0.0
    for r in att:
        st = r.get("stage", "")
        by_stage[st] = by_stage.get(st, 0) + 1
        try:
            secs += float(r.get("seconds") or 0)
        except ValueError:
            pass
    n_acc = by_stage.get("done", 0)
    other = sum(v for k, v in by_stage.items() if k not in [s for s, _ in STAGES] + ["done"])
    lines = []
    remaining = n_att - other
    lines.append("| stage | passed | rejected at this stage | pass rate |")
    lines.append("|---|---|---|---|")
    lines.append("| attempted edits | %d | %d (xtb failures / errors) | |" % (n_att, other))
    for st, desc in STAGES:
        rej = by_stage.get(st, 0)
        passed = remaining - rej
        lines.append("| %s (%s) | %d | %d | %s |" % (st, desc, passed, rej, pct(passed, remaining)))
        remaining = passed
    stage_table = "\n".join(lines)
    class_table = edit_class_table(att)

    splits = {}
    mols = {}
    for r in idx:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
        mols.setdefault(r["split"], set()).add(r["reactant"])
    forms = {}
    for n in natoms:
        forms[n] = forms.get(n, 0) + 1
    size = 0
    for root, _, files in os.walk(os.path.join(data, "reactions")):
        for fn in files:
            size += os.path.getsize(os.path.join(root, fn))

    def q(v, p):
        if not v:
            return float("nan")
        s = sorted(v)
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    def bstats(v):
        if not v:
            return "-"
        return "min %.1f, median %.1f, mean %.1f, max %.1f" % (min(v), q(v, 0.5), sum(v) / len(v), max(v))

    keys = {}
    for r in idx:
        keys.setdefault(r.get("rxn_key", r["id"]), set()).add(r["split"])
    n_dup = len(idx) - len(keys)
    n_cross = sum(1 for v in keys.values() if len(v) > 1)
    brk = {}
    for r in idx:
        k = "%s break / %s form" % (r["n_break"], r["n_form"])
        brk[k] = brk.get(k, 0) + 1
    text = """# GFN2-xTB reaction dataset

Generated by `tools/datagen` (see `tools/datagen/README.md`): reactant
molecules from `tools/datagen/molecules.smi`, products by valence-valid graph
edits, transition states by our own P-RFO with xtb Hessians, each verified by
a single imaginary frequency and a +/- mode descent to reactant and product.
All energies are GFN2-xTB (xtb 6.5.1, neutral singlet), in Hartree.

This file is regenerated by `python3 tools/datagen/report.py data`.

## Layout

* `reactions/<id>/{react,ts,prod}.xyz` - geometries (Angstrom) in the same
  atom order; the comment line holds `energy=` (and frequency/barriers for ts).
* `reactions/<id>/info.json` - energies, all frequencies, bonds broken/formed,
  edit, split and provenance (generator, xtb version, settings, seed).
* `index.tsv` - one row per reaction: id, formula, n_atoms, reactant
  (molecule id), smiles, e_react, e_ts, e_prod (Eh), imag_freq_cm1,
  barrier_fwd_kcal, barrier_rev_kcal, n_break, n_form, split.
* `attempts.tsv` - every attempted edit with its outcome (stage and reason of
  rejection, seconds, xtb calls); used for resuming and for the rates below.
* `reactants/<molecule id>.xyz` - the optimised reactant geometries (cache;
  part of the data, as the 3D embedding is not deterministic).
* `barriers.png` - histograms of forward (top, blue) and reverse (bottom,
  orange) barriers, 0-150 kcal/mol in 5 kcal/mol bins (y: count).

## Counts

* reactions: **%d** (%s) from %d reactant molecules
* split by reactant molecule (80/10/10 by hash of the canonical SMILES):
  %s
* atoms per reaction: %s
* bond changes: %s
* distinct reactions ignoring direction (`rxn_key`): %d; %d rows repeat a
  reaction found from its other side, %d such reactions span two splits
  (the split is by reactant molecule, as specified; filter on `rxn_key` for
  a stricter split)
* size of `reactions/`: %.1f MB

## Distributions

* forward barrier (kcal/mol): %s
* reverse barrier (kcal/mol): %s
* imaginary frequency (cm^-1): %s

![barrier histograms](barriers.png)

Forward barrier histogram counts (5 kcal/mol bins from 0): %s

## Acceptance by stage

%s

Accepted: %d of %d attempts (%s).  Compute: %.1f CPU-hours in total
(one core per reaction), %.1f s per attempt, %.1f s per accepted reaction.

## Acceptance by edit class

All sessions and settings together (NEB fallback in sessions 1-4 only);
attempt seconds are wall time and depend on machine load.

%s
""" % (len(idx), ", ".join("%s %d" % (k, splits[k]) for k in sorted(splits)),
       len(set(r["reactant"] for r in idx)),
       ", ".join("%s %d reactions / %d molecules" % (k, splits[k], len(mols[k])) for k in sorted(splits)) or "-",
       ", ".join("%d: %d" % (k, forms[k]) for k in sorted(forms)) or "-",
       ", ".join("%s: %d" % (k, brk[k]) for k in sorted(brk)) or "-",
       len(keys), n_dup, n_cross, size / 1e6, bstats(fwd), bstats(rev), bstats(imag), " ".join(str(c) for c in c1),
       stage_table, n_acc, n_att, pct(n_acc, n_att), secs / 3600.0,
       secs / n_att if n_att else 0.0, secs / n_acc if n_acc else 0.0, class_table)
    with open(os.path.join(data, "README.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
