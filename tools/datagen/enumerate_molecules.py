#!/usr/bin/env python3
"""Enumerate small acyclic closed-shell molecules of H, C, N, O, F as SMILES.

Every tree of NHEAVY heavy atoms with bond orders 1-3 whose valences (C 4, N 3,
O 2, F 1) are filled with hydrogens, under conservative chemistry rules:
  * F is bonded only to C, by a single bond;
  * no O-O bond and no N=O bond;
  * at most one multiple bond per atom (no allenes, ketenes, cumulenes);
  * at most one bond between two heteroatoms (N, O, F) per molecule.
Trees are deduplicated by a canonical form of our own (rooted-tree strings,
minimum over all roots), so the output is independent of the growth order.

Prints "SMILES  enum-<heavy atoms>" lines, ordered by a seeded hash, skipping
molecules whose canonical SMILES (by obabel, when available) is already in
--exclude.  Used to extend tools/datagen/molecules.smi with fresh reactants.

usage: enumerate_molecules.py --heavy 3,4,5 [--max-atoms 16] [--exclude FILE]
                              [--count N] [--seed S]
"""
import argparse
import hashlib
import subprocess
import sys

VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1}
ELEMENTS = ("C", "N", "O", "F")


def bond_allowed(a, b, order):
    pair = {a, b}
    if "F" in pair:
        return pair == {"C", "F"} and order == 1
    if a == b == "O":
        return False
    if pair == {"N", "O"} and order > 1:
        return False
    return True


def used(mol, i):
    return sum(o for (p, q, o) in mol[1] if i in (p, q))


def multiple_bonds(mol, i):
    return sum(1 for (p, q, o) in mol[1] if i in (p, q) and o > 1)


def hetero_bonds(mol):
    return sum(1 for (p, q, o) in mol[1] if mol[0][p] != "C" and mol[0][q] != "C")


def adjacency(mol):
    """atom -> [(neighbour, bond order)]"""
    adj = {i: [] for i in range(len(mol[0]))}
    for p, q, o in mol[1]:
        adj[p].append((q, o))
        adj[q].append((p, o))
    return adj


def canonical(mol):
    """Canonical string of a tree: minimum over roots of the sorted rooted form."""
    elems, adj = mol[0], adjacency(mol)

    def rooted(v, parent):
        kids = sorted("%d%s" % (o, rooted(w, v)) for (w, o) in adj[v] if w != parent)
        return elems[v] + "(" + ",".join(kids) + ")"

    return min(rooted(r, -1) for r in range(len(elems)))


def grow(mol):
    elems, bonds = mol
    for i in range(len(elems)):
        free = VALENCE[elems[i]] - used(mol, i)
        for e in ELEMENTS:
            for order in (1, 2, 3):
                if order > free or order > VALENCE[e] or not bond_allowed(elems[i], e, order):
                    continue
                if order > 1 and multiple_bonds(mol, i) > 0:
                    continue
                if elems[i] != "C" and e != "C" and hetero_bonds(mol) > 0:
                    continue
                yield (elems + [e], bonds + [(i, len(elems), order)])


def smiles(mol):
    elems, adj = mol[0], adjacency(mol)
    sym = {1: "", 2: "=", 3: "#"}

    def write(v, parent):
        kids = [(w, o) for (w, o) in adj[v] if w != parent]
        out = elems[v]
        for k, (w, o) in enumerate(kids):
            s = sym[o] + write(w, v)
            out += s if k == len(kids) - 1 else "(" + s + ")"
        return out

    return write(0, -1)


def n_hydrogens(mol):
    return sum(VALENCE[e] - used(mol, i) for i, e in enumerate(mol[0]))


def enumerate_trees(nmax):
    by_size = {1: [([e], []) for e in ELEMENTS]}
    for n in range(2, nmax + 1):
        nxt = {}
        for mol in by_size[n - 1]:
            for m in grow(mol):
                nxt.setdefault(canonical(m), m)
        by_size[n] = [nxt[k] for k in sorted(nxt)]
    return by_size


def obabel_canonical(smis):
    try:
        res = subprocess.run(["obabel", "-ismi", "-ocan"], input="\n".join(smis) + "\n",
                             capture_output=True, text=True, check=True)
    except OSError:
        return None                     # no obabel: compare SMILES as written
    except subprocess.CalledProcessError as exc:
        sys.exit("enumerate_molecules: obabel failed: %s" % exc.stderr.strip().splitlines()[-1:])
    out = [ln.split()[0] if ln.split() else "" for ln in res.stdout.splitlines()]
    if len(out) != len(smis):           # obabel drops what it cannot parse
        sys.exit("enumerate_molecules: obabel canonicalised %d of %d SMILES" % (len(out), len(smis)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heavy", default="3,4,5", help="heavy-atom counts, comma separated")
    ap.add_argument("--max-atoms", type=int, default=16, help="largest total atom count")
    ap.add_argument("--exclude", help="SMILES list whose molecules are left out (e.g. molecules.smi)")
    ap.add_argument("--count", type=int, default=0, help="print at most this many (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    sizes = sorted({int(x) for x in args.heavy.split(",")})
    by_size = enumerate_trees(max(sizes))
    mols = [m for n in sizes for m in by_size[n] if n + n_hydrogens(m) <= args.max_atoms]
    smis = [smiles(m) for m in mols]
    cans = obabel_canonical(smis) or smis
    excluded = set()
    if args.exclude:
        with open(args.exclude) as f:
            ex = [ln.split()[0] for ln in f if ln.strip() and not ln.startswith("#")]
        excluded = set(obabel_canonical(ex) or ex)
    rows = []
    for m, s, c in zip(mols, smis, cans):
        if c in excluded:
            continue
        excluded.add(c)
        key = hashlib.sha256(("%d:%s" % (args.seed, c)).encode()).hexdigest()
        rows.append((key, s, len(m[0])))
    rows.sort()
    if args.count:
        rows = rows[:args.count]
    for _, s, n in rows:
        print("%s enum-%d" % (s, n))
    print("enumerate_molecules: %d molecules printed" % len(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
