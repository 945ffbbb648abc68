"""Reaction path, saddle-point search and verification with xtb energies,
gradients and Hessians (stdlib only).

* scan_path: an approximate reaction path by a constrained xtb optimisation
  series that drives the changing bond distances linearly from their reactant
  to their product values (a "linear synchronous" distance scan).
* neb: a climbing-image nudged elastic band of our own (used as a fallback
  when the scan maximum does not lead to a verified saddle).
* prfo: partitioned rational function optimisation (Baker 1986 style) in
  Cartesian coordinates with translations/rotations projected out and a
  dynamic trust radius.  The Hessian is xtb's exact one every `hess_every`
  steps and Bofill-updated (Bofill 1994) in between; convergence is always
  confirmed with an exact Hessian, which is the one returned.
* verify_ts: one imaginary frequency below -50 cm^-1 (no other below
  -20 cm^-1), then +/- displacement along that mode and xtb minimisations,
  whose connectivity graphs must be the reactant's and the product's.
* search_and_verify: P-RFO from a starting geometry, then verify_ts (used by
  the generator and by tools/refine.py); verify_as_given: the same checks on
  a geometry taken as it is, which must be stationary (verify.py, refine.py).
"""

import math

import chem
import xtbrun
from chem import BOHR

# P-RFO convergence (Eh/bohr) and limits
GMAX_TOL = 3.0e-4
GRMS_TOL = 2.0e-4
STEP_TOL = 2.0e-3     # bohr, max component, used together with the gradient
IMAG_MIN = -50.0      # the reaction mode must be below this (cm^-1)
IMAG_OTHER = -20.0    # all other modes must be above this (cm^-1)
DISPLACE = 0.20       # Angstrom, max atom displacement along the mode


def _flat_bohr(xyz):
    return [c / BOHR for a in xyz for c in a]


def _unflat_ang(v):
    return [[v[3 * i] * BOHR, v[3 * i + 1] * BOHR, v[3 * i + 2] * BOHR]
            for i in range(len(v) // 3)]


def constrain_input(pairs, fc=1.0):
    """xtb $constrain block; pairs = [(i, j, r_angstrom)] with 0-based atoms."""
    lines = ["$constrain", "  force constant=%.3f" % fc]
    for i, j, r in pairs:
        lines.append("  distance: %d, %d, %.4f" % (i + 1, j + 1, r))
    lines.append("$end")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------- path scan

def scan_path(syms, xr, pairs, targets, npts=12, fc=1.0):
    """Constrained optimisations from the reactant geometry xr, driving each
    pair (i, j) linearly from its distance in xr to its target distance.
    Returns a list of (energy, coords) with the reactant first; the last
    point is the fully constrained end point (not yet freely optimised)."""
    r0 = [chem.dist(xr[i], xr[j]) for i, j in pairs]
    path = [(xtbrun.singlepoint(syms, xr), xr)]
    cur = xr
    for k in range(1, npts + 1):
        t = k / float(npts)
        cons = [(i, j, a + t * (b - a)) for (i, j), a, b in zip(pairs, r0, targets)]
        _, cur, _ = xtbrun.optimize(syms, cur, "normal", inp=constrain_input(cons, fc),
                                    cycles=200)
        path.append((xtbrun.singlepoint(syms, cur), cur))
    return path


# --------------------------------------------------------------- NEB

def neb(syms, images, iters=60, k_spring=0.1, max_step=0.1, log=None):
    """Climbing-image NEB (improved tangent) with a damped velocity-Verlet-free
    steepest-descent/FIRE-like update.  images: list of coords (Angstrom),
    end points fixed.  Returns list of (energy, coords)."""
    imgs = [list(map(list, im)) for im in images]
    for i in range(1, len(imgs)):
        imgs[i] = chem.superimpose(imgs[i - 1], imgs[i])
    x = [_flat_bohr(im) for im in imgs]
    m = len(x)
    e = [None] * m
    g = [None] * m
    e[0] = xtbrun.singlepoint(syms, imgs[0])
    e[-1] = xtbrun.singlepoint(syms, imgs[-1])
    vel = [[0.0] * len(x[0]) for _ in range(m)]
    dt, alpha, npos = 0.1, 0.1, 0
    for it in range(iters):
        for i in range(1, m - 1):
            e[i], g[i] = xtbrun.gradient(syms, _unflat_ang(x[i]))
        ci = max(range(1, m - 1), key=lambda i: e[i])
        forces = [None] * m
        fmax = 0.0
        for i in range(1, m - 1):
            tp = [a - b for a, b in zip(x[i + 1], x[i])]
            tm = [a - b for a, b in zip(x[i], x[i - 1])]
            if e[i + 1] > e[i] > e[i - 1]:
                tau = tp
            elif e[i + 1] < e[i] < e[i - 1]:
                tau = tm
            else:
                dmax = max(abs(e[i + 1] - e[i]), abs(e[i - 1] - e[i]))
                dmin = min(abs(e[i + 1] - e[i]), abs(e[i - 1] - e[i]))
                if e[i + 1] > e[i - 1]:
                    tau = [dmax * a + dmin * b for a, b in zip(tp, tm)]
                else:
                    tau = [dmin * a + dmax * b for a, b in zip(tp, tm)]
            nt = chem.norm(tau) or 1.0
            tau = [a / nt for a in tau]
            f = [-a for a in g[i]]
            fpar = chem.dot(f, tau)
            if i == ci and it >= 5:
                f = [a - 2.0 * fpar * t for a, t in zip(f, tau)]
            else:
                fs = k_spring * (chem.norm(tp) - chem.norm(tm))
                f = [a - fpar * t + fs * t for a, t in zip(f, tau)]
            forces[i] = f
            fmax = max(fmax, max(abs(a) for a in f))
        if log is not None:
            log.append((it, fmax, max(e[1:-1])))
        if fmax < 2e-3:
            break
        # FIRE
        p = sum(chem.dot(vel[i], forces[i]) for i in range(1, m - 1))
        vn = math.sqrt(sum(chem.dot(vel[i], vel[i]) for i in range(1, m - 1)))
        fn = math.sqrt(sum(chem.dot(forces[i], forces[i]) for i in range(1, m - 1))) or 1.0
        for i in range(1, m - 1):
            vel[i] = [(1 - alpha) * v + alpha * vn * f / fn for v, f in zip(vel[i], forces[i])]
        if p > 0:
            npos += 1
            if npos > 5:
                dt = min(dt * 1.1, 1.0)
                alpha *= 0.99
        else:
            npos = 0
            dt *= 0.5
            alpha = 0.1
            vel = [[0.0] * len(x[0]) for _ in range(m)]
        for i in range(1, m - 1):
            vel[i] = [v + dt * f for v, f in zip(vel[i], forces[i])]
            step = [dt * v for v in vel[i]]
            sn = max(abs(s) for s in step)
            if sn > max_step:
                step = [s * max_step / sn for s in step]
            x[i] = [a + s for a, s in zip(x[i], step)]
    for i in range(1, m - 1):
        e[i] = xtbrun.singlepoint(syms, _unflat_ang(x[i]))
    return [(e[i], _unflat_ang(x[i])) for i in range(m)]


# --------------------------------------------------------------- P-RFO

def _lowest_rfo_shift(b, f):
    """Lowest root lambda < min(b) of lambda = sum f_i^2 / (lambda - b_i)."""
    if not b:
        return 0.0
    bmin = min(b)
    hi = bmin - 1e-12
    lo = bmin - 1.0 - sum(abs(x) for x in f)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        val = mid - sum(fi * fi / (mid - bi) for fi, bi in zip(f, b))
        if val > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-14:
            break
    return 0.5 * (lo + hi)


def bofill_update(h, s, y):
    """Bofill's update of a Hessian h (list of lists, modified in place) for a
    step s and gradient change y: phi * Murtagh-Sargent + (1 - phi) * Powell
    symmetric Broyden, phi = (xi.s)^2 / (|xi|^2 |s|^2), xi = y - h s.  It
    keeps neither sign pattern fixed, as a saddle search needs."""
    n = len(s)
    xi = [yi - chem.dot(row, s) for yi, row in zip(y, h)]
    xs, ss, xx = chem.dot(xi, s), chem.dot(s, s), chem.dot(xi, xi)
    if ss < 1e-16 or xx < 1e-24:
        return h
    phi = xs * xs / (xx * ss)
    ms = (1.0 / xs) if abs(xs) > 1e-12 * math.sqrt(xx * ss) else 0.0
    if ms == 0.0:
        phi = 0.0
    for i in range(n):
        hi = h[i]
        for j in range(n):
            d_ms = ms * xi[i] * xi[j]
            d_psb = (xi[i] * s[j] + s[i] * xi[j]) / ss - xs * s[i] * s[j] / (ss * ss)
            hi[j] += phi * d_ms + (1.0 - phi) * d_psb
    return h


def _analyse(geom, g, h):
    """Projected gradient and Hessian eigen-analysis at one P-RFO point:
    returns (gp, vals, vecs, keep, gmax, grms, nneg), keep = the indices of
    the eigenvectors that are not translations or rotations."""
    n3 = len(g)
    basis = chem.tr_basis(geom)
    gp = chem.project_out(g, basis)
    hp = chem.projected_matrix(h, basis, shift=0.0)
    vals, vecs = chem.jacobi_eigh(hp)
    # discard the TR directions (largest overlap with the TR basis)
    trs = sorted(range(n3), key=lambda k: -sum(chem.dot(vecs[k], bb) ** 2 for bb in basis))
    drop = set(trs[:len(basis)])
    keep = [k for k in range(n3) if k not in drop]
    gmax = max(abs(v) for v in gp)
    grms = math.sqrt(sum(v * v for v in gp) / n3)
    nneg = sum(1 for k in keep if vals[k] < -1e-5)
    return gp, vals, vecs, keep, gmax, grms, nneg


def prfo(syms, xyz, guide=None, max_iter=50, trust=0.15, log=None, hess_every=1):
    """Saddle-point search.  xyz in Angstrom; guide: optional 3N Cartesian
    vector (e.g. path tangent) used to pick the mode to follow at the start;
    hess_every: exact xtb Hessian every this many steps (1: every step),
    Bofill updates in between.
    Returns dict(converged, coords, energy, iterations, hessian, gmax,
    hessians: number of exact Hessians)."""
    n3 = 3 * len(syms)
    x = _flat_bohr(xyz)
    mode = None
    prev = None      # (energy, predicted change)
    res = {"converged": False, "iterations": 0, "hessians": 0}
    h = None         # current Hessian; exact when exact is True
    last = None      # (x, g) of the previous step, for the update
    since = 0        # steps since the last exact Hessian
    for it in range(max_iter):
        geom = _unflat_ang(x)
        if len(geom) > 1 and max(min(chem.dist(a, b) for b in geom if b is not a) for a in geom) > 3.5:
            res["reason"] = "an atom drifted away (fragmentation)"
            return res
        e, g = xtbrun.gradient(syms, geom)
        if h is None or since + 1 >= hess_every:
            _, h = xtbrun.hessian(syms, geom)
            res["hessians"] += 1
            exact, since = True, 0
        else:
            h = bofill_update(h, [a - b for a, b in zip(x, last[0])],
                              [a - b for a, b in zip(g, last[1])])
            exact, since = False, since + 1
        last = (x, g)
        gp, vals, vecs, keep, gmax, grms, nneg = _analyse(geom, g, h)
        converged = gmax < GMAX_TOL and grms < GRMS_TOL and nneg == 1
        if converged and not exact:       # confirm with the exact Hessian here
            _, h = xtbrun.hessian(syms, geom)
            res["hessians"] += 1
            exact, since = True, 0
            gp, vals, vecs, keep, gmax, grms, nneg = _analyse(geom, g, h)
            converged = nneg == 1
        res.update(coords=geom, energy=e, hessian=h, iterations=it, gmax=gmax)
        if log is not None:
            log.append((it, e, gmax, nneg, trust))
        # trust radius update from the previous step's quality
        if prev is not None:
            de_act = e - prev[0]
            de_pred = prev[1]
            if abs(de_pred) > 1e-8:
                ratio = de_act / de_pred
                if 0.75 < ratio < 1.33 and prev[2] > 0.8 * trust:
                    trust = min(trust * 1.5, 0.3)
                elif ratio < 0.25 or ratio > 3.0:
                    trust = max(trust * 0.5, 0.02)
        if converged:
            res["converged"] = True
            return res
        # choose the mode to maximise along
        if mode is None:
            cand = keep[:4]
            if guide is not None:
                gn = chem.norm(guide) or 1.0
                ov = {k: abs(chem.dot(vecs[k], guide)) / gn for k in cand}
                k_ts = max(cand, key=lambda k: ov[k] - (0.0 if vals[k] < 0 else 0.15))
            else:
                k_ts = cand[0]
        else:
            k_ts = max(keep, key=lambda k: abs(chem.dot(vecs[k], mode)))
        mode = vecs[k_ts]
        f = {k: chem.dot(vecs[k], gp) for k in keep}
        bk, fk = vals[k_ts], f[k_ts]
        lam_p = 0.5 * bk + 0.5 * math.sqrt(bk * bk + 4.0 * fk * fk)
        step = [0.0] * n3
        hk = -fk / (bk - lam_p) if abs(bk - lam_p) > 1e-12 else 0.0
        coeffs = {k_ts: hk}
        others = [k for k in keep if k != k_ts]
        lam_n = _lowest_rfo_shift([vals[k] for k in others], [f[k] for k in others])
        for k in others:
            d = vals[k] - lam_n
            coeffs[k] = -f[k] / d if abs(d) > 1e-12 else 0.0
        for k, c in coeffs.items():
            v = vecs[k]
            for i in range(n3):
                step[i] += c * v[i]
        sn = chem.norm(step)
        if sn > trust:
            scale = trust / sn
            step = [s * scale for s in step]
            coeffs = {k: c * scale for k, c in coeffs.items()}
            sn = trust
        pred = sum(c * f[k] + 0.5 * vals[k] * c * c for k, c in coeffs.items())
        prev = (e, pred, sn)
        if max(abs(s) for s in step) < STEP_TOL and gmax < 3 * GMAX_TOL and nneg == 1:
            if exact:
                res["converged"] = True
                return res
            since = hess_every
        x = [a + s for a, s in zip(x, step)]
    res["iterations"] = max_iter
    return res


# --------------------------------------------------------------- verification

def check_frequencies(syms, xyz, hess):
    """Returns (ok, reason, freqs, mode) for a candidate TS."""
    freqs, modes = chem.frequencies(syms, xyz, hess)
    order = sorted(range(len(freqs)), key=lambda k: freqs[k])
    fs = [freqs[k] for k in order]
    if not fs:
        return False, "no vibrations", fs, None
    if fs[0] >= IMAG_MIN:
        return False, "no imaginary mode below %g cm-1 (lowest %.1f)" % (IMAG_MIN, fs[0]), fs, None
    if len(fs) > 1 and fs[1] < IMAG_OTHER:
        return False, "second imaginary mode %.1f cm-1" % fs[1], fs, None
    return True, "", fs, modes[order[0]]


def displaced(xyz, mode, amount=DISPLACE):
    n = len(xyz)
    amp = max(math.sqrt(sum(mode[3 * i + k] ** 2 for k in range(3))) for i in range(n))
    s = amount / amp
    plus = [[xyz[i][k] + s * mode[3 * i + k] for k in range(3)] for i in range(n)]
    minus = [[xyz[i][k] - s * mode[3 * i + k] for k in range(3)] for i in range(n)]
    return plus, minus


def verify_ts(syms, xyz, hess, react_bonds, prod_hash):
    """Frequency test then an IRC-like descent on both sides.

    react_bonds: reactant connectivity (exact, same atom order);
    prod_hash: graph_hash of the intended product (isomorphism, so an
    equivalent atom, e.g. another methyl H, may take part).
    Returns dict with ok, stage ('freq' or 'irc'), reason, freqs and, when
    ok, the reactant-side and product-side minima (energy, coords)."""
    ok, reason, fs, mode = check_frequencies(syms, xyz, hess)
    out = {"ok": False, "stage": "freq", "reason": reason, "freqs": fs}
    if not ok:
        return out
    out["stage"] = "irc"
    ends = []
    for start in displaced(xyz, mode):
        e, geo, conv = xtbrun.optimize(syms, start, "tight", cycles=500)
        bonds = chem.bonds_from_xyz(syms, geo)
        ends.append((e, geo, bonds, conv))
    (ea, ga, ba, ca), (eb, gb, bb, cb) = ends
    ha, hb = chem.graph_hash(syms, ba), chem.graph_hash(syms, bb)
    if ba == react_bonds and hb == prod_hash:
        r, p = ends[0], ends[1]
    elif bb == react_bonds and ha == prod_hash:
        r, p = ends[1], ends[0]
    else:
        out["reason"] = "endpoints do not connect reactant and product (plus %s, minus %s)" % (
            "R" if ba == react_bonds else ("P" if ha == prod_hash else "other"),
            "R" if bb == react_bonds else ("P" if hb == prod_hash else "other"))
        return out
    if r[2] == p[2]:
        out["reason"] = "reactant and product graphs identical"
        return out
    out.update(ok=True, reason="", react=(r[0], r[1]), prod=(p[0], p[1]),
               prod_bonds=p[2])
    return out


def search_and_verify(syms, start, react_bonds, prod_hash, guide=None, hess_every=1, max_iter=50,
                      log=None):
    """prfo from start, then verify_ts on the saddle it converged to.

    Returns dict(ok, stage, reason, prfo, verify): stage is '' when ok, 'ts'
    when the P-RFO did not converge, else verify_ts's ('freq' or 'irc');
    prfo is prfo's result (its coords, the saddle or the last point reached,
    are absent when the search stopped before its first point), verify
    verify_ts's dict (None when the P-RFO did not converge).  xtb failures
    are raised (xtbrun.XtbError)."""
    res = prfo(syms, start, guide=guide, hess_every=hess_every, max_iter=max_iter, log=log)
    out = {"ok": False, "stage": "ts", "prfo": res, "verify": None,
           "reason": "P-RFO not converged (gmax %.2e)" % res.get("gmax", float("nan"))}
    if not res["converged"]:
        return out
    return _verified(out, verify_ts(syms, res["coords"], res["hessian"], react_bonds, prod_hash))


def _verified(out, v):
    out.update(ok=v["ok"], stage="" if v["ok"] else v["stage"], reason=v["reason"], verify=v)
    return out


def verify_as_given(syms, xyz, react_bonds, prod_hash):
    """verify_ts on xyz itself, no search: first it must be a stationary point
    (max |g|, translations and rotations projected out, below 3 GMAX_TOL),
    else stage 'stationary'.  Returns search_and_verify's dict with prfo =
    {"coords", "energy", "gmax", "hessians"} of xyz."""
    e, grad = xtbrun.gradient(syms, xyz)
    gmax = max(abs(g) for g in chem.project_out(grad, chem.tr_basis(xyz)))
    point = {"coords": xyz, "energy": e, "gmax": gmax, "hessians": 0}
    out = {"ok": False, "stage": "stationary", "prfo": point, "verify": None,
           "reason": "max gradient %.2e Eh/bohr, not a stationary point" % gmax}
    if gmax > 3 * GMAX_TOL:
        return out
    _, hess = xtbrun.hessian(syms, xyz)
    point["hessians"] = 1
    return _verified(out, verify_ts(syms, xyz, hess, react_bonds, prod_hash))
