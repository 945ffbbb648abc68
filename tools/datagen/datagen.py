#!/usr/bin/env python3
"""GFN2-xTB reaction dataset generator.

Pipeline per reactant molecule (SMILES from a curated list):
  1. 3D geometry with `obabel --gen3d`, xtb optimisation, connectivity check.
  2. Elementary reactions by valence-valid graph edits (break <= 2 bonds,
     form <= 2 bonds); symmetry-equivalent edits are merged.
Per reaction (one "attempt"):
  3. Product: constrained xtb optimisations driving the changing distances
     (a distance scan, which is also the approximate path), then a free xtb
     optimisation; its connectivity must be the intended product graph.
  4. TS: P-RFO of our own from the highest scan point (exact xtb Hessians);
     if that does not verify, a climbing-image NEB of our own between the
     reactant and the product, and P-RFO again from the climbing image.
  5. Verification: one imaginary frequency (< -50 cm^-1, no other < -20),
     +/- displacement along it and xtb minimisation must give the reactant
     (exact graph) and the intended product (isomorphic graph).
  6. Record react/ts/prod xyz (same atom order), energies, frequency,
     barriers, provenance; index.tsv regenerated from the records.

Resumable (attempts.tsv lists every attempt tried), deterministic for a seed,
parallel over reactions (--workers).  See tools/datagen/README.md.
"""

import argparse
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import chem            # noqa: E402
import tssearch        # noqa: E402
import xtbrun          # noqa: E402

GENERATOR_VERSION = "datagen-1"
ATTEMPT_COLS = ["id", "reactant", "smiles", "edit", "status", "stage", "reason",
                "seconds", "xtb_calls"]
INDEX_COLS = ["id", "formula", "n_atoms", "reactant", "smiles", "e_react", "e_ts",
              "e_prod", "imag_freq_cm1", "barrier_fwd_kcal", "barrier_rev_kcal",
              "n_break", "n_form", "split", "rxn_key"]
MAX_BARRIER = 150.0     # kcal/mol


def sha(*parts):
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


def split_of(canonical):
    """Fixed 80/10/10 split by reactant molecule (independent of the seed)."""
    v = int(sha("split", canonical)[:8], 16) % 100
    return "train" if v < 80 else ("val" if v < 90 else "test")


def atomic_write(path, text):
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def append_line(path, line):
    """Append one line atomically (single write on an O_APPEND descriptor)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------- reactants

def read_molecule_list(path):
    out = []
    with open(path) as f:
        for ln in f:
            ln = ln.strip()
            if ln and not ln.startswith("#"):       # "SMILES [comment]"
                out.append(ln.split()[0])
    return out


def obabel(smiles, fmt, gen3d=False):
    cmd = ["obabel", "-:" + smiles, "-o" + fmt]
    if gen3d:
        cmd.append("--gen3d")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return p.stdout


def prepare_reactant(smiles, rdir):
    """Optimised reactant geometry, cached as rdir/<molid>.xyz.
    Returns dict(molid, smiles, canonical, syms, xyz, energy) or dict(error)."""
    can = obabel(smiles, "can").split("\t")[0].split()[0] if smiles else ""
    if not can:
        return {"smiles": smiles, "error": "obabel could not parse"}
    molid = "m" + sha("mol", can)[:10]
    path = os.path.join(rdir, molid + ".xyz")
    if os.path.exists(path):
        syms, xyz, comment = chem.read_xyz(path)
        kv = dict(x.split("=", 1) for x in comment.split() if "=" in x)
        return {"molid": molid, "smiles": smiles, "canonical": can, "syms": syms,
                "xyz": xyz, "energy": float(kv["energy"])}
    txt = obabel(smiles, "xyz", gen3d=True)
    lines = txt.splitlines()
    if len(lines) < 3:
        return {"smiles": smiles, "error": "no 3D geometry"}
    n = int(lines[0])
    syms = [l.split()[0] for l in lines[2:2 + n]]
    xyz = [[float(v) for v in l.split()[1:4]] for l in lines[2:2 + n]]
    if any(s not in chem.COV for s in syms):
        return {"smiles": smiles, "error": "unsupported element"}
    g0 = chem.bonds_from_xyz(syms, xyz)
    if not chem.lewis_ok(syms, g0, max_carbenes=0) or len(chem.components(len(syms), g0)) != 1:
        return {"smiles": smiles, "error": "embedded geometry not a valid single molecule"}
    try:
        e, opt, conv = xtbrun.optimize(syms, xyz, "tight", cycles=500)
    except xtbrun.XtbError as exc:
        return {"smiles": smiles, "error": str(exc)}
    # leave saddle points (e.g. an eclipsed methyl rotor from the embedding):
    # displace along the imaginary mode and re-optimise, a few times at most
    for _ in range(3):
        try:
            _, hess = xtbrun.hessian(syms, opt)
        except xtbrun.XtbError:     # xtb 6.5.1 --hess fails for some linear molecules
            break
        ok, _, freqs, mode = tssearch.check_frequencies(syms, opt, hess)
        if not freqs or freqs[0] > tssearch.IMAG_OTHER:
            break
        freqs2, modes2 = chem.frequencies(syms, opt, hess)
        k = min(range(len(freqs2)), key=lambda i: freqs2[i])
        opt = tssearch.displaced(opt, modes2[k], 0.1)[0]
        e, opt, conv = xtbrun.optimize(syms, opt, "tight", cycles=500)
    if chem.bonds_from_xyz(syms, opt) != g0:
        return {"smiles": smiles, "error": "connectivity changed on optimisation"}
    os.makedirs(rdir, exist_ok=True)
    atomic_write(path, chem.xyz_text(syms, opt, "smiles=%s canonical=%s energy=%.10f %s" % (
        smiles, can, e, xtbrun.version().replace(" ", "_"))))
    return {"molid": molid, "smiles": smiles, "canonical": can, "syms": syms,
            "xyz": opt, "energy": e}


# ------------------------------------------------------------- edits

def enumerate_edits(syms, bonds, max_break=2, max_form=2, max_dist=3):
    """Valence-valid elementary graph edits of a molecule.

    Each formed bond joins atoms at most `max_dist` bonds apart and touches an
    atom of a broken bond; each broken bond touches an atom of a formed bond
    (a connected, local rearrangement).  The product must have a neutral
    closed-shell Lewis structure (at most one singlet carbene centre), at
    most two fragments, and no strained multiple bonds.  Edits equivalent by
    symmetry (same condensed reaction graph) are merged; the first in
    lexicographic order represents its class.  Returns a list of dicts."""
    n = len(syms)
    bl = sorted(bonds)
    dist = [chem.topo_dist(n, bl, a) for a in range(n)]
    cand_form = [(i, j) for i in range(n) for j in range(i + 1, n)
                 if (i, j) not in bonds and dist[i][j] is not None and 2 <= dist[i][j] <= max_dist
                 and not (syms[i] == "F" and syms[j] == "F")]
    seen = {}
    rhash = chem.graph_hash(syms, bonds)
    for nb in range(1, max_break + 1):
        for brk in itertools.combinations(bl, nb):
            batoms = set(a for b in brk for a in b)
            forms = [f for f in cand_form if f[0] in batoms or f[1] in batoms]
            for nf in range(1, max_form + 1):
                for frm in itertools.combinations(forms, nf):
                    fatoms = set(a for f in frm for a in f)
                    if not all(b[0] in fatoms or b[1] in fatoms for b in brk):
                        continue
                    prod = (bonds - set(brk)) | set(frm)
                    if len(chem.components(n, prod)) > 2:
                        continue
                    if not chem.lewis_ok(syms, prod, max_carbenes=1):
                        continue
                    phash = chem.graph_hash(syms, prod)
                    if phash == rhash:          # identity (degenerate) rearrangement
                        continue
                    lab = {b: "b" for b in brk}
                    lab.update({f: "f" for f in frm})
                    key = chem.graph_hash(syms, bonds | set(frm), lab)
                    if key not in seen:
                        seen[key] = {"break": [list(b) for b in brk],
                                     "form": [list(f) for f in frm],
                                     "cgr": key, "prod_hash": phash}
    return list(seen.values())


def edit_str(ed):
    return "b:" + ";".join("%d-%d" % tuple(b) for b in ed["break"]) + \
           "|f:" + ";".join("%d-%d" % tuple(f) for f in ed["form"])


def break_target(si, sj):
    return 1.9 * (chem.COV[si] + chem.COV[sj])


def form_target(si, sj):
    return 1.0 * (chem.COV[si] + chem.COV[sj]) + 0.05


# ------------------------------------------------------------- one reaction

class Reject(Exception):
    def __init__(self, stage, reason):
        Exception.__init__(self, reason)
        self.stage, self.reason = stage, reason


def _bstr(bonds):
    return ",".join("%d-%d" % b for b in sorted(bonds)) or "-"


def _tangent(path, k):
    a = path[max(k - 1, 0)][1]
    b = path[min(k + 1, len(path) - 1)][1]
    return [(q - p) / chem.BOHR for pa, pb in zip(a, b) for p, q in zip(pa, pb)]


def _search_and_verify(syms, start, guide, rbonds, phash, info, hess_every, max_iter):
    sv = tssearch.search_and_verify(syms, start, rbonds, phash, guide=guide,
                                    hess_every=hess_every, max_iter=max_iter)
    res = sv["prfo"]
    info["prfo_iterations"] = info.get("prfo_iterations", 0) + res["iterations"]
    info["prfo_hessians"] = info.get("prfo_hessians", 0) + res["hessians"]
    if not sv["ok"]:
        raise Reject(sv["stage"], sv["reason"])
    return res, sv["verify"]


def run_reaction(task):
    """Run one attempt; returns an attempt record (dict).  Writes the reaction
    directory when accepted."""
    t0 = time.time()
    calls0 = xtbrun.STATS["calls"]
    mol, ed, rid, data = task["mol"], task["edit"], task["id"], task["data"]
    syms, xr = mol["syms"], mol["xyz"]
    n = len(syms)
    rbonds = chem.bonds_from_xyz(syms, xr)
    brk = [tuple(b) for b in ed["break"]]
    frm = [tuple(f) for f in ed["form"]]
    pbonds = (rbonds - set(brk)) | set(frm)
    info = {"id": rid, "reactant": mol["molid"], "smiles": mol["smiles"],
            "canonical": mol["canonical"], "edit": edit_str(ed)}
    rec = {"id": rid, "reactant": mol["molid"], "smiles": mol["smiles"], "edit": edit_str(ed)}
    try:
        # ---- product by a constrained distance scan (also the approximate path)
        targets = [(i, j, break_target(syms[i], syms[j])) for i, j in brk] + \
                  [(i, j, form_target(syms[i], syms[j])) for i, j in frm]
        path = tssearch.scan_path(syms, xr, [t[:2] for t in targets],
                                  [t[2] for t in targets], npts=task["scan_points"])
        ep, xp, _ = xtbrun.optimize(syms, path[-1][1], "tight", cycles=500)
        got = chem.bonds_from_xyz(syms, xp)
        if got != pbonds:
            raise Reject("product", "optimised product bonding differs from the intended one "
                         "(missing %s, extra %s)" % (_bstr(pbonds - got), _bstr(got - pbonds)))
        if got == rbonds:
            raise Reject("product", "no reaction")
        path[-1] = (xtbrun.singlepoint(syms, xp), xp)
        # ---- TS from the highest interior point of the scan
        k = max(range(1, len(path) - 1), key=lambda i: path[i][0])
        try:
            res, v = _search_and_verify(syms, path[k][1], _tangent(path, k), rbonds, ed["prod_hash"], info,
                                        task["hess_every"], task["prfo_max_iter"])
            info["ts_route"] = "scan+prfo"
        except Reject as first:
            if not task["neb"]:
                raise
            # ---- fallback: climbing-image NEB between R and P, then P-RFO
            imgs = [p[1] for p in path]
            nebp = tssearch.neb(syms, imgs, iters=task["neb_iters"])
            k = max(range(1, len(nebp) - 1), key=lambda i: nebp[i][0])
            try:
                res, v = _search_and_verify(syms, nebp[k][1], _tangent(nebp, k), rbonds,
                                            ed["prod_hash"], info, task["hess_every"],
                                            task["prfo_max_iter"])
            except Reject as second:
                raise Reject(second.stage, second.reason + " [scan route: %s: %s]" % (first.stage, first.reason))
            info["ts_route"] = "neb+prfo"
        ets = res["energy"]
        er, xre = v["react"]
        epr, xpe = v["prod"]
        fwd = (ets - er) * chem.HARTREE_KCAL
        rev = (ets - epr) * chem.HARTREE_KCAL
        if fwd <= 0 or rev <= 0:
            raise Reject("barrier", "non-positive barrier (%.1f, %.1f kcal/mol)" % (fwd, rev))
        if fwd > MAX_BARRIER:
            raise Reject("barrier", "forward barrier %.1f kcal/mol above %g" % (fwd, MAX_BARRIER))
        pb = v["prod_bonds"]
        info.update({
            "formula": chem.formula(syms), "n_atoms": n,
            "e_react": er, "e_ts": ets, "e_prod": epr,
            "imag_freq_cm1": v["freqs"][0], "freqs_cm1": [round(f, 2) for f in v["freqs"]],
            "barrier_fwd_kcal": fwd, "barrier_rev_kcal": rev,
            "bonds_broken": sorted(list(b) for b in rbonds - pb),
            "bonds_formed": sorted(list(b) for b in pb - rbonds),
            "split": split_of(mol["canonical"]),
            "provenance": {"generator": GENERATOR_VERSION, "xtb": task["xtb_version"],
                           "method": "GFN2-xTB --chrg 0 --uhf 0", "seed": task["seed"],
                           "settings": task["settings"]},
        })
        write_reaction(data, rid, syms, xre, res["coords"], xpe, info)
        rec.update(status="accepted", stage="done", reason="")
    except Reject as r:
        rec.update(status="rejected", stage=r.stage, reason=r.reason)
    except xtbrun.XtbError as exc:
        rec.update(status="rejected", stage="xtb", reason=str(exc))
    except Exception as exc:      # keep the generator alive; record the failure
        rec.update(status="rejected", stage="error",
                   reason="%s: %s" % (type(exc).__name__, exc))
        traceback.print_exc()
    rec["seconds"] = "%.1f" % (time.time() - t0)
    rec["xtb_calls"] = xtbrun.STATS["calls"] - calls0
    return rec


def write_reaction(data, rid, syms, xr, xts, xp, info):
    final = os.path.join(data, "reactions", rid)
    tmp = os.path.join(data, "reactions", ".tmp_" + rid)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    chem.write_xyz(os.path.join(tmp, "react.xyz"), syms, xr,
                   "id=%s role=react energy=%.10f" % (rid, info["e_react"]))
    chem.write_xyz(os.path.join(tmp, "ts.xyz"), syms, xts,
                   "id=%s role=ts energy=%.10f imag_freq=%.2f barrier_fwd_kcal=%.3f barrier_rev_kcal=%.3f" % (
                       rid, info["e_ts"], info["imag_freq_cm1"], info["barrier_fwd_kcal"], info["barrier_rev_kcal"]))
    chem.write_xyz(os.path.join(tmp, "prod.xyz"), syms, xp,
                   "id=%s role=prod energy=%.10f" % (rid, info["e_prod"]))
    with open(os.path.join(tmp, "info.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)


# ------------------------------------------------------------- bookkeeping

def read_attempts(data):
    path = os.path.join(data, "attempts.tsv")
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for ln in f:
                p = ln.rstrip("\n").split("\t")
                if p and p[0] != "id" and len(p) >= 5:
                    out[p[0]] = dict(zip(ATTEMPT_COLS, p))
    return out


def reaction_key(rdir):
    """Direction-free reaction identity: hash of the unordered pair of the
    reactant and product graph hashes (the same reaction found from its
    product side, e.g. vinyl alcohol -> acetaldehyde, gets the same key)."""
    hs = []
    for role in ("react", "prod"):
        syms, xyz, _ = chem.read_xyz(os.path.join(rdir, role + ".xyz"))
        hs.append(chem.graph_hash(syms, chem.bonds_from_xyz(syms, xyz)))
    return sha(*sorted(hs))[:12]


def write_index(data):
    """Regenerate data/index.tsv from the per-reaction info.json records."""
    rdir = os.path.join(data, "reactions")
    rows = []
    for rid in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        if rid.startswith("."):
            continue
        p = os.path.join(rdir, rid, "info.json")
        if not os.path.exists(p):
            continue
        with open(p) as f:
            info = json.load(f)
        rows.append([info["id"], info["formula"], str(info["n_atoms"]), info["reactant"],
                     info["smiles"], "%.8f" % info["e_react"], "%.8f" % info["e_ts"],
                     "%.8f" % info["e_prod"], "%.1f" % info["imag_freq_cm1"],
                     "%.2f" % info["barrier_fwd_kcal"], "%.2f" % info["barrier_rev_kcal"],
                     str(len(info["bonds_broken"])), str(len(info["bonds_formed"])), info["split"],
                     reaction_key(os.path.join(rdir, rid))])
    atomic_write(os.path.join(data, "index.tsv"),
                 "\t".join(INDEX_COLS) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return len(rows)


def _prep(args):
    smi, rdir = args
    try:
        return prepare_reactant(smi, rdir)
    except Exception as exc:
        return {"smiles": smi, "error": "%s: %s" % (type(exc).__name__, exc)}


def build_tasks(mols, args, settings, xver):
    """Deterministic task order: per reactant, edits sorted by a seeded hash;
    then round-robin over reactants so every molecule gets its k-th reaction
    before any gets its (k+1)-th."""
    per = []
    for mol in mols:
        syms = mol["syms"]
        if len(syms) > args.max_atoms:
            continue
        bonds = chem.bonds_from_xyz(syms, mol["xyz"])
        eds = enumerate_edits(syms, bonds, max_break=args.max_break, max_form=args.max_form)
        for ed in eds:
            ed["key"] = sha(args.seed, mol["canonical"], ed["cgr"])
        if args.simple_first:       # fewer bond changes first, seeded order within
            eds.sort(key=lambda ed: (len(ed["break"]) + len(ed["form"]), ed["key"]))
        else:
            eds.sort(key=lambda ed: ed["key"])
        tasks = []
        for ed in eds[:args.max_per_reactant]:
            tasks.append({"mol": mol, "edit": ed, "id": "r" + ed["key"][:12], "data": args.data,
                          "seed": args.seed, "scan_points": args.scan_points,
                          "neb": not args.no_neb, "neb_iters": args.neb_iters,
                          "hess_every": args.prfo_hess_every, "prfo_max_iter": args.prfo_max_iter,
                          "settings": settings, "xtb_version": xver})
        per.append(tasks)
    order = []
    for k in range(max([len(t) for t in per] or [0])):
        for t in per:
            if k < len(t):
                order.append(t[k])
    return order


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "data"), help="output directory")
    ap.add_argument("--molecules", default=os.path.join(HERE, "molecules.smi"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-per-reactant", type=int, default=40)
    ap.add_argument("--max-atoms", type=int, default=12)
    ap.add_argument("--max-break", type=int, default=2)
    ap.add_argument("--max-form", type=int, default=2)
    ap.add_argument("--scan-points", type=int, default=12)
    ap.add_argument("--neb-iters", type=int, default=40)
    ap.add_argument("--no-neb", action="store_true", help="skip the NEB fallback")
    ap.add_argument("--prfo-hess-every", type=int, default=4,
                    help="exact xtb Hessian every N P-RFO steps, Bofill updates between (1: every step)")
    ap.add_argument("--prfo-max-iter", type=int, default=50,
                    help="give up a P-RFO search after this many steps")
    ap.add_argument("--simple-first", action="store_true",
                    help="per reactant, try edits with fewer bond changes first")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many new attempts (0: all)")
    ap.add_argument("--index-only", action="store_true", help="only regenerate index.tsv")
    args = ap.parse_args(argv)
    data = args.data = os.path.abspath(args.data)
    os.makedirs(os.path.join(data, "reactions"), exist_ok=True)
    if args.index_only:
        print("index rows:", write_index(data))
        return 0
    xver = xtbrun.version()
    settings = {k: getattr(args, k) for k in ("max_per_reactant", "max_atoms", "max_break", "max_form",
                                              "scan_points", "neb_iters", "no_neb", "prfo_hess_every",
                                              "prfo_max_iter", "simple_first")}
    settings.update(prfo_gmax=tssearch.GMAX_TOL, imag_min=tssearch.IMAG_MIN,
                    imag_other=tssearch.IMAG_OTHER, displace=tssearch.DISPLACE,
                    bond_tol=chem.BOND_TOL, max_barrier=MAX_BARRIER)
    smiles = read_molecule_list(args.molecules)
    rdir = os.path.join(data, "reactants")
    os.makedirs(rdir, exist_ok=True)
    t0 = time.time()
    workers = max(1, args.workers)
    pool = mp.Pool(workers) if workers > 1 else None
    jobs = [(s, rdir) for s in smiles]
    prepped = pool.map(_prep, jobs, chunksize=1) if pool else [_prep(j) for j in jobs]
    mols, seen = [], set()
    for m in prepped:
        if "error" in m:
            print("reactant skipped: %s (%s)" % (m["smiles"], m["error"]), flush=True)
        elif m["canonical"] not in seen:
            seen.add(m["canonical"])
            mols.append(m)
    print("reactants ready: %d of %d (%.0f s)" % (len(mols), len(smiles), time.time() - t0), flush=True)
    tasks = build_tasks(mols, args, settings, xver)
    done = read_attempts(data)
    attempts_path = os.path.join(data, "attempts.tsv")
    if not os.path.exists(attempts_path):
        append_line(attempts_path, "\t".join(ATTEMPT_COLS))
    todo = [t for t in tasks if t["id"] not in done]
    if args.limit:
        todo = todo[:args.limit]
    print("tasks: %d total, %d already attempted, %d to run" % (len(tasks), len(tasks) - len(todo), len(todo)),
          flush=True)
    nacc = sum(1 for r in done.values() if r.get("status") == "accepted")
    it = pool.imap(run_reaction, todo, chunksize=1) if pool else map(run_reaction, todo)
    for i, rec in enumerate(it):
        append_line(attempts_path, "\t".join(str(rec.get(c, "")).replace("\t", " ").replace("\n", " ")
                                             for c in ATTEMPT_COLS))
        if rec["status"] == "accepted":
            nacc += 1
        print("[%d/%d] %s %s %s %s %ss %s" % (i + 1, len(todo), rec["id"], rec["smiles"], rec["edit"],
                                             rec["status"], rec["seconds"],
                                             (rec["stage"] + ": " + rec["reason"]) if rec["reason"] else ""),
              flush=True)
        if (i + 1) % 10 == 0:
            write_index(data)
    if pool:
        pool.close()
        pool.join()
    nidx = write_index(data)
    print("finished: %d reactions in index (%.0f s)" % (nidx, time.time() - t0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
