#!/usr/bin/env python3
"""Evaluates generated transition states on a split of our reaction dataset
(Python standard library only).

usage: python3 tools/evaluate.py --data data --split test --weights weights.bin -n 8 --out eval/
           [--binary ./oa_reactdiff] [--threads K] [--seed S] [--steps T]
           [--resamplings R] [--jump J] [--confidence FILE] [--xtb] [--limit K]
           [--reference-as-candidate] [--max-distance A] [--min-distance A]
           [--refine] [--refine-max-iter N]

1. Writes OUT/list.txt (one line per reaction of the split: react.xyz prod.xyz id)
   and runs `oa_reactdiff ts --list OUT/list.txt --outdir OUT/ts -n N ...`
   (resumable: candidates already in OUT/ts are kept; OUT/config.json records the
   settings that determine them and a rerun with other settings is refused).
2. For each reaction: `oa_reactdiff rmsd OUT/ts/ID.xyz data/reactions/ID/ts.xyz`
   (one RMSD per candidate frame, after superposition and atom matching within
   elements, mirror images allowed). Recorded: the RMSD of the first candidate
   (frame 0: the top-ranked one with --confidence, else simply the first draw)
   and of the best one (minimum over the N frames: an oracle, it needs the
   reference).
   The same measure is applied to a guess made without any model, the midpoint
   of R and P (P superimposed on R atom by atom; OUT/midpoint/ID.xyz): the
   baseline a trained model has to beat (summary, and per_reaction.tsv's last
   column).
3. A candidate is garbage when two atoms are closer than --min-distance (0.5 A)
   or farther apart than --max-distance (20 A; the largest distance in any of
   our structures is under 7 A). Garbage candidates are counted, not hidden.
4. With --xtb: GFN2-xTB single point (tools/datagen/xtbrun.py; charge 0, closed
   shell) of the first and the best candidate; error E(candidate) - e_ts in
   kcal/mol. A garbage candidate is not given to xtb; it and a candidate on
   which xtb fails count as failures of that row.
5. Writes OUT/per_reaction.tsv, OUT/summary.json, OUT/summary.md (a Markdown
   table for the README's model card; also printed) and OUT/rmsd.png (cumulative
   distributions of the best and the first RMSD; tools/plotlib.py).

--reference-as-candidate: instead of running the model, the candidates are the
reference TS itself (frame 0) and N-1 rotated, translated, mirrored and
atom-permuted copies of it; every RMSD must come out 0 (and with --xtb every
energy error 0). It checks the evaluation path end to end.

--refine: the cost of turning a guess into a verified TS. For each evaluated reaction the
first candidate (frame 0) and the R-P midpoint are refined with tools/refine.py (GFN2-xTB
P-RFO, frequency test, +/- mode descent to R and P; one reaction at a time, --threads K
reactions in parallel): OUT/refine/ID.xyz (frame 0: from the candidate, frame 1: from the
midpoint; resumable: existing files are kept). Reported for both: the fraction of
reactions whose search ends at a verified TS, the fraction whose verified TS is within
0.1 A RMSD (as above) of the reference TS, and the median numbers of exact Hessians and
gradients of the search and its median wall time (OUT/refine.tsv, summary.json "refine",
summary.md). --refine-max-iter: P-RFO steps at most (refine.py's --max-iter, default 50).

Exit status: 0 every reaction evaluated; 2 bad command line or missing input
(binary, weights, data, xtb), or OUT holds candidates made with other settings;
3 some reactions failed (their ts run or their RMSD; listed on stderr, in the
summary and in per_reaction.tsv; all outputs are still written); 1 other
failures (e.g. `ts --list` itself failed). Errors are one line on stderr.
"""

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "datagen"))
import plotlib  # noqa: E402
import chem  # noqa: E402  (xyz I/O, distances, HARTREE_KCAL)
from report import read_tsv  # noqa: E402

HARTREE_KCAL = 627.509474
assert chem.HARTREE_KCAL == HARTREE_KCAL
THRESHOLDS = (0.1, 0.2, 0.5)            # Angstrom, fractions of reactions below
PROG = "evaluate"
NEEDED_COLUMNS = ("id", "formula", "n_atoms", "e_ts", "split")


class EvalError(Exception):
    """A failure reported as one line on stderr with the given exit status."""

    def __init__(self, msg, status=2):
        Exception.__init__(self, msg)
        self.status = status


def one_line(s):
    return " ".join(str(s).split())


def warn(msg):
    sys.stderr.write("%s: %s\n" % (PROG, msg))
    sys.stderr.flush()


def write_text(path, text):
    """Writes text to path through a temporary file renamed into place."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ command line

class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise EvalError("%s (python3 tools/evaluate.py --help)" % message, 2)


def parse_args(argv):
    parts = __doc__.split("\n\n")
    p = Parser(prog="tools/evaluate.py", description=parts[0], epilog="\n\n".join(parts[2:]),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "data"), help="dataset directory (default: the repository's data/)")
    p.add_argument("--split", default="test", help="train, val, test or all (default test)")
    p.add_argument("--weights", help="denoiser weights (required unless --reference-as-candidate)")
    p.add_argument("-n", type=int, default=8, help="candidates per reaction (default 8)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--binary", default=os.path.join(ROOT, "oa_reactdiff"), help="oa_reactdiff binary (default: the repository's)")
    p.add_argument("--threads", type=int, help="threads for ts (and parallel xtb jobs)")
    p.add_argument("--seed", type=int, help="ts --seed (default: the binary's)")
    p.add_argument("--steps", type=int, help="ts --steps")
    p.add_argument("--resamplings", type=int, help="ts --resamplings")
    p.add_argument("--jump", type=int, help="ts --jump")
    p.add_argument("--confidence", help="confidence model: candidates ranked, frame 0 is the top one")
    p.add_argument("--solver", help="ts --solver (bridge models: ode, ddpm or ei)")
    p.add_argument("--nfe", type=int, help="ts --nfe (bridge models)")
    p.add_argument("--ode-method", help="ts --ode-method (bridge models: midpoint or euler)")
    p.add_argument("--xtb", action="store_true", help="GFN2-xTB energies of the first and best candidates")
    p.add_argument("--limit", type=int, help="only the first K reactions of the split (index order)")
    p.add_argument("--reference-as-candidate", action="store_true",
                   help="self-check: the candidates are copies of the reference TS")
    p.add_argument("--refine", action="store_true",
                   help="refine the first candidate and the R-P midpoint to verified TSs (GFN2-xTB; tools/refine.py)")
    p.add_argument("--refine-max-iter", type=int, default=50, help="--refine: P-RFO steps at most (default 50)")
    p.add_argument("--max-distance", type=float, default=20.0, help="garbage above this atom-atom distance (A, default 20)")
    p.add_argument("--min-distance", type=float, default=0.5, help="garbage below this atom-atom distance (A, default 0.5)")
    a = p.parse_args(argv)
    for name in ("n", "threads", "limit", "steps", "resamplings", "jump", "refine_max_iter"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise EvalError("--%s must be at least 1, got %d" % (name.replace("_", "-"), v))
    if not 0 <= a.min_distance < a.max_distance:
        raise EvalError("need 0 <= --min-distance < --max-distance")
    if a.reference_as_candidate and a.confidence:
        raise EvalError("--reference-as-candidate does not run the model; --confidence makes no sense with it")
    return a


# ------------------------------------------------------------------ inputs

def check_inputs(a):
    """Resolves and checks binary, weights, confidence, xtb and the dataset; returns the
    selected index rows."""
    a.binary = os.path.abspath(a.binary)
    if not os.path.isfile(a.binary) or not os.access(a.binary, os.X_OK):
        raise EvalError("%s: no such executable (build it with make, or give --binary)" % a.binary)
    if not a.reference_as_candidate:
        if not a.weights:
            raise EvalError("--weights is required (the denoiser to evaluate)")
        a.weights = os.path.abspath(a.weights)
        if not os.path.isfile(a.weights):
            raise EvalError("%s: weights file not found" % a.weights)
    elif a.weights:
        a.weights = os.path.abspath(a.weights)
    if a.confidence:
        a.confidence = os.path.abspath(a.confidence)
        if not os.path.isfile(a.confidence):
            raise EvalError("%s: confidence model not found" % a.confidence)
    for flag in ("xtb", "refine"):
        if getattr(a, flag):
            import xtbrun
            if not shutil.which(xtbrun.XTB):
                raise EvalError("--%s: the xtb program ('%s') is not installed or not on PATH" % (flag, xtbrun.XTB))
    a.data = os.path.abspath(a.data)
    index = os.path.join(a.data, "index.tsv")
    if not os.path.isfile(index):
        raise EvalError("%s: no such file (is --data a dataset directory?)" % index)
    rows = read_tsv(index)
    if not rows:
        raise EvalError("%s: no reactions" % index)
    missing = [c for c in NEEDED_COLUMNS if c not in rows[0]]
    if missing:
        raise EvalError("%s: missing column(s) %s" % (index, ", ".join(missing)))
    splits = sorted(set(r["split"] for r in rows))
    if a.split != "all":
        rows = [r for r in rows if r["split"] == a.split]
        if not rows:
            raise EvalError("%s: no reactions in split '%s' (splits: %s, or all)" % (index, a.split, ", ".join(splits)))
    if a.limit:
        rows = rows[:a.limit]
    bad = []
    for r in rows:
        if not re.match(r"^[A-Za-z0-9_.-]+$", r["id"]):
            raise EvalError("%s: reaction id '%s' is not a plain name" % (index, r["id"]))
        try:
            r["e_ts_ref"] = float(r["e_ts"])
        except ValueError:
            raise EvalError("%s: reaction %s: e_ts '%s' is not a number" % (index, r["id"], r["e_ts"]))
        d = os.path.join(a.data, "reactions", r["id"])
        for f in ("react.xyz", "prod.xyz", "ts.xyz"):
            if not os.path.isfile(os.path.join(d, f)):
                bad.append(os.path.join(d, f))
    if bad:
        raise EvalError("%s: missing (%d missing file(s) in the split)" % (bad[0], len(bad)))
    if re.search(r"\s", a.data):
        raise EvalError("%s: the reaction list format cannot hold paths with white space" % a.data)
    return rows


def candidate_settings(a):
    """What determines the candidates in OUT/ts (recorded in OUT/config.json)."""
    if a.reference_as_candidate:
        return {"mode": "reference-as-candidate", "n": a.n, "seed": a.seed}
    return {"mode": "model", "n": a.n, "seed": a.seed, "steps": a.steps, "resamplings": a.resamplings,
            "jump": a.jump, "solver": a.solver, "nfe": a.nfe, "ode_method": a.ode_method,
            "weights_sha256": file_sha256(a.weights),
            "confidence_sha256": file_sha256(a.confidence) if a.confidence else None}


def check_config(a, tsdir):
    cfg_path = os.path.join(a.out, "config.json")
    want = candidate_settings(a)
    have_candidates = os.path.isdir(tsdir) and any(f.endswith(".xyz") for f in os.listdir(tsdir))
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            have = json.load(f)
        diff = ["%s %s vs %s now" % (k, have.get(k), want.get(k)) for k in sorted(set(have) | set(want))
                if have.get(k) != want.get(k)]
        if diff and have_candidates:
            raise EvalError("%s holds candidates made with other settings (%s); use another --out or remove %s"
                            % (tsdir, "; ".join(diff), tsdir))
    elif have_candidates:
        raise EvalError("%s holds candidates but %s is missing (settings unknown); use another --out or remove %s"
                        % (tsdir, cfg_path, tsdir))
    write_text(cfg_path, json.dumps(want, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------ candidates

def random_rotation(rng):
    """Uniform random rotation matrix (from a unit quaternion)."""
    while True:
        q = [rng.gauss(0, 1) for _ in range(4)]
        s = math.sqrt(sum(v * v for v in q))
        if s > 1e-6:
            break
    w, x, y, z = (v / s for v in q)
    return [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]


def reference_copies(syms, xyz, n, seed, rid):
    """Frame 0: the reference itself; frames 1..n-1: rotated, translated, permuted (within
    elements) copies, the odd ones mirrored. Deterministic in (seed, id)."""
    rng = random.Random("%s/%s" % (seed, rid))
    frames = [(list(syms), [list(p) for p in xyz])]
    for k in range(1, n):
        rot = random_rotation(rng)
        shift = [rng.uniform(-5, 5) for _ in range(3)]
        mirror = -1.0 if k % 2 else 1.0
        moved = [[mirror * sum(rot[i][j] * p[j] for j in range(3)) + shift[i] for i in range(3)] for p in xyz]
        order = list(range(len(syms)))
        rng.shuffle(order)
        frames.append(([syms[i] for i in order], [moved[i] for i in order]))
    return frames


def write_reference_candidates(a, rows, tsdir):
    os.makedirs(tsdir, exist_ok=True)
    for r in rows:
        path = os.path.join(tsdir, r["id"] + ".xyz")
        if os.path.exists(path):
            continue
        syms, xyz, _ = chem.read_xyz(os.path.join(a.data, "reactions", r["id"], "ts.xyz"))
        text = []
        for k, (s, x) in enumerate(reference_copies(syms, xyz, a.n, a.seed, r["id"])):
            comment = ('Properties=species:S:1:pos:R:3 name="%s" sample=%d n_samples=%d reference_copy=T'
                       % (r["id"], k, a.n))
            text.append("%d\n%s\n" % (len(s), comment) + "".join(
                "%-2s %18.10f %18.10f %18.10f\n" % (e, p[0], p[1], p[2]) for e, p in zip(s, x)))
        write_text(path, "".join(text))
    return {}


BATCH_FAIL = re.compile(r"^oa_reactdiff: (\S+) \((.+):(\d+)\): (.*)$")


def run_model(a, rows, tsdir):
    """Writes the reaction list and runs ts --list; returns {id: error message} of the
    reactions whose ts run failed (as reported by the batch)."""
    list_path = os.path.join(a.out, "list.txt")
    lines = ["# %s split '%s' of %s: REACTANT PRODUCT NAME\n" % (PROG, a.split, a.data)]
    for r in rows:
        d = os.path.join(a.data, "reactions", r["id"])
        lines.append("%s %s %s\n" % (os.path.join(d, "react.xyz"), os.path.join(d, "prod.xyz"), r["id"]))
    write_text(list_path, "".join(lines))
    cmd = [a.binary, "ts", "--list", list_path, "--outdir", tsdir, "-n", str(a.n), "--weights", a.weights]
    for opt in ("seed", "steps", "resamplings", "jump", "threads", "confidence", "solver", "nfe", "ode_method"):
        v = getattr(a, opt)
        if v is not None:
            cmd += ["--" + opt.replace("_", "-"), str(v)]
    warn("running %s" % " ".join(cmd))
    failed = {}
    last = ""
    with open(os.path.join(a.out, "ts.log"), "a") as log:
        log.write("$ %s\n" % " ".join(cmd))
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            log.write(line)
            log.flush()
            sys.stderr.write(line)
            m = BATCH_FAIL.match(line.rstrip("\n"))
            if m:
                failed[m.group(1)] = m.group(4)
            if "UNTRAINED" not in line:
                last = line.strip()
        st = p.wait()
        log.write("exit status %d\n" % st)
    if st == 7:
        return failed
    if st != 0:
        raise EvalError("ts --list failed (exit status %d): %s" % (st, last or "no message"), 1)
    return failed


# ------------------------------------------------------------------ evaluation

def comment_fields(comment):
    return dict((m.group(1), m.group(2).strip('"'))
                for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)', comment))


def geometry_problem(xyz, dmin, dmax):
    """None for a sane geometry, else why it is garbage."""
    lo, hi = float("inf"), 0.0
    for i in range(len(xyz)):
        for j in range(i + 1, len(xyz)):
            d = chem.dist(xyz[i], xyz[j])
            lo, hi = min(lo, d), max(hi, d)
    if hi > dmax:
        return "garbage: atoms %.1f A apart (> %g)" % (hi, dmax)
    if lo < dmin:
        return "garbage: atoms %.2f A close (< %g)" % (lo, dmin)
    return None


def rmsd_frames(binary, cand, ref):
    """RMSD of each frame of cand to ref with `oa_reactdiff rmsd` (the same code path for
    the model's candidates and the self-check)."""
    p = subprocess.run([binary, "rmsd", cand, ref], capture_output=True, text=True)
    if p.returncode != 0:
        msg = [l for l in p.stderr.splitlines() if l.strip()]
        raise EvalError("rmsd failed (exit %d): %s" % (p.returncode, msg[-1] if msg else "no message"), 1)
    try:
        return [float(l) for l in p.stdout.split()]
    except ValueError:
        raise EvalError("rmsd printed something other than numbers: %r" % p.stdout[:200], 1)


def evaluate_reaction(a, r, tsdir, ts_failed):
    """Fills r with the RMSD results (status ok, ts_failed or rmsd_failed)."""
    rid = r["id"]
    cand = os.path.join(tsdir, rid + ".xyz")
    r.update(status="ok", message="", rmsd=[], frames=[], garbage=[])
    if not os.path.isfile(cand):
        r.update(status="ts_failed", message=ts_failed.get(rid, "no candidate file %s" % cand))
        return
    frames = chem.read_xyz_frames(cand)
    meta = comment_fields(frames[0][2]) if frames else {}
    if len(frames) != a.n or meta.get("n_samples") != str(a.n):
        raise EvalError("%s: %d frames, n_samples=%s, expected %d (stale candidates? remove %s)"
                        % (cand, len(frames), meta.get("n_samples"), a.n, tsdir))
    for opt in ("steps", "resamplings", "jump"):
        v = getattr(a, opt)
        if v is not None and not a.reference_as_candidate and meta.get(opt) != str(v):
            raise EvalError("%s: %s=%s, expected %d (stale candidates? remove %s)" % (cand, opt, meta.get(opt), v, tsdir))
    r["meta"] = meta
    try:
        vals = rmsd_frames(a.binary, cand, os.path.join(a.data, "reactions", rid, "ts.xyz"))
    except EvalError as e:
        r.update(status="rmsd_failed", message=str(e))
        return
    if len(vals) != len(frames) or not all(math.isfinite(v) for v in vals):
        r.update(status="rmsd_failed", message="rmsd gave %d values for %d frames" % (len(vals), len(frames)))
        return
    r["rmsd"] = vals
    r["frames"] = frames
    r["garbage"] = [geometry_problem(x, a.min_distance, a.max_distance) for _, x, _ in frames]
    r["best_frame"] = min(range(len(vals)), key=lambda k: (vals[k], k))


def midpoint_baseline(a, r, scratch):
    """r["rmsd_midpoint"]: RMSD to the reference TS of the guess without a model, the
    midpoint of R and P (P superimposed on R, atom i on atom i: the dataset keeps one atom
    order), measured like the candidates.  None, with a message, if it cannot be computed."""
    d = os.path.join(a.data, "reactions", r["id"])
    r["rmsd_midpoint"] = None
    try:
        syms, xr, _ = chem.read_xyz(os.path.join(d, "react.xyz"))
        syms_p, xp, _ = chem.read_xyz(os.path.join(d, "prod.xyz"))
        if syms_p != syms:
            raise ValueError("react.xyz and prod.xyz differ in atom order")
        xp = chem.superimpose(xr, xp)
        mid = [[0.5 * (u[k] + v[k]) for k in range(3)] for u, v in zip(xr, xp)]
        path = os.path.join(scratch, r["id"] + ".xyz")
        write_text(path, chem.xyz_text(syms, mid, "midpoint of react.xyz and prod.xyz (superimposed)"))
        r["rmsd_midpoint"] = rmsd_frames(a.binary, path, os.path.join(d, "ts.xyz"))[0]
    except (OSError, ValueError, IndexError, EvalError) as e:
        r["message"] = r["message"] or "midpoint baseline: %s" % one_line(e)


def xtb_energies(a, rows):
    """Single points of the first and best frames of the evaluated reactions; fills
    r['xtb'] = {'first': (energy or None, status), 'best': ...}."""
    import xtbrun
    jobs = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        for k in {0, r["best_frame"]}:
            if r["garbage"][k]:
                jobs[(r["id"], k)] = None
            else:
                syms, xyz, _ = r["frames"][k]
                jobs[(r["id"], k)] = (syms, xyz)

    def one(job):
        if job is None:
            return None
        try:
            return (xtbrun.singlepoint(*job), "ok")
        except xtbrun.XtbError as e:
            msg = one_line(e)
            return (None, msg if msg.startswith("xtb failed") else "xtb failed: " + msg)

    keys = sorted(k for k in jobs if jobs[k] is not None)
    with ThreadPoolExecutor(max_workers=a.threads or 1) as pool:
        results = dict(zip(keys, pool.map(one, [jobs[k] for k in keys])))
    for r in rows:
        if r["status"] != "ok":
            continue
        out = {}
        for which, k in (("first", 0), ("best", r["best_frame"])):
            if r["garbage"][k]:
                out[which] = (None, r["garbage"][k])
            else:
                out[which] = results[(r["id"], k)]
        r["xtb"] = out


# ------------------------------------------------------------------ refinement (--refine)

REFINE_GUESSES = ("first", "midpoint")     # frame 0 and frame 1 of OUT/refine/ID.xyz
REFINE_WITHIN = 0.1                        # Angstrom: a verified TS this close is the reference's


def refine_reaction(a, r, refdir, mids):
    """r["refine"] = {guess: {verdict, rmsd, n_grad, n_hess, seconds, ...}} from
    tools/refine.py on the first candidate and the midpoint (run unless OUT/refine/ID.xyz
    exists); r["refine_error"] when it could not be run or read."""
    d = os.path.join(a.data, "reactions", r["id"])
    out = os.path.join(refdir, r["id"] + ".xyz")
    if not os.path.isfile(out):
        if r.get("rmsd_midpoint") is None:
            r["refine_error"] = "no midpoint (%s)" % (r["message"] or "not computed")
            return
        syms, xyz, _ = r["frames"][0]
        ms, mx, _ = chem.read_xyz(os.path.join(mids, r["id"] + ".xyz"))
        inp = os.path.join(refdir, r["id"] + ".in.xyz")
        write_text(inp, chem.xyz_text(syms, xyz, "first candidate") + chem.xyz_text(ms, mx, "R-P midpoint"))
        cmd = [sys.executable, os.path.join(HERE, "refine.py"), os.path.join(d, "react.xyz"),
               os.path.join(d, "prod.xyz"), inp, "-o", out, "--max-iter", str(a.refine_max_iter)]
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        os.unlink(inp)
        if p.returncode != 0:
            msg = [l for l in p.stderr.splitlines() if l.strip()]
            r["refine_error"] = "refine.py exit %d: %s" % (p.returncode, msg[-1] if msg else "no message")
            return
    frames = chem.read_xyz_frames(out)
    if len(frames) != len(REFINE_GUESSES):
        r["refine_error"] = "%s: %d frames, expected %d (remove it to redo)" % (out, len(frames), len(REFINE_GUESSES))
        return
    try:
        rmsds = rmsd_frames(a.binary, out, os.path.join(d, "ts.xyz"))
    except EvalError as e:
        r["refine_error"] = str(e)
        return
    r["refine"] = {}
    for g, (_, _, comment), v in zip(REFINE_GUESSES, frames, rmsds):
        f = comment_fields(comment)
        r["refine"][g] = {"verdict": f["verdict"], "rmsd": v, "reason": f.get("reason", ""),
                          "n_grad": int(f["n_grad"]), "n_hess": int(f["n_hess"]),
                          "n_opt_grad": int(f["n_opt_grad"]), "seconds": float(f["seconds"])}


def refine_all(a, rows):
    refdir = os.path.join(a.out, "refine")
    os.makedirs(refdir, exist_ok=True)
    todo = [r for r in rows if r["status"] == "ok"]
    mids = os.path.join(a.out, "midpoint")
    done = [0]

    def one(r):
        refine_reaction(a, r, refdir, mids)
        done[0] += 1
        x = r.get("refine")
        warn("refine %s (%d of %d): %s" % (r["id"], done[0], len(todo), r["refine_error"] if x is None else ", ".join(
            "%s %s (%.3f A, %d Hessians, %d gradients, %.1f s)" % (g, x[g]["verdict"], x[g]["rmsd"], x[g]["n_hess"],
                                                                   x[g]["n_grad"], x[g]["seconds"])
            for g in REFINE_GUESSES)))

    with ThreadPoolExecutor(max_workers=a.threads or 1) as pool:
        list(pool.map(one, todo))


def refine_summary(rows):
    """summary.json's "refine": per guess, over the reactions whose refinement ran."""
    ran = [r for r in rows if r.get("refine")]
    s = {"reactions": len(ran), "within_A": REFINE_WITHIN,
         "not_run": [{"id": r["id"], "why": r.get("refine_error") or r["status"]} for r in rows if not r.get("refine")]}
    for g in REFINE_GUESSES:
        xs = [r["refine"][g] for r in ran]
        ver = [x for x in xs if x["verdict"] == "verified"]
        near = [x for x in ver if x["rmsd"] < REFINE_WITHIN]
        stages = {}
        for x in xs:
            stages[x["verdict"]] = stages.get(x["verdict"], 0) + 1
        s[g] = {"verified": len(ver), "within": len(near),
                "verified_fraction": len(ver) / len(xs) if xs else None,
                "within_fraction": len(near) / len(xs) if xs else None,
                "verdicts": stages,
                "median_rmsd_verified": stats([x["rmsd"] for x in ver])["median"]}
        for k in ("n_hess", "n_grad", "seconds"):
            s[g]["median_" + k] = stats([x[k] for x in xs])["median"]
            s[g]["median_%s_verified" % k] = stats([x[k] for x in ver])["median"]
    return s


def refine_markdown(s):
    f = s["refine"]
    n = f["reactions"]
    first = "reference TS" if s["mode"] == "reference-as-candidate" else "first candidate"
    out = ["**Refinement to a verified TS** (GFN2-xTB P-RFO, frequency test, mode descent to R and P; "
           "tools/refine.py on %d reactions)" % n, "",
           "| | from the %s | from the R-P midpoint |" % first, "|---|---|---|"]

    def row(label, cell):
        out.append("| %s | %s | %s |" % (label, cell(f["first"]), cell(f["midpoint"])))

    row("search ends at a verified TS", lambda x: "%s (%d)" % (pct(x["verified_fraction"]), x["verified"]))
    row("verified TS within %g Å RMSD of the reference TS" % f["within_A"],
        lambda x: "%s (%d)" % (pct(x["within_fraction"]), x["within"]))
    row("median RMSD of the verified TSs to the reference (Å)", lambda x: fmt(x["median_rmsd_verified"]))
    row("median exact Hessians per search (all / verified)",
        lambda x: "%s / %s" % (fmt(x["median_n_hess"], "%g"), fmt(x["median_n_hess_verified"], "%g")))
    row("median gradients per search (all / verified)",
        lambda x: "%s / %s" % (fmt(x["median_n_grad"], "%g"), fmt(x["median_n_grad_verified"], "%g")))
    row("median wall time per search, s (all / verified)",
        lambda x: "%s / %s" % (fmt(x["median_seconds"], "%.1f"), fmt(x["median_seconds_verified"], "%.1f")))
    row("verdicts", lambda x: ", ".join("%s %d" % kv for kv in sorted(x["verdicts"].items())))
    out.append("")
    out.append("A search: P-RFO (at most the given steps; exact Hessian every 4th, Bofill updates between), "
               "frequency test and the two descents; its gradients and Hessians are the P-RFO's, its wall "
               "time includes the descents. Percentages are of the %d reactions." % n)
    if f["not_run"]:
        out.append("Not refined: %s." % "; ".join("%s (%s)" % (x["id"], x["why"]) for x in f["not_run"]))
    return "\n".join(out) + "\n"


def refine_tsv(rows):
    head = ["id"]
    for g in REFINE_GUESSES:
        head += ["%s_%s" % (g, k) for k in ("verdict", "rmsd", "n_hess", "n_grad", "n_opt_grad", "seconds", "reason")]
    out = ["\t".join(head)]
    for r in rows:
        x = r.get("refine")
        cells = [r["id"]]
        for g in REFINE_GUESSES:
            if x is None:
                cells += ["NA"] * 6 + [r.get("refine_error") or r["status"]]
            else:
                y = x[g]
                cells += [y["verdict"], "%.6f" % y["rmsd"], y["n_hess"], y["n_grad"], y["n_opt_grad"],
                          "%.1f" % y["seconds"], y["reason"] or "-"]
        out.append("\t".join(one_line(c) for c in cells))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ summary

def stats(values):
    if not values:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "mean": statistics.fmean(values),
            "min": min(values), "max": max(values)}


def rmsd_stats(values):
    s = stats(values)
    s["fraction_below"] = dict(("%g" % t, (sum(1 for v in values if v < t) / len(values)) if values else None)
                               for t in THRESHOLDS)
    return s


def err_kcal(e, ref):
    return None if e is None else (e - ref) * HARTREE_KCAL


def summarise(a, rows):
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    meta = ok[0]["meta"] if ok else {}
    n_cand = sum(len(r["rmsd"]) for r in ok)
    n_garbage = sum(1 for r in ok for g in r["garbage"] if g)
    s = {
        "split": a.split, "data": a.data, "n_candidates": a.n,
        "first_candidate": ("the reference itself" if a.reference_as_candidate else
                            "top-ranked by the confidence model" if a.confidence else "first draw (unranked)"),
        "mode": "reference-as-candidate" if a.reference_as_candidate else "model",
        "settings": {"weights": a.weights, "confidence": a.confidence, "binary": a.binary,
                     "seed": a.seed, "steps": meta.get("steps", a.steps),
                     "resamplings": meta.get("resamplings", a.resamplings), "jump": meta.get("jump", a.jump),
                     "trained": meta.get("trained"), "weights_crc32": meta.get("weights_crc32"),
                     "precision": meta.get("precision"), "program": meta.get("program"),
                     "method": meta.get("method", "diffusion"), "solver": meta.get("solver"), "nfe": meta.get("nfe"),
                     "ode_method": meta.get("ode_method"),
                     "max_distance": a.max_distance, "min_distance": a.min_distance},
        "counts": {"reactions": len(rows), "evaluated": len(ok), "failed": len(failed),
                   "candidates": n_cand, "garbage_candidates": n_garbage},
        "failed": [{"id": r["id"], "status": r["status"], "message": r["message"]} for r in failed],
        "rmsd": {"first": rmsd_stats([r["rmsd"][0] for r in ok]),
                 "best": rmsd_stats([r["rmsd"][r["best_frame"]] for r in ok]),
                 "midpoint": rmsd_stats([r["rmsd_midpoint"] for r in ok if r.get("rmsd_midpoint") is not None])},
    }
    both = [r for r in ok if r.get("rmsd_midpoint") is not None]
    s["first_closer_than_midpoint"] = (sum(1 for r in both if r["rmsd"][0] < r["rmsd_midpoint"]) / len(both)
                                       if both else None)
    if a.xtb:
        s["energy"] = {}
        for which in ("first", "best"):
            errs = [abs(err_kcal(r["xtb"][which][0], r["e_ts_ref"])) for r in ok if r["xtb"][which][0] is not None]
            fails = [{"id": r["id"], "why": r["xtb"][which][1]} for r in ok if r["xtb"][which][0] is None]
            e = stats(errs)
            e = {"n_ok": e["n"], "n_failed": len(fails), "median_abs_kcal": e["median"],
                 "mean_abs_kcal": e["mean"], "max_abs_kcal": e["max"], "failures": fails}
            s["energy"][which] = e
    return s


def fmt(v, spec="%.3f"):
    return "-" if v is None else spec % v


def pct(v):
    return "-" if v is None else "%.1f%%" % (100.0 * v)


def markdown(s):
    st = s["settings"]
    c = s["counts"]
    if s["mode"] == "reference-as-candidate":
        model = "self-check: the candidates are copies of the reference TS"
    elif st.get("method") == "bridge":
        model = "weights `%s`%s, React-OT bridge, solver %s%s, nfe %s, %s %s" % (
            os.path.basename(st["weights"]), " (UNTRAINED)" if st["trained"] == "F" else "", st["solver"],
            " " + st["ode_method"] if st.get("ode_method") else "", st["nfe"], st["program"], st["precision"])
    else:
        model = "weights `%s`%s, %s steps, %s resamplings, jump %s, seed %s, %s %s" % (
            os.path.basename(st["weights"]), " (UNTRAINED)" if st["trained"] == "F" else "",
            st["steps"], st["resamplings"], st["jump"], "default" if st["seed"] is None else st["seed"],
            st["program"], st["precision"])
    out = ["**TS generation on the %s split** (%d of %d reactions evaluated; N = %d candidates each; %s)"
           % (s["split"], c["evaluated"], c["reactions"], s["n_candidates"], model), ""]
    rf, rb = s["rmsd"]["first"], s["rmsd"]["best"]
    out.append("| | first candidate | best of %d (oracle) |" % s["n_candidates"])
    out.append("|---|---|---|")
    out.append("| median RMSD to the reference TS (Å) | %s | %s |" % (fmt(rf["median"]), fmt(rb["median"])))
    out.append("| mean RMSD (Å) | %s | %s |" % (fmt(rf["mean"]), fmt(rb["mean"])))
    for t in THRESHOLDS:
        k = "%g" % t
        out.append("| RMSD < %s Å | %s | %s |" % (k, pct(rf["fraction_below"][k]), pct(rb["fraction_below"][k])))
    if "energy" in s:
        ef, eb = s["energy"]["first"], s["energy"]["best"]
        out.append("| median \\|E − E(TS)\\|, GFN2-xTB (kcal/mol) | %s | %s |"
                   % (fmt(ef["median_abs_kcal"], "%.2f"), fmt(eb["median_abs_kcal"], "%.2f")))
        out.append("| mean \\|E − E(TS)\\| (kcal/mol) | %s | %s |"
                   % (fmt(ef["mean_abs_kcal"], "%.2f"), fmt(eb["mean_abs_kcal"], "%.2f")))
        out.append("| energy failures (garbage geometry or xtb failed) | %d of %d | %d of %d |"
                   % (ef["n_failed"], c["evaluated"], eb["n_failed"], c["evaluated"]))
    out.append("")
    rm = s["rmsd"]["midpoint"]
    out.append("Without a model: the midpoint of R and P (P superimposed on R) is at median %s Å, mean %s Å "
               "from the reference TS; below 0.1 / 0.2 / 0.5 Å: %s / %s / %s (%d reactions)."
               % (fmt(rm["median"]), fmt(rm["mean"]), pct(rm["fraction_below"]["0.1"]),
                  pct(rm["fraction_below"]["0.2"]), pct(rm["fraction_below"]["0.5"]), rm["n"]))
    if s.get("first_closer_than_midpoint") is not None:
        out.append("The first candidate is closer to the reference TS than the midpoint on %s of the reactions."
                   % pct(s["first_closer_than_midpoint"]))
    out.append("")
    out.append("First candidate: %s. Best: the lowest RMSD of the N (needs the reference). "
               "Garbage candidates (atoms closer than %g Å or farther than %g Å apart): %d of %d."
               % (s["first_candidate"], st["min_distance"], st["max_distance"], c["garbage_candidates"], c["candidates"]))
    if s["failed"]:
        out.append("")
        out.append("**%d reaction(s) failed**: %s." % (c["failed"], "; ".join(
            "%s (%s: %s)" % (f["id"], f["status"], f["message"]) for f in s["failed"])))
    return "\n".join(out) + "\n"


def tsv(a, rows):
    head = ["id", "formula", "n_atoms", "status", "n_candidates", "rmsd_first", "rmsd_best", "best_frame",
            "rmsd_all", "n_garbage", "e_ts_ref", "e_first", "e_best", "err_first_kcal", "err_best_kcal",
            "energy_first", "energy_best", "message", "rmsd_midpoint"]
    out = ["\t".join(head)]
    for r in rows:
        ok = r["status"] == "ok"
        x = r.get("xtb", {})
        ef, sf = x.get("first", (None, "not run"))
        eb, sb = x.get("best", (None, "not run"))
        if not ok:
            sf = sb = "-"
        out.append("\t".join(one_line(v) for v in [
            r["id"], r["formula"], r["n_atoms"], r["status"], len(r["rmsd"]) if ok else 0,
            "%.8f" % r["rmsd"][0] if ok else "NA", "%.8f" % r["rmsd"][r["best_frame"]] if ok else "NA",
            r["best_frame"] if ok else "NA", ",".join("%.8f" % v for v in r["rmsd"]) if ok else "NA",
            sum(1 for g in r["garbage"] if g) if ok else "NA", "%.8f" % r["e_ts_ref"],
            "NA" if ef is None else "%.8f" % ef, "NA" if eb is None else "%.8f" % eb,
            "NA" if ef is None else "%.4f" % err_kcal(ef, r["e_ts_ref"]),
            "NA" if eb is None else "%.4f" % err_kcal(eb, r["e_ts_ref"]),
            sf, sb, r["message"] or "-",
            "%.8f" % r["rmsd_midpoint"] if ok and r.get("rmsd_midpoint") is not None else "NA"]))
    return "\n".join(out) + "\n"


def nice_max(v):
    """Smallest of 0.5, 1, 2, 5, 10, 20, 50, ... that is >= v."""
    for e in range(-1, 12):
        for mant in (1, 2, 5):
            x = mant * 10.0 ** e
            if x >= 0.5 and x >= v:
                return x
    return v


def plot(path, s, rows):
    ok = [r for r in rows if r["status"] == "ok"]
    first = [r["rmsd"][0] for r in ok]
    best = [r["rmsd"][r["best_frame"]] for r in ok]
    xmax = nice_max(max(first + best + [0.0]))
    cv = plotlib.Canvas(900, 520)
    cv.text(20, 12, "CDF OF RMSD TO THE REFERENCE TS: %s SPLIT, %d REACTIONS, N=%d"
            % (s["split"], len(ok), s["n_candidates"]))
    plotlib.cdf_plot(cv, 90, 70, 770, 370,
                     [(best, plotlib.BLUE, "BEST OF %d" % s["n_candidates"], 6), (first, plotlib.ORANGE, "FIRST", 2)],
                     xmax, [xmax * k / 5.0 for k in range(6)], marks=THRESHOLDS,
                     xlabel="RMSD (A)", ylabel="FRACTION")
    cv.save(path)


# ------------------------------------------------------------------ main

def main(argv):
    a = parse_args(argv)
    rows = check_inputs(a)
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    tsdir = os.path.join(a.out, "ts")
    check_config(a, tsdir)
    if a.reference_as_candidate:
        ts_failed = write_reference_candidates(a, rows, tsdir)
    else:
        ts_failed = run_model(a, rows, tsdir)
    mids = os.path.join(a.out, "midpoint")
    os.makedirs(mids, exist_ok=True)
    for r in rows:
        evaluate_reaction(a, r, tsdir, ts_failed)
        if r["status"] == "ok":
            midpoint_baseline(a, r, mids)
    if a.xtb:
        xtb_energies(a, rows)
    if a.refine:
        refine_all(a, rows)
    s = summarise(a, rows)
    if a.refine:
        s["refine"] = refine_summary(rows)
        write_text(os.path.join(a.out, "refine.tsv"), refine_tsv(rows))
    write_text(os.path.join(a.out, "per_reaction.tsv"), tsv(a, rows))
    write_text(os.path.join(a.out, "summary.json"), json.dumps(s, indent=1) + "\n")
    md = markdown(s) + ("\n" + refine_markdown(s) if a.refine else "")
    write_text(os.path.join(a.out, "summary.md"), md)
    plot(os.path.join(a.out, "rmsd.png"), s, rows)
    sys.stdout.write(md)
    c = s["counts"]
    if c["garbage_candidates"]:
        warn("%d of %d candidates are garbage (atoms closer than %g A or farther than %g A apart)"
             % (c["garbage_candidates"], c["candidates"], a.min_distance, a.max_distance))
    for which, e in sorted(s.get("energy", {}).items(), reverse=True):
        if e["n_failed"]:
            warn("energies: %d of %d %s candidates failed (garbage geometry or xtb failed; see per_reaction.tsv)"
                 % (e["n_failed"], e["n_failed"] + e["n_ok"], which))
    refine_failed = [x for x in s.get("refine", {}).get("not_run", []) if x["why"] != "ts_failed"
                     and x["why"] != "rmsd_failed"]
    for x in refine_failed:
        warn("%s: refine: %s" % (x["id"], x["why"]))
    if s["failed"]:
        for f in s["failed"]:
            warn("%s: %s: %s" % (f["id"], f["status"], f["message"]))
        warn("%d of %d reactions failed (listed above; outputs written to %s)"
             % (len(s["failed"]), len(rows), a.out))
        return 3
    if refine_failed:
        warn("%d reaction(s) not refined (listed above; outputs written to %s)" % (len(refine_failed), a.out))
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except EvalError as e:
        warn(one_line(e))
        sys.exit(e.status)
    except OSError as e:
        warn(one_line(e))
        sys.exit(1)
    except KeyboardInterrupt:
        warn("interrupted")
        sys.exit(130)
