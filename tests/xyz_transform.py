#!/usr/bin/env python3
"""Write a transformed copy of an xyz file, for the CLI tests (stdlib only).

usage: xyz_transform.py IN.xyz OUT.xyz [--seed S] [--rotate] [--translate] [--permute]
                        [--mirror] [--noise SIGMA] [--print-perm]

--permute shuffles the atom order (the permutation is printed with --print-perm as the
input index of each output atom); --mirror negates x; --rotate applies a random proper
rotation; --translate a random shift; --noise adds Gaussian noise (Angstrom).
"""
import math
import random
import sys


def read_xyz(path):
    with open(path) as f:
        lines = f.read().splitlines()
    n = int(lines[0])
    atoms = []
    for line in lines[2:2 + n]:
        p = line.split()
        atoms.append((p[0], [float(p[1]), float(p[2]), float(p[3])]))
    return atoms


def random_rotation(rng):
    # uniform random unit quaternion (Shoemake)
    u1, u2, u3 = rng.random(), rng.random(), rng.random()
    q = (math.sqrt(1 - u1) * math.sin(2 * math.pi * u2), math.sqrt(1 - u1) * math.cos(2 * math.pi * u2),
         math.sqrt(u1) * math.sin(2 * math.pi * u3), math.sqrt(u1) * math.cos(2 * math.pi * u3))
    w, x, y, z = q
    return [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    src, dst, opts = argv[1], argv[2], argv[3:]
    seed = 0
    noise = 0.0
    if "--seed" in opts:
        seed = int(opts[opts.index("--seed") + 1])
    if "--noise" in opts:
        noise = float(opts[opts.index("--noise") + 1])
    rng = random.Random(seed)
    atoms = read_xyz(src)
    perm = list(range(len(atoms)))
    if "--permute" in opts:
        while len(atoms) > 1 and perm == sorted(perm):
            rng.shuffle(perm)
    out = [(atoms[i][0], list(atoms[i][1])) for i in perm]
    if "--mirror" in opts:
        for _, x in out:
            x[0] = -x[0]
    if "--rotate" in opts:
        R = random_rotation(rng)
        for k, (s, x) in enumerate(out):
            out[k] = (s, [sum(R[i][j] * x[j] for j in range(3)) for i in range(3)])
    if "--translate" in opts:
        t = [rng.uniform(-20, 20) for _ in range(3)]
        for _, x in out:
            for i in range(3):
                x[i] += t[i]
    if noise:
        for _, x in out:
            for i in range(3):
                x[i] += rng.gauss(0, noise)
    with open(dst, "w") as f:
        f.write("%d\ntransformed %s\n" % (len(out), " ".join(opts)))
        for s, x in out:
            f.write("%-2s %.12f %.12f %.12f\n" % (s, x[0], x[1], x[2]))
    if "--print-perm" in opts:
        print(" ".join(map(str, perm)))


if __name__ == "__main__":
    main(sys.argv)
