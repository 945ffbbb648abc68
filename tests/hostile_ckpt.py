#!/usr/bin/env python3
"""Hostile checkpoints for tools/ckpt2bin.py, made from a good one (stdlib only).

    python3 tests/hostile_ckpt.py GOOD.ckpt OUT.ckpt CASE

Edits the good checkpoint's data.pkl at the level of pickle opcodes (pickletools) and
rewrites the zip. CASE:
    bytearray        a metadata value becomes builtins.bytearray(1_450_000_000)
    zip_bomb         an extra state_dict tensor of 50,000,000 float32 zeros whose storage
                     is a deflated member (about 200 kB in the file, 200 MB unpacked)
    pickle_bomb      data.pkl itself deflated and declared 100 MB (padding after STOP)
    stride0          an extra tensor of 1e12 elements with stride 0 on a 1-element storage
    timesteps        hyper_parameters timesteps = 1e9
    num_layers       model_config num_layers = 1e6
    control_name     a first state_dict tensor named with a terminal escape and a newline
    memo_bomb        a LONG_BINPUT of index 2^25 (the C unpickler sizes its memo by it)
    int_size         the first tensor's size tuple replaced by an integer
Used by tests/test_hostile.sh (defects 9 and 10 of issue 20) and as seeds of
tests/fuzz/fuzz_ckpt2bin.py.
"""
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib


def pickle_int(v):
    if -2 ** 31 <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def unicode_op(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def ops(raw):
    return [(op.name, arg, pos) for op, arg, pos in pickletools.genops(raw)]


def value_span(raw, key):
    """(start, end) of the opcode holding the value stored under the string key."""
    L = ops(raw)
    for i, (name, arg, pos) in enumerate(L):
        if name in ("BINUNICODE", "SHORT_BINUNICODE") and arg == key:
            j = i + 1
            while L[j][0] in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                j += 1
            return L[j][2], L[j + 1][2]
    raise KeyError(key)


def replace_value(raw, key, new):
    a, b = value_span(raw, key)
    return raw[:a] + new + raw[b:]


def tensor_entry(name, key, numel, size, stride):
    """state_dict item: name -> _rebuild_tensor_v2(storage key, 0, size, stride, False, {})."""
    tup = lambda items: b"(" + b"".join(items) + b"t"
    pid = tup([unicode_op("storage"), b"ctorch\nFloatStorage\n", unicode_op(key), unicode_op("cpu"),
               pickle_int(numel)]) + b"Q"
    args = tup([pid, pickle_int(0), tup([pickle_int(v) for v in size]), tup([pickle_int(v) for v in stride]),
                b"\x89", b"ccollections\nOrderedDict\n)R"])
    return unicode_op(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def add_tensor(raw, entry):
    """Insert a state_dict item first (after the MARK that opens its SETITEMS)."""
    L = ops(raw)
    for i, (name, arg, pos) in enumerate(L):
        if name in ("BINUNICODE", "SHORT_BINUNICODE") and arg == "state_dict":
            for n2, a2, p2 in L[i + 1:]:
                if n2 == "MARK":
                    return raw[:p2 + 1] + entry + raw[p2 + 1:]
    raise KeyError("state_dict")


def main():
    good, out, case = sys.argv[1:4]
    zin = zipfile.ZipFile(good)
    pkl = [n for n in zin.namelist() if n.endswith("/data.pkl")][0]
    prefix = pkl[: -len("data.pkl")]
    raw = zin.read(pkl)
    extra = {}  # member -> (bytes or (size of zeros,), compress type)
    pkl_compress = zipfile.ZIP_STORED
    if case == "bytearray":
        raw = replace_value(raw, "pytorch-lightning_version", b"cbuiltins\nbytearray\n" + pickle_int(1450000000) + b"\x85R")
    elif case == "zip_bomb":
        raw = add_tensor(raw, tensor_entry("ddpm.bomb", "bomb", 50000000, (50000000,), (1,)))
        extra[prefix + "data/bomb"] = ((200000000,), zipfile.ZIP_DEFLATED)
    elif case == "pickle_bomb":
        raw = raw + bytes(100000000)  # ignored after STOP by an unpickler, but declared and inflated
        pkl_compress = zipfile.ZIP_DEFLATED
    elif case == "stride0":
        raw = add_tensor(raw, tensor_entry("ddpm.broadcast", "b0", 1, (1000000, 1000000), (0, 0)))
        extra[prefix + "data/b0"] = (bytes(4), zipfile.ZIP_STORED)
    elif case == "timesteps":
        raw = replace_value(raw, "timesteps", pickle_int(10 ** 9))
    elif case == "num_layers":
        raw = replace_value(raw, "num_layers", pickle_int(10 ** 6))
    elif case == "control_name":
        raw = add_tensor(raw, tensor_entry("\x1b[2J\nevil.weight", "c0", 1, (1,), (1,)))
        extra[prefix + "data/c0"] = (bytes(4), zipfile.ZIP_STORED)
    elif case == "memo_bomb":
        raw = raw[:2] + b"N" + b"r" + struct.pack("<I", 1 << 25) + b"0" + raw[2:]  # None, LONG_BINPUT, POP
    elif case == "int_size":
        L = ops(raw)
        k = next(i for i, o in enumerate(L) if o[0] == "BINPERSID") + 1  # the storage offset
        while L[k + 1][0] in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            k += 1
        end = next(i for i in range(k + 1, len(L)) if L[i][0] in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"))
        raw = raw[:L[k + 1][2]] + pickle_int(7) + raw[L[end + 1][2]:]
    else:
        sys.exit("unknown case " + case)
    pickle.loads  # the edited pickle is not loaded here: it is hostile by design
    with zipfile.ZipFile(out, "w", allowZip64=True) as zout:
        for info in zin.infolist():
            data = raw if info.filename == pkl else zin.read(info.filename)
            zout.writestr(zipfile.ZipInfo(info.filename), data,
                          compress_type=pkl_compress if info.filename == pkl else zipfile.ZIP_STORED)
        for name, (data, ctype) in extra.items():
            zi = zipfile.ZipInfo(name)
            zi.compress_type = ctype
            if isinstance(data, tuple):  # that many zeros, streamed into the member
                with zout.open(zi, "w", force_zip64=True) as f:
                    chunk = bytes(1 << 20)
                    left = data[0]
                    while left:
                        f.write(chunk[:min(left, len(chunk))])
                        left -= min(left, len(chunk))
            else:
                zout.writestr(zi, data)


if __name__ == "__main__":
    main()
