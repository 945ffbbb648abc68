#!/usr/bin/env python3
"""Refines transition-state candidates into verified GFN2-xTB saddle points
(Python standard library plus the xtb program).

usage: python3 tools/refine.py R.xyz P.xyz CANDIDATES.xyz -o OUT.xyz
           [--charge C] [--uhf U] [--max-iter N] [--hess-every K] [--workers W] [-v]

R.xyz, P.xyz and every frame of CANDIDATES.xyz (e.g. the output of `oa_reactdiff ts`)
hold the same atoms in the same order. For each candidate, with the dataset generator's
code (tools/datagen: tssearch.search_and_verify):
  ts    P-RFO saddle search (Cartesian, translations and rotations projected out; xtb's
        exact Hessian every K steps, Bofill updates between, and always at the end),
        following the mode that best overlaps the R->P displacement; converged when
        max|g| < 3e-4 and rms g < 2e-4 Eh/bohr with one negative Hessian eigenvalue;
  freq  exactly one harmonic frequency below -50 cm^-1 and none other below -20 cm^-1;
  irc   displaced +/-0.2 A (largest atom) along that mode and minimised with xtb, one
        side must have exactly R's bonds (covalent radii x 1.25), the other P's bonds
        (up to isomorphism: an equivalent atom may take part).
A candidate passing all three is verdict=verified, else verdict=failed:<stage> (ts, freq,
irc, or xtb when xtb itself failed, e.g. no SCF convergence on a broken geometry).
--max-iter 0: no search, the candidate is checked as it is (tools/datagen/verify.py's
test): it must be a stationary point (max|g| < 9e-4 Eh/bohr, else failed:stationary), then
freq and irc. A search started at a minimum (the reactant) may climb to the TS and pass;
the candidate as it is cannot.

OUT.xyz: one frame per candidate, in candidate order: the saddle point (or the last
geometry the search reached; the candidate itself after failed:xtb), comment line `Properties=species:S:1:pos:R:3 candidate=<i>
verdict=... energy=<Eh> imag_freq=<cm^-1> n_imag=<k> barrier_fwd=<kcal/mol>
barrier_rev=<kcal/mol> n_grad=<g> n_hess=<h> n_opt_grad=<o> seconds=<s> reason="..."`.
imag_freq is the lowest harmonic frequency at the final geometry (negative: imaginary;
NA when no frequency test ran: the search did not converge); n_imag counts
the frequencies below -20 cm^-1. Barriers are E(geometry) - E(R.xyz) and - E(P.xyz), with R
and P as given (single points). n_grad and n_hess count the search's gradients and exact
Hessians; n_opt_grad the geometry steps of the two minimisations of the irc stage (xtb's
count). seconds is the candidate's wall time. stdout gets the same fields, one line per
candidate; progress goes to stderr.

Exit status: 0 OUT.xyz written (whatever the verdicts); 1 file I/O; 2 command line, or xtb
not installed; 3 bad input data; 6 xtb failed on R.xyz or P.xyz. Errors are one line on
stderr. OUT.xyz is written through a temporary file in its directory, renamed when done.
Environment: XTB (the xtb binary), DATAGEN_XTB_TIMEOUT (seconds per xtb call, 600).
"""

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "datagen"))
import chem  # noqa: E402
import tssearch  # noqa: E402
import xtbrun  # noqa: E402

PROG = "refine"


class RefineError(Exception):
    """A failure reported as one line on stderr with the given exit status."""

    def __init__(self, msg, status):
        Exception.__init__(self, msg)
        self.status = status


def say(msg):
    sys.stderr.write("%s: %s\n" % (PROG, msg))
    sys.stderr.flush()


# ------------------------------------------------------------------ inputs

def usage_error(message):
    raise RefineError("%s (python3 tools/refine.py --help)" % message, 2)


def parse_args(argv):
    intro, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(prog="tools/refine.py", description=intro, epilog=rest.partition("\n\n")[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = usage_error      # one line and exit status 2, not argparse's usage block
    p.add_argument("reactant", metavar="R.xyz")
    p.add_argument("product", metavar="P.xyz")
    p.add_argument("candidates", metavar="CANDIDATES.xyz")
    p.add_argument("-o", "--out", required=True, metavar="OUT.xyz", help="refined frames (extended XYZ)")
    p.add_argument("--charge", type=int, default=0, help="molecular charge (default 0)")
    p.add_argument("--uhf", type=int, default=0, help="number of unpaired electrons (default 0)")
    p.add_argument("--max-iter", type=int, default=50,
                   help="P-RFO steps at most (default 50; 0: no search, check the candidates as they are)")
    p.add_argument("--hess-every", type=int, default=4,
                   help="exact xtb Hessian every K P-RFO steps, Bofill updates between (default 4; 1: always)")
    p.add_argument("--workers", type=int, default=1, help="candidates refined in parallel (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="one stderr line per P-RFO step")
    a = p.parse_args(argv)
    if a.max_iter < 0:
        raise RefineError("--max-iter must be at least 0, got %d" % a.max_iter, 2)
    for name in ("hess_every", "workers"):
        if getattr(a, name) < 1:
            raise RefineError("--%s must be at least 1, got %d" % (name.replace("_", "-"), getattr(a, name)), 2)
    if a.uhf < 0:
        raise RefineError("--uhf must be at least 0, got %d" % a.uhf, 2)
    return a


def read_frames(path):
    """The frames of an xyz file as [(symbols, coords)], checked: one-line errors naming
    the file for what cannot be read or is not a sane geometry."""
    try:
        frames = chem.read_xyz_frames(path)
    except OSError as e:
        raise RefineError("%s: cannot open: %s" % (path, e.strerror or e), 1)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        if "truncated" in str(e):
            raise RefineError("%s: truncated: fewer atom lines than the atom count" % path, 3)
        raise RefineError("%s: not an xyz file (atom count, element and x y z per line expected)" % path, 3)
    if not frames:
        raise RefineError("%s: empty file (no atoms)" % path, 3)
    out = []
    for k, (syms, xyz, _) in enumerate(frames):
        where = "%s: frame %d" % (path, k) if len(frames) > 1 else path
        if not syms or len(xyz) != len(syms) or any(len(p) != 3 for p in xyz):
            raise RefineError("%s: truncated or empty frame" % where, 3)
        for i, s in enumerate(syms):
            if s not in chem.MASS:
                raise RefineError("%s: atom %d is '%s'; refine knows %s" % (where, i + 1, s, ", ".join(chem.MASS)), 3)
        if not all(math.isfinite(c) and abs(c) < 1e6 for p in xyz for c in p):
            raise RefineError("%s: a coordinate is not finite or beyond 1e6 Angstrom" % where, 3)
        out.append((syms, xyz))
    return out


def load_inputs(a):
    """(syms, R coords, P coords, [candidate coords]) after checking the atom orders."""
    (syms, xr), = read_frames(a.reactant)[:1]
    (sp, xp), = read_frames(a.product)[:1]
    cands = read_frames(a.candidates)
    for path, s2, k in [(a.product, sp, None)] + [(a.candidates, s, k) for k, (s, _) in enumerate(cands)]:
        where = path if k is None or len(cands) == 1 else "%s: frame %d" % (path, k)
        if len(s2) != len(syms):
            raise RefineError("%s: %d atoms, %s has %d (R, P and the candidates need the same atoms in the same order)"
                              % (where, len(s2), a.reactant, len(syms)), 3)
        for i, (u, v) in enumerate(zip(s2, syms)):
            if u != v:
                raise RefineError("%s: atom %d is %s, %s has %s there (R, P and the candidates need the same atom order)"
                                  % (where, i + 1, u, a.reactant, v), 3)
    if chem.bonds_from_xyz(syms, xr) == chem.bonds_from_xyz(syms, xp):
        raise RefineError("%s and %s have the same bonds: the mode-descent check cannot tell R from P"
                          % (a.reactant, a.product), 3)
    return syms, xr, xp, [x for _, x in cands]


# ------------------------------------------------------------------ one candidate

def rp_guide(cand, xr, xp):
    """R->P displacement in the candidate's frame (R and P each superimposed on it): the
    direction the P-RFO's first uphill mode should follow."""
    r = chem.superimpose(cand, xr)
    p = chem.superimpose(cand, xp)
    return [(b - a) / chem.BOHR for pa, pb in zip(r, p) for a, b in zip(pa, pb)]


class StepLog:
    """prfo's log: prints each step to stderr as it is appended."""

    def __init__(self, label):
        self.label = label

    def append(self, item):
        it, e, gmax, nneg, trust = item
        say("%s: P-RFO step %d: E %.6f Eh, max|g| %.1e, %d negative, trust %.2f bohr"
            % (self.label, it, e, gmax, nneg, trust))


def refine_one(job):
    """Refines one candidate; returns a dict of the frame's fields (runs in a worker)."""
    i, syms, cand, xr, xp, rb, ph, e_r, e_p, opt = job
    xtbrun.set_charge(opt["charge"], opt["uhf"])
    t0 = time.time()
    c0 = dict(xtbrun.STATS)
    out = {"candidate": i, "coords": cand, "energy": None, "freqs": None, "reason": ""}
    try:
        if opt["max_iter"] == 0:
            sv = tssearch.verify_as_given(syms, cand, rb, ph)
        else:
            sv = tssearch.search_and_verify(syms, cand, rb, ph, guide=rp_guide(cand, xr, xp),
                                            hess_every=opt["hess_every"], max_iter=opt["max_iter"],
                                            log=StepLog("candidate %d" % i) if opt["verbose"] else None)
        res = sv["prfo"]
        if "coords" in res:
            out.update(coords=res["coords"], energy=res["energy"])
        if sv["verify"] is not None:
            out["freqs"] = sv["verify"]["freqs"]
        out["verdict"] = "verified" if sv["ok"] else "failed:" + sv["stage"]
        out["reason"] = sv["reason"] + ("; " + res["reason"] if res.get("reason") else "")
    except xtbrun.XtbError as e:
        why = "xtb failed: %s" % e.detail if e.detail else str(e)
        out.update(verdict="failed:xtb", reason=" ".join(why.split()))
    except ValueError as e:     # xtb's files unreadable, e.g. '*****' for a number past its format
        out.update(verdict="failed:xtb", reason="xtb output unreadable: %s" % " ".join(str(e).split())[:200])
    out["n_grad"] = xtbrun.STATS["grad"] - c0["grad"]
    out["n_hess"] = xtbrun.STATS["hess"] - c0["hess"]
    out["n_opt_grad"] = xtbrun.STATS["opt_cycles"] - c0["opt_cycles"]
    out["seconds"] = time.time() - t0
    if out["energy"] is not None:
        out["barrier_fwd"] = (out["energy"] - e_r) * chem.HARTREE_KCAL
        out["barrier_rev"] = (out["energy"] - e_p) * chem.HARTREE_KCAL
    return out


def fields(r):
    """The key=value fields of a result (comment line and stdout)."""
    def num(v, spec):
        return "NA" if v is None else spec % v
    fs = r["freqs"]
    return ("candidate=%d verdict=%s energy=%s imag_freq=%s n_imag=%s barrier_fwd=%s barrier_rev=%s "
            "n_grad=%d n_hess=%d n_opt_grad=%d seconds=%.1f reason=\"%s\"" % (
                r["candidate"], r["verdict"], num(r["energy"], "%.8f"), num(fs[0] if fs else None, "%.1f"),
                "NA" if fs is None else sum(1 for f in fs if f < tssearch.IMAG_OTHER),
                num(r.get("barrier_fwd"), "%.2f"), num(r.get("barrier_rev"), "%.2f"),
                r["n_grad"], r["n_hess"], r["n_opt_grad"], r["seconds"], r["reason"].replace('"', "'")))


def frame_text(syms, r, program_fields):
    head = "Properties=species:S:1:pos:R:3 %s %s" % (fields(r), program_fields)
    return "%d\n%s\n" % (len(syms), head) + "".join(
        "%-2s %18.10f %18.10f %18.10f\n" % (s, p[0], p[1], p[2]) for s, p in zip(syms, r["coords"]))


# ------------------------------------------------------------------ main

def open_output(path):
    """A temporary file beside path (created now, so an unwritable target fails before any
    work); returns (fd, temporary path)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        return tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=d)
    except OSError as e:
        raise RefineError("%s: cannot write: %s" % (path, e.strerror or e), 1)


def reference_energy(syms, xyz, path):
    try:
        return xtbrun.singlepoint(syms, xyz)
    except xtbrun.XtbError as e:
        raise RefineError("%s: xtb single point failed: %s" % (path, " ".join(str(e).split())), 6)


def run(a):
    syms, xr, xp, cands = load_inputs(a)
    if not shutil.which(xtbrun.XTB):
        raise RefineError("the xtb program ('%s') is not installed or not on PATH (Debian: apt-get install xtb; "
                          "or set XTB=/path/to/xtb)" % xtbrun.XTB, 2)
    xtbrun.set_charge(a.charge, a.uhf)
    fd, tmp = open_output(a.out)
    try:
        e_r = reference_energy(syms, xr, a.reactant)
        e_p = reference_energy(syms, xp, a.product)
        rb = chem.bonds_from_xyz(syms, xr)
        ph = chem.graph_hash(syms, chem.bonds_from_xyz(syms, xp))
        opt = {"charge": a.charge, "uhf": a.uhf, "max_iter": a.max_iter, "hess_every": a.hess_every,
               "verbose": a.verbose}
        jobs = [(i, syms, c, xr, xp, rb, ph, e_r, e_p, opt) for i, c in enumerate(cands)]
        say("%d candidate(s), %d atoms, %d worker(s); E(R) %.6f Eh, E(P) %.6f Eh"
            % (len(jobs), len(syms), min(a.workers, len(jobs)), e_r, e_p))
        results = [None] * len(jobs)

        def done(r):
            results[r["candidate"]] = r
            say("candidate %d (%d of %d done): %s, %d gradients, %d Hessians, %.1f s%s"
                % (r["candidate"], sum(1 for x in results if x), len(jobs), r["verdict"], r["n_grad"],
                   r["n_hess"], r["seconds"], (" (%s)" % r["reason"]) if r["reason"] else ""))

        if a.workers == 1 or len(jobs) == 1:
            for j in jobs:
                say("candidate %d: %s" % (j[0], "P-RFO" if a.max_iter else "checking it as it is"))
                done(refine_one(j))
        else:
            with ProcessPoolExecutor(max_workers=min(a.workers, len(jobs))) as pool:
                for f in as_completed([pool.submit(refine_one, j) for j in jobs]):
                    done(f.result())
        prog = 'charge=%d uhf=%d max_iter=%d hess_every=%d method="GFN2-xTB" xtb="%s" program="tools/refine.py"' % (
            a.charge, a.uhf, a.max_iter, a.hess_every, xtbrun.version())
        text = "".join(frame_text(syms, r, prog) for r in results)
        with os.fdopen(fd, "w") as f:
            fd = None
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, a.out)
        tmp = None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    for r in results:
        print(fields(r))
    nv = sum(1 for r in results if r["verdict"] == "verified")
    say("%d of %d candidate(s) verified; wrote %s" % (nv, len(results), a.out))
    return 0


def main(argv):
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)    # unwinds run(), which removes its temporary file
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        return run(parse_args(argv))
    except RefineError as e:
        say(" ".join(str(e).split()))
        return e.status
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
