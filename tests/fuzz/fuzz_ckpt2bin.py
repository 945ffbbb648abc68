#!/usr/bin/env python3
"""fuzz_ckpt2bin.py - a seeded mutation fuzzer for tools/ckpt2bin.py (stdlib only; atheris
is not available here).

    python3 tests/fuzz/fuzz_ckpt2bin.py [--seconds 60] [--seed 1] [--mem-mb 1024]
                                        [--max-rss-mb 256] [--keep DIR] [SEED.ckpt ...]

Seeds: the given checkpoints (default: tests/fixtures/golden/*.ckpt) and the hostile
variants of tests/hostile_ckpt.py. Each round takes a seed and applies one to three
mutations, of the pickle (data.pkl, edited opcode by opcode with pickletools: an integer
or string argument replaced by an edge value, an opcode dropped, repeated or swapped, a
GLOBAL of another module inserted) or of the zip (an entry dropped, renamed, truncated,
deflated, or a large deflated entry added; bytes of the archive flipped), then runs the
converter on it in a forked child under an address-space limit (--mem-mb) and a 10 s
alarm. A finding is: the child killed by a signal or the alarm, an exit status other
than 0 or 1, a failure without exactly one error line (warnings aside) or with a control
character in it, an "internal error" or "out of memory" message, an output file left
behind by a failure, or a peak RSS above --max-rss-mb (the child's, from wait4). Findings
are written to --keep (default build/fuzz/ckpt2bin_findings) and make the exit status 1.
The run is reproducible: the same --seed, seeds and time give the same inputs in order.
"""
import argparse
import glob
import io
import os
import pickletools
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import warnings
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import ckpt2bin  # noqa: E402
import hostile_ckpt  # noqa: E402

EDGE_INTS = [0, 1, -1, 2, 3, 7, 63, 64, 255, 256, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64,
             10 ** 6, 10 ** 6 + 1, 10 ** 9, 10 ** 12, -2 ** 31, -10 ** 9]
EDGE_STRS = ["", "x", "\n", "\x1b[2J", "ddpm.", "confidence.", "storage", "cpu", "0", "9" * 40, "a\x00b",
             "num_layers", "timesteps", "state_dict", "hyper_parameters", "model_config", "\u202e"]
GLOBALS = [b"cbuiltins\nbytearray\n", b"cbuiltins\nlist\n", b"cos\nsystem\n", b"cbuiltins\neval\n",
           b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
           b"cnumpy\ndtype\n", b"c_codecs\nencode\n", b"ccopyreg\n_reconstructor\n"]


def encode_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -2 ** 31 <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def encode_str(s):
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def mutate_pickle(raw, rnd):
    try:
        ops = [(op, arg, pos) for op, arg, pos in pickletools.genops(raw)]
    except Exception:  # noqa: BLE001 - an earlier mutation broke it: byte-level from here
        ops = None
    if not ops or rnd.random() < 0.1:
        b = bytearray(raw)
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        return bytes(b)
    ends = [pos for _, _, pos in ops[1:]] + [len(raw)]
    spans = [(pos, end, op, arg) for (op, arg, pos), end in zip(ops, ends)]
    i = rnd.randrange(len(spans))
    a, b, op, arg = spans[i]
    choice = rnd.random()
    if isinstance(arg, int) and not isinstance(arg, bool) and op.name not in ("PROTO", "BINPUT", "LONG_BINPUT",
                                                                                "BINGET", "LONG_BINGET") and choice < 0.5:
        ints = [k for k, (_, _, o, g) in enumerate(spans) if isinstance(g, int) and o.name in
                ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG")]
        k = rnd.choice(ints) if ints else i
        a, b = spans[k][0], spans[k][1]
        return raw[:a] + encode_int(rnd.choice(EDGE_INTS)) + raw[b:]
    if choice < 0.5:
        strs = [k for k, (_, _, o, g) in enumerate(spans) if isinstance(g, str) and o.name.endswith("UNICODE")]
        if strs:
            k = rnd.choice(strs)
            a, b = spans[k][0], spans[k][1]
            return raw[:a] + encode_str(rnd.choice(EDGE_STRS)) + raw[b:]
    if choice < 0.65:
        return raw[:a] + raw[b:]  # drop
    if choice < 0.8:
        return raw[:b] + raw[a:b] + raw[b:]  # repeat
    if choice < 0.9:
        j = rnd.randrange(len(spans))
        c, d = spans[j][0], spans[j][1]
        if d <= a:
            return raw[:c] + raw[a:b] + raw[d:a] + raw[c:d] + raw[b:]
        if b <= c:
            return raw[:a] + raw[c:d] + raw[b:c] + raw[a:b] + raw[d:]
        return raw
    return raw[:a] + rnd.choice(GLOBALS) + raw[a:]  # a global of another module


def read_zip(blob):
    # a large member (one this fuzzer added) stays a count of zeros: decompressed here it
    # would sit in this process, and in the peak RSS of every child forked after it
    z = zipfile.ZipFile(io.BytesIO(blob))
    return [(i.filename, i.file_size if i.file_size > (4 << 20) else z.read(i.filename), i.compress_type)
            for i in z.infolist()]


def write_zip(members):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", allowZip64=True) as z:
        for name, data, ctype in members:
            if isinstance(data, int):  # that many zeros, streamed
                zi = zipfile.ZipInfo(name)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with z.open(zi, "w", force_zip64=True) as f:
                    left = data
                    while left:
                        f.write(bytes(min(left, 1 << 20)))
                        left -= min(left, 1 << 20)
            else:
                z.writestr(zipfile.ZipInfo(name), data, compress_type=ctype)
    return out.getvalue()


def mutate(blob, rnd):
    try:
        members = read_zip(blob)
    except Exception:  # noqa: BLE001 - not a readable zip any more: flip bytes
        members = None
    if members is None or rnd.random() < 0.08:
        b = bytearray(blob)
        for _ in range(rnd.randint(1, 16)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        return bytes(b)
    pk = [k for k, m in enumerate(members) if m[0].endswith("data.pkl")]
    r = rnd.random()
    if pk and r < 0.6:
        k = pk[0]
        name, data, ctype = members[k]
        members[k] = (name, mutate_pickle(data, rnd), ctype)
    elif r < 0.7:
        del members[rnd.randrange(len(members))]
    elif r < 0.78:
        k = rnd.randrange(len(members))
        members[k] = (members[k][0] + rnd.choice(["x", "/", "/../a"]), members[k][1], members[k][2])
    elif r < 0.86:
        k = rnd.randrange(len(members))
        d = members[k][1]
        members[k] = (members[k][0], d[:rnd.randrange(len(d) + 1)] if not isinstance(d, int) else d, members[k][2])
    elif r < 0.93:
        k = rnd.randrange(len(members))
        members[k] = (members[k][0], members[k][1], zipfile.ZIP_DEFLATED)
    else:
        stem = members[0][0].split("/")[0]
        members.append((stem + "/data/" + rnd.choice(["0", "1", "99", "big"]), rnd.choice([1 << 20, 64 << 20]), 0))
    return write_zip(members)


def run_one(path, out, mem_mb):
    """Convert path in a forked child; (status or -signal, stderr text, peak RSS kB, seconds)."""
    err_r, err_w = os.pipe()
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        os.dup2(err_w, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
        signal.alarm(10)
        try:
            rc = ckpt2bin.main([path, out, "--quiet"])
        except BaseException:  # noqa: BLE001 - main should never raise; exit 3 marks it
            rc = 3
        sys.stderr.flush()
        os._exit(rc)
    os.close(err_w)
    chunks = []
    while True:
        c = os.read(err_r, 65536)
        if not c:
            break
        chunks.append(c)
    os.close(err_r)
    _, status, ru = os.wait4(pid, 0)
    st = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    return st, b"".join(chunks).decode("utf-8", "replace"), ru.ru_maxrss, time.time() - t0


def judge(st, err, rss_kb, out, max_rss_mb):
    lines = [l for l in err.splitlines() if ": warning: " not in l]
    if st < 0:
        return "killed by signal %d%s" % (-st, " (alarm: over 10 s)" if st == -signal.SIGALRM else "")
    if st not in (0, 1):
        return "exit status %d" % st
    if any(ch < " " and ch != "\n" or ch == "\x7f" for ch in err):
        return "control character in the messages"
    if rss_kb > max_rss_mb * 1024:
        return "peak RSS %d MB" % (rss_kb // 1024)
    if st == 1:
        if len(lines) != 1:
            return "%d error lines" % len(lines)
        if "internal error" in lines[0] or "out of memory" in lines[0]:
            return lines[0]
        if os.path.exists(out):
            return "output left behind by a failure"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seeds", nargs="*")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mem-mb", type=int, default=1024)
    ap.add_argument("--max-rss-mb", type=int, default=256)
    ap.add_argument("--keep", default=os.path.join(ROOT, "build", "fuzz", "ckpt2bin_findings"))
    a = ap.parse_args()
    warnings.simplefilter("ignore")  # zipfile's duplicate-name warnings: duplicates are wanted here
    paths = a.seeds or sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "golden", "*.ckpt")))
    tmp = tempfile.mkdtemp(prefix="oard-fuzz-ckpt-")
    seeds = [open(p, "rb").read() for p in paths]
    for p in paths:  # the hostile variants of each denoiser seed
        for case in ("bytearray", "stride0", "timesteps", "num_layers", "control_name"):
            hp = os.path.join(tmp, "seed_%s.ckpt" % case)
            sys.argv = ["hostile_ckpt.py", p, hp, case]
            try:
                hostile_ckpt.main()
            except KeyError:  # e.g. no timesteps in a confidence model
                continue
            seeds.append(open(hp, "rb").read())
    rnd = random.Random(a.seed)
    t_end = time.time() + a.seconds
    n = findings = peak = 0
    kinds = {}
    while time.time() < t_end:
        blob = rnd.choice(seeds)
        for _ in range(rnd.randint(1, 3)):
            blob = mutate(blob, rnd)
        path, out = os.path.join(tmp, "in.ckpt"), os.path.join(tmp, "out.bin")
        with open(path, "wb") as f:
            f.write(blob)
        if os.path.exists(out):
            os.unlink(out)
        st, err, rss, sec = run_one(path, out, a.mem_mb)
        n += 1
        peak = max(peak, rss)
        first = (err.strip().splitlines() or [""])[-1]
        kinds[st] = kinds.get(st, 0) + 1
        why = judge(st, err, rss, out, a.max_rss_mb)
        if why:
            findings += 1
            os.makedirs(a.keep, exist_ok=True)
            keep = os.path.join(a.keep, "finding-%d.ckpt" % findings)
            with open(keep, "wb") as f:
                f.write(blob)
            print("FINDING %d: %s (%s; %.1f s, %d MB): %s" % (findings, why, keep, sec, rss // 1024, first[:300]))
        if st == 0 and rnd.random() < 0.2 and len(seeds) < 64:
            seeds.append(blob)  # a mutant that converts is a seed for further ones
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
    print("fuzz_ckpt2bin: %d inputs in %.0f s (seed %d): %d converted, %d refused, %d findings; peak RSS of a child %d MB"
          % (n, a.seconds, a.seed, kinds.get(0, 0), kinds.get(1, 0), findings, peak // 1024))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
