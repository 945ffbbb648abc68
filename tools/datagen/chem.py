"""Small chemistry toolkit for the dataset generator (stdlib only).

Geometry I/O, element data, connectivity graphs from covalent radii,
valence (Lewis structure) checks, graph hashing, a Jacobi eigensolver and
harmonic frequencies with translations/rotations projected out.

Units: geometries in Angstrom unless a name says bohr; energies in Hartree.
"""

import hashlib
import math

BOHR = 0.52917721067          # Angstrom per bohr
HARTREE_KCAL = 627.509474      # kcal/mol per Hartree
# sqrt(Eh / (bohr^2 amu)) expressed as a wavenumber in cm^-1
AU_TO_CM1 = 5140.4871

MASS = {"H": 1.00782503, "C": 12.0, "N": 14.00307401, "O": 15.99491462,
        "F": 18.99840322}
# Covalent radii (Angstrom), Pyykko/Alvarez-like single-bond values.
COV = {"H": 0.32, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57}
# Allowed valences of neutral closed-shell atoms.  Carbon may be a singlet
# carbene (valence 2), see valence_ok(max_carbenes=...).
VALENCE = {"H": (1,), "C": (4, 2), "N": (3,), "O": (2,), "F": (1,)}
BOND_TOL = 1.25               # bonded if r < BOND_TOL * (r_cov_i + r_cov_j)


# --------------------------------------------------------------------- xyz

def read_xyz(path):
    """Return (symbols, coords[list of [x,y,z]], comment) of the first frame."""
    with open(path) as f:
        lines = f.read().splitlines()
    n = int(lines[0].split()[0])
    comment = lines[1] if len(lines) > 1 else ""
    syms, xyz = [], []
    for ln in lines[2:2 + n]:
        p = ln.split()
        s = p[0]
        s = s[0].upper() + s[1:].lower()
        syms.append(s)
        xyz.append([float(p[1]), float(p[2]), float(p[3])])
    if len(syms) != n:
        raise ValueError("%s: truncated xyz" % path)
    return syms, xyz, comment


def read_xyz_frames(path):
    """All frames of a multi-frame xyz file as a list of (symbols, coords, comment)."""
    with open(path) as f:
        lines = f.read().splitlines()
    frames, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        n = int(lines[i].split()[0])
        comment = lines[i + 1]
        syms, xyz = [], []
        for ln in lines[i + 2:i + 2 + n]:
            p = ln.split()
            syms.append(p[0][0].upper() + p[0][1:].lower())
            xyz.append([float(p[1]), float(p[2]), float(p[3])])
        if len(syms) != n:
            raise ValueError("%s: truncated xyz (frame %d)" % (path, len(frames)))
        frames.append((syms, xyz, comment))
        i += 2 + n
    return frames


def xyz_text(syms, xyz, comment=""):
    out = ["%d" % len(syms), comment.replace("\n", " ")]
    for s, (x, y, z) in zip(syms, xyz):
        out.append("%-2s %15.8f %15.8f %15.8f" % (s, x, y, z))
    return "\n".join(out) + "\n"


def write_xyz(path, syms, xyz, comment=""):
    with open(path, "w") as f:
        f.write(xyz_text(syms, xyz, comment))


def formula(syms):
    """Hill formula, e.g. C2H4O."""
    cnt = {}
    for s in syms:
        cnt[s] = cnt.get(s, 0) + 1
    order = []
    if "C" in cnt:
        order = ["C"] + (["H"] if "H" in cnt else [])
    order += sorted(k for k in cnt if k not in order)
    return "".join(k + (str(cnt[k]) if cnt[k] > 1 else "") for k in order)


# ------------------------------------------------------------------ graphs

def dist(a, b):
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)


def bonds_from_xyz(syms, xyz, tol=BOND_TOL):
    """Connectivity as a frozenset of (i, j) pairs, i < j."""
    n = len(syms)
    out = set()
    for i in range(n):
        for j in range(i + 1, n):
            if dist(xyz[i], xyz[j]) < tol * (COV[syms[i]] + COV[syms[j]]):
                out.add((i, j))
    return frozenset(out)


def neighbours(n, bonds):
    nb = [[] for _ in range(n)]
    for i, j in bonds:
        nb[i].append(j)
        nb[j].append(i)
    return nb


def components(n, bonds):
    """Connected components as a list of sorted atom lists."""
    nb = neighbours(n, bonds)
    seen, comps = [False] * n, []
    for s in range(n):
        if seen[s]:
            continue
        stack, comp = [s], []
        seen[s] = True
        while stack:
            a = stack.pop()
            comp.append(a)
            for b in nb[a]:
                if not seen[b]:
                    seen[b] = True
                    stack.append(b)
        comps.append(sorted(comp))
    return comps


def topo_dist(n, bonds, src):
    nb = neighbours(n, bonds)
    d = [None] * n
    d[src] = 0
    q = [src]
    for a in q:
        for b in nb[a]:
            if d[b] is None:
                d[b] = d[a] + 1
                q.append(b)
    return d


def bond_orders(syms, bonds, max_carbenes=1):
    """Find integer bond orders (1..3) so every atom meets an allowed valence.

    Returns a dict {(i,j): order} or None when the graph has no neutral
    closed-shell Lewis structure.  Depth-first search over bonds; atoms whose
    remaining capacity cannot be met are pruned early.
    """
    n = len(syms)
    bl = sorted(bonds)
    nb = neighbours(n, bl)
    deg = [len(x) for x in nb]
    for i, s in enumerate(syms):
        if deg[i] > max(VALENCE[s]):
            return None
        if deg[i] == 0 and s != "C":
            # isolated atoms other than a carbon "atom" are radicals; even C
            # atom is excluded below because valence 2 needs two bonds.
            return None
    # Targets: try each combination of carbene centres (few carbons).
    carbons = [i for i, s in enumerate(syms) if s == "C" and deg[i] <= 2]
    choices = [()]
    if max_carbenes >= 1:
        choices += [(c,) for c in carbons]
    for carb in choices:
        target = [VALENCE[s][0] for s in syms]
        for c in carb:
            target[c] = 2
        if any(deg[i] > target[i] for i in range(n)) or any(deg[i] == 0 for i in range(n)):
            continue
        res = _assign_orders(n, bl, target)
        if res is not None:
            return res
    return None


def _assign_orders(n, bl, target):
    remaining = list(target)       # valence still to be used
    # bonds left per atom (each needs at least 1)
    left = [0] * n
    for i, j in bl:
        left[i] += 1
        left[j] += 1
    orders = {}
    # order bonds: heavy-heavy last so H bonds (forced 1) are fixed first
    order_list = sorted(bl, key=lambda b: (min(target[b[0]], target[b[1]]) > 1, b))

    def rec(k):
        if k == len(order_list):
            return all(r == 0 for r in remaining)
        i, j = order_list[k]
        left[i] -= 1
        left[j] -= 1
        for o in (1, 2, 3):
            if o > remaining[i] - left[i] or o > remaining[j] - left[j]:
                break
            ri, rj = remaining[i] - o, remaining[j] - o
            # an atom with no bonds left must be saturated now
            if (left[i] == 0 and ri != 0) or (left[j] == 0 and rj != 0):
                continue
            remaining[i], remaining[j] = ri, rj
            orders[(i, j)] = o
            if rec(k + 1):
                return True
            remaining[i] += o
            remaining[j] += o
        left[i] += 1
        left[j] += 1
        orders.pop((i, j), None)
        return False

    return dict(orders) if rec(0) else None


def ring_sizes_of_bond(n, bonds, b):
    """Length of the smallest ring through bond b (0 if b is not in a ring)."""
    rest = [x for x in bonds if x != b]
    d = topo_dist(n, rest, b[0])
    return 0 if d[b[1]] is None else d[b[1]] + 1


def lewis_ok(syms, bonds, max_carbenes=1):
    """Valence-valid and free of strained multiple bonds in small rings."""
    orders = bond_orders(syms, bonds, max_carbenes)
    if orders is None:
        return False
    for b, o in orders.items():
        if o >= 2:
            r = ring_sizes_of_bond(len(syms), bonds, b)
            if o == 3 and r and r < 8:
                return False
            if o == 2 and r == 3 and "C" not in (syms[b[0]] + syms[b[1]]):
                return False
    # no atom with two double bonds inside a ring < 8 (cumulated, strained)
    n = len(syms)
    for a in range(n):
        multi = [b for b, o in orders.items() if o >= 2 and a in b]
        if len(multi) >= 2 and any(ring_sizes_of_bond(n, bonds, b) for b in multi):
            return False
    return True


def graph_hash(syms, bonds, edge_label=None, rounds=None):
    """Weisfeiler-Lehman hash of an element-labelled graph (optionally edge
    labels given as a dict {(i,j): label}).  Equal for isomorphic graphs; for
    the small molecular graphs used here collisions are not a practical issue."""
    n = len(syms)
    nb = [[] for _ in range(n)]
    for i, j in bonds:
        lab = edge_label.get((i, j), "") if edge_label else ""
        nb[i].append((j, lab))
        nb[j].append((i, lab))
    col = [s for s in syms]
    for _ in range(rounds or n):
        new = []
        for a in range(n):
            sig = col[a] + "|" + ",".join(sorted(l + ":" + col[b] for b, l in nb[a]))
            new.append(hashlib.sha1(sig.encode()).hexdigest()[:16])
        col = new
    return hashlib.sha1(",".join(sorted(col)).encode()).hexdigest()[:20]


# ----------------------------------------------------------- linear algebra

def jacobi_eigh(a, tol=1e-12, max_sweeps=60):
    """Eigen-decomposition of a symmetric matrix (list of lists) by cyclic
    Jacobi rotations.  Returns (eigenvalues ascending, eigenvectors as a list
    of column vectors, i.e. vecs[k] is the k-th eigenvector)."""
    n = len(a)
    a = [row[:] for row in a]
    v = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for _ in range(max_sweeps):
        off = 0.0
        for i in range(n):
            ai = a[i]
            for j in range(i + 1, n):
                off += ai[j] * ai[j]
        if off < tol * tol:
            break
        for p in range(n - 1):
            ap = a[p]
            for q in range(p + 1, n):
                apq = ap[q]
                if abs(apq) < 1e-300:
                    continue
                aq = a[q]
                theta = (aq[q] - ap[p]) / (2.0 * apq)
                t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                # rotate rows/columns p and q
                for k in range(n):
                    ak = a[k]
                    akp, akq = ak[p], ak[q]
                    ak[p] = c * akp - s * akq
                    ak[q] = s * akp + c * akq
                for k in range(n):
                    apk, aqk = ap[k], aq[k]
                    ap[k] = c * apk - s * aqk
                    aq[k] = s * apk + c * aqk
                for k in range(n):
                    vk = v[k]
                    vkp, vkq = vk[p], vk[q]
                    vk[p] = c * vkp - s * vkq
                    vk[q] = s * vkp + c * vkq
    vals = [a[i][i] for i in range(n)]
    idx = sorted(range(n), key=lambda k: vals[k])
    return [vals[k] for k in idx], [[v[i][k] for i in range(n)] for k in idx]


def dot(u, w):
    return sum(x * y for x, y in zip(u, w))


def norm(u):
    return math.sqrt(dot(u, u))


def matvec(m, u):
    return [dot(row, u) for row in m]


def tr_basis(xyz, masses=None):
    """Orthonormal basis (list of 3N vectors) of infinitesimal translations and
    rotations, optionally in mass-weighted coordinates (pass masses)."""
    n = len(xyz)
    w = [math.sqrt(m) for m in masses] if masses else [1.0] * n
    tot = sum(x * x for x in w)
    com = [sum(w[i] ** 2 * xyz[i][k] for i in range(n)) / tot for k in range(3)]
    r = [[xyz[i][k] - com[k] for k in range(3)] for i in range(n)]
    raw = []
    for k in range(3):
        v = [0.0] * (3 * n)
        for i in range(n):
            v[3 * i + k] = w[i]
        raw.append(v)
    for k in range(3):       # rotation about axis k: omega x r
        v = [0.0] * (3 * n)
        for i in range(n):
            e = [0.0, 0.0, 0.0]
            e[k] = 1.0
            c = (e[1] * r[i][2] - e[2] * r[i][1],
                 e[2] * r[i][0] - e[0] * r[i][2],
                 e[0] * r[i][1] - e[1] * r[i][0])
            for d in range(3):
                v[3 * i + d] = w[i] * c[d]
        raw.append(v)
    basis = []
    for v in raw:            # Gram-Schmidt; drops the missing rotation of linear molecules
        for b in basis:
            p = dot(v, b)
            v = [x - p * y for x, y in zip(v, b)]
        nv = norm(v)
        if nv > 1e-6 * math.sqrt(tot):
            basis.append([x / nv for x in v])
    return basis


def project_out(vec, basis):
    for b in basis:
        p = dot(vec, b)
        vec = [x - p * y for x, y in zip(vec, b)]
    return vec


def projected_matrix(h, basis, shift=0.0):
    """P H P (+ shift * (1-P)) with P the projector orthogonal to basis."""
    n = len(h)
    # P = I - B B^T ; compute H P then P (H P)
    def apply_p_cols(m):
        out = [row[:] for row in m]
        for b in basis:
            mb = [dot(row, b) for row in out]
            for i in range(n):
                ri, mi = out[i], mb[i]
                for j in range(n):
                    ri[j] -= mi * b[j]
        return out
    hp = apply_p_cols(h)
    php = apply_p_cols([list(c) for c in zip(*hp)])   # (HP)^T P = P H P (symmetric)
    if shift:
        for b in basis:
            for i in range(n):
                for j in range(n):
                    php[i][j] += shift * b[i] * b[j]
    for i in range(n):           # symmetrise numerically
        for j in range(i + 1, n):
            m = 0.5 * (php[i][j] + php[j][i])
            php[i][j] = php[j][i] = m
    return php


def frequencies(syms, xyz, hess):
    """Harmonic wavenumbers (cm^-1, negative = imaginary) with the
    translations and rotations projected out, and the matching Cartesian
    displacement vectors (3N, Angstrom-free unit direction, not normalised).
    hess: Cartesian Hessian in Eh/bohr^2 (3N x 3N), xyz in Angstrom."""
    n = len(syms)
    m = [MASS[s] for s in syms]
    inv = [1.0 / math.sqrt(m[i // 3]) for i in range(3 * n)]
    hm = [[hess[i][j] * inv[i] * inv[j] for j in range(3 * n)] for i in range(3 * n)]
    basis = tr_basis(xyz, m)
    hp = projected_matrix(hm, basis)
    vals, vecs = jacobi_eigh(hp)
    # drop the len(basis) eigenvectors living in the TR space
    scored = []
    for k, (lam, vec) in enumerate(zip(vals, vecs)):
        tr = sum(dot(vec, b) ** 2 for b in basis)
        scored.append((tr, k))
    drop = set(k for _, k in sorted(scored, reverse=True)[:len(basis)])
    freqs, modes = [], []
    for k, (lam, vec) in enumerate(zip(vals, vecs)):
        if k in drop:
            continue
        f = math.copysign(math.sqrt(abs(lam)) * AU_TO_CM1, lam)
        cart = [vec[i] * inv[i] for i in range(3 * n)]
        freqs.append(f)
        modes.append(cart)
    return freqs, modes


def superimpose(ref, mov):
    """Rigidly superimpose `mov` onto `ref`, atom i on atom i: the rotation
    and translation of least RMSD (Horn's quaternion form of Kabsch, a 4x4
    Jacobi eigen-solve).  Both lists of [x,y,z]; returns new coords."""
    n = len(ref)
    cr = [sum(p[k] for p in ref) / n for k in range(3)]
    cm = [sum(p[k] for p in mov) / n for k in range(3)]
    a = [[p[k] - cr[k] for k in range(3)] for p in ref]
    b = [[p[k] - cm[k] for k in range(3)] for p in mov]
    s = [[sum(b[i][x] * a[i][y] for i in range(n)) for y in range(3)] for x in range(3)]
    sxx, sxy, sxz = s[0]
    syx, syy, syz = s[1]
    szx, szy, szz = s[2]
    k4 = [[sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
          [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
          [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
          [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]]
    vals, vecs = jacobi_eigh(k4)
    q0, q1, q2, q3 = vecs[-1]
    rot = [[q0*q0+q1*q1-q2*q2-q3*q3, 2*(q1*q2-q0*q3), 2*(q1*q3+q0*q2)],
           [2*(q1*q2+q0*q3), q0*q0-q1*q1+q2*q2-q3*q3, 2*(q2*q3-q0*q1)],
           [2*(q1*q3-q0*q2), 2*(q2*q3+q0*q1), q0*q0-q1*q1-q2*q2+q3*q3]]
    return [[sum(rot[x][y] * p[y] for y in range(3)) + cr[x] for x in range(3)] for p in b]
