#!/usr/bin/env python3
"""Compare a `ts` output with React-OT's deployed result (stdlib only; used by test_bridge.sh).

    bridge_check.py deploy TS.xyz REACTANT.xyz OUT_TS_POS.npy TOL
        The TS written by `oa_reactdiff ts` (placed at the reactant's centroid) against
        upstream run_model.py's out_TS_pos (in the frame of the reactant centred on its plain
        centroid): prints the largest coordinate difference, exit 1 above TOL Angstrom.
    bridge_check.py same A.xyz B.xyz TOL [PERM]
        Largest coordinate difference of the first frames of A and B, atom by atom; with
        PERM (comma-separated input index of each atom of A), A's atom i is B's atom PERM[i].
"""
import ast
import struct
import sys


def read_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise SystemExit("%s: not a .npy file" % path)
    hlen = struct.unpack("<H", data[8:10])[0]
    hdr = ast.literal_eval(data[10:10 + hlen].decode("latin1"))
    code = {"<f4": "f", "<f8": "d"}[hdr["descr"]]
    n = 1
    for d in hdr["shape"]:
        n *= d
    return list(struct.unpack("<%d%s" % (n, code), data[10 + hlen:10 + hlen + n * struct.calcsize(code)]))


def read_xyz(path):
    with open(path) as f:
        lines = f.read().splitlines()
    n = int(lines[0])
    return [[float(v) for v in line.split()[1:4]] for line in lines[2:2 + n]]


def main(argv):
    if argv[1] == "deploy":
        ts, r, ref, tol = read_xyz(argv[2]), read_xyz(argv[3]), read_npy(argv[4]), float(argv[5])
        c = [sum(a[k] for a in r) / len(r) for k in range(3)]
        got = [ts[i][k] - c[k] for i in range(len(ts)) for k in range(3)]
    else:
        a, b, tol = read_xyz(argv[2]), read_xyz(argv[3]), float(argv[4])
        perm = [int(v) for v in argv[5].split(",")] if len(argv) > 5 else list(range(len(a)))
        got = [a[i][k] for i in range(len(a)) for k in range(3)]
        ref = [b[perm[i]][k] for i in range(len(a)) for k in range(3)]
    if len(got) != len(ref):
        print("sizes differ: %d and %d values" % (len(got), len(ref)))
        return 1
    err = max(abs(x - y) for x, y in zip(got, ref))
    print("max_abs=%.3e A (tol %g)" % (err, tol))
    return 0 if err <= tol else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
