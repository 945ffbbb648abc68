"""Thin interface to the `xtb` program (GFN2-xTB): each call runs in its own
temporary directory; results are parsed from xtb's output files.

All calls use --gfn 2 and, unless set_charge() is called, --chrg 0 --uhf 0
(the dataset generator never calls it).  Environment: OMP_NUM_THREADS=1 and a
large OMP_STACKSIZE are set for the child unless already given.
"""

import os
import re
import shutil
import subprocess
import tempfile

from chem import read_xyz, write_xyz, BOHR

XTB = os.environ.get("XTB", "xtb")
BASE_ARGS = ["--gfn", "2", "--chrg", "0", "--uhf", "0"]
TIMEOUT = int(os.environ.get("DATAGEN_XTB_TIMEOUT", "600"))
# per-process counters: all xtb runs (for provenance), and the gradients,
# Hessians, single points and optimisations among them; opt_cycles adds up the
# geometry steps (one gradient each) that xtb reports for its optimisations
STATS = {"calls": 0, "grad": 0, "hess": 0, "sp": 0, "opt": 0, "opt_cycles": 0}


class XtbError(RuntimeError):
    """str(): the failing call and xtb's last output line (as the generator
    records it); detail: xtb's innermost error message, when it printed one
    (e.g. 'scf: Self consistent charge iterator did not converge')."""

    def __init__(self, msg, detail=""):
        RuntimeError.__init__(self, msg)
        self.detail = detail


def _error_cause(out):
    """The innermost message of xtb's error trace ('-1- scf: ...'), or ''."""
    trace = re.findall(r"^\s*-(\d+)- (.+?)\s*$", out, re.M)
    return min(trace, key=lambda t: int(t[0]))[1] if trace else ""


def set_charge(charge, uhf):
    """Molecular charge and number of unpaired electrons of every later call."""
    BASE_ARGS[:] = ["--gfn", "2", "--chrg", str(int(charge)), "--uhf", str(int(uhf))]


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("OMP_STACKSIZE", "1G")
    return env


def version():
    try:
        out = subprocess.run([XTB, "--version"], capture_output=True, text=True,
                             env=_env(), timeout=60).stdout
    except OSError:
        return "unavailable"
    m = re.search(r"xtb version (\S+)", out)
    return ("xtb " + m.group(1)) if m else "xtb unknown"


def run(syms, xyz, args, inp=None, extra_files=None, keep=None):
    """Run xtb on a geometry.  Returns (stdout_text, {filename: text}) with the
    files named in `keep` that xtb wrote (missing ones omitted)."""
    d = tempfile.mkdtemp(prefix="xtb_")
    try:
        write_xyz(os.path.join(d, "in.xyz"), syms, xyz, "")
        cmd = [XTB, "in.xyz"] + list(args) + BASE_ARGS
        if inp is not None:
            with open(os.path.join(d, "x.inp"), "w") as f:
                f.write(inp)
            cmd += ["--input", "x.inp"]
        for name, (s2, x2) in (extra_files or {}).items():
            write_xyz(os.path.join(d, name), s2, x2, "")
        STATS["calls"] += 1
        try:
            p = subprocess.run(cmd, cwd=d, capture_output=True, text=True,
                               env=_env(), timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise XtbError("xtb timeout: " + " ".join(args))
        out = p.stdout + p.stderr
        files = {}
        for k in keep or ():
            fp = os.path.join(d, k)
            if os.path.exists(fp):
                with open(fp) as f:
                    files[k] = f.read()
        if p.returncode != 0 or "abnormal termination" in out or "[ERROR]" in out:
            raise XtbError("xtb failed (%s): %s" % (" ".join(args), out.strip().splitlines()[-1:] if out.strip() else "no output"),
                           _error_cause(out))
        return out, files
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _energy_from_out(out):
    m = re.findall(r"TOTAL ENERGY\s+(-?\d+\.\d+)\s+Eh", out)
    if not m:
        raise XtbError("no energy in xtb output")
    return float(m[-1])


def singlepoint(syms, xyz):
    STATS["sp"] += 1
    out, _ = run(syms, xyz, ["--sp"])
    return _energy_from_out(out)


def gradient(syms, xyz):
    """Energy (Eh) and Cartesian gradient (Eh/bohr, flat 3N list)."""
    STATS["grad"] += 1
    out, files = run(syms, xyz, ["--grad"], keep=["gradient"])
    if "gradient" not in files:
        raise XtbError("no gradient file")
    return parse_gradient(files["gradient"], len(syms))


def parse_gradient(text, n):
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("$")]
    m = re.search(r"SCF energy =\s*(-?\d+\.\d+)", text)
    if not m:
        raise XtbError("no energy in gradient file")
    e = float(m.group(1))
    g = []
    for l in lines[-n:]:
        g.extend(float(x.replace("D", "E")) for x in l.split()[:3])
    if len(g) != 3 * n:
        raise XtbError("bad gradient file")
    return e, g


def hessian(syms, xyz):
    """Energy (Eh) and Cartesian Hessian (Eh/bohr^2, 3N x 3N list of lists)."""
    STATS["hess"] += 1
    out, files = run(syms, xyz, ["--hess"], keep=["hessian"])
    if "hessian" not in files:
        raise XtbError("no hessian file")
    n3 = 3 * len(syms)
    vals = []
    for l in files["hessian"].splitlines():
        if l.startswith("$"):
            continue
        vals.extend(float(x) for x in l.split())
    if len(vals) != n3 * n3:
        raise XtbError("hessian has %d values, expected %d" % (len(vals), n3 * n3))
    h = [vals[i * n3:(i + 1) * n3] for i in range(n3)]
    for i in range(n3):
        for j in range(i + 1, n3):
            a = 0.5 * (h[i][j] + h[j][i])
            h[i][j] = h[j][i] = a
    return _energy_from_out(out), h


def optimize(syms, xyz, level="tight", inp=None, cycles=None):
    """Geometry optimisation.  Returns (energy, coords, converged)."""
    args = ["--opt", level]
    if cycles:
        args += ["--cycles", str(cycles)]
    STATS["opt"] += 1
    out, files = run(syms, xyz, args, inp=inp, keep=["xtbopt.xyz"])
    m = re.search(r"GEOMETRY OPTIMIZATION CONVERGED AFTER (\d+) ITERATIONS", out) or \
        re.search(r"FAILED TO CONVERGE GEOMETRY OPTIMIZATION IN (\d+) ITERATIONS", out)
    if m:
        STATS["opt_cycles"] += int(m.group(1))
    if "xtbopt.xyz" not in files:
        raise XtbError("no optimised geometry")
    lines = files["xtbopt.xyz"].splitlines()
    n = len(syms)
    new = [[float(v) for v in l.split()[1:4]] for l in lines[2:2 + n]]
    converged = "GEOMETRY OPTIMIZATION CONVERGED" in out
    return _energy_from_out(out), new, converged


def path_search(syms, xyz_r, xyz_p, inp):
    """xtb's RMSD-biased reaction path search from reactant to product.
    Returns list of (energy, coords) along the best path (may be empty)."""
    out, files = run(syms, xyz_r, ["--path", "prod.xyz"], inp=inp,
                     extra_files={"prod.xyz": (syms, xyz_p)},
                     keep=["xtbpath_ts.xyz", "xtbpath_0.xyz", "xtbpath_1.xyz",
                           "xtbpath_2.xyz", "xtbpath_3.xyz", "xtbpath.xyz"])
    return out, files
