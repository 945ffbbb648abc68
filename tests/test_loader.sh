#!/usr/bin/env bash
# test_loader.sh - the weights loader refuses corrupted files with one clear line.
#
#   bash tests/test_loader.sh OA_REACTDIFF_BINARY GOOD_DENOISER.bin [CONFIDENCE.bin]
#
# Builds corrupted copies of GOOD_DENOISER.bin (docs/weights_format.md) in a temporary
# directory with python3 (stdlib only) and runs `OA_REACTDIFF_BINARY info FILE` on each.
# Every corrupted file must give a non-zero exit status and exactly one line on stderr that
# names the file and contains the keyword(s) of its problem. Where a corruption would also
# trip an earlier check (the CRC), the CRC is recomputed so that only the intended check
# can fire. The good file itself must load (exit 0, nothing on stderr): the harness's
# positive control. With CONFIDENCE.bin (a good confidence model) it must load with `info`,
# and `ts ... --weights CONFIDENCE.bin` (which needs a denoiser; the weights are loaded before
# the xyz files are read) must be refused naming the file and both kinds. One PASS/FAIL/SKIP
# line per case; exit status 1 if any case fails.
set -u

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: bash tests/test_loader.sh OA_REACTDIFF_BINARY GOOD_DENOISER.bin [CONFIDENCE.bin]" >&2
    exit 2
fi
BIN=$1
GOOD=$2
CONF=${3:-}
PYTHON=${PYTHON:-python3}
if [ ! -x "$BIN" ]; then echo "test_loader: $BIN: not an executable" >&2; exit 2; fi
if [ ! -f "$GOOD" ]; then echo "test_loader: $GOOD: no such file" >&2; exit 2; fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/oard-loader.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT

# Write the corrupted variants, each a full, otherwise consistent file. Their names (w1..w9)
# are neutral so that no keyword can be matched by the file name.
"$PYTHON" - "$GOOD" "$TMP" <<'PYEOF' || { echo "FAIL test_loader: could not build the corrupted files"; exit 1; }
import struct, sys, zlib

good, out = sys.argv[1], sys.argv[2]
raw = open(good, "rb").read()
HDR = 64

def u32(b, o): return struct.unpack_from("<I", b, o)[0]
def u64(b, o): return struct.unpack_from("<Q", b, o)[0]

def fix_crc(b):
    b = bytearray(b)
    struct.pack_into("<I", b, 56, zlib.crc32(bytes(b[:56]) + bytes(b[60:])) & 0xFFFFFFFF)
    return bytes(b)

assert raw[:8] == b"OARDIFF\0", "good file has no OARDIFF magic"
assert fix_crc(raw) == raw, "good file's CRC does not verify with zlib.crc32"
meta_off, meta_size, data_off = u64(raw, 16), u64(raw, 24), u64(raw, 32)
assert meta_off == HDR
meta_lines = raw[meta_off:meta_off + meta_size].decode("utf-8").split("\n")
assert meta_lines[-1] == ""
meta_lines = meta_lines[:-1]
data = raw[data_off:]

def rebuild(lines, data, kind=None):
    """A complete file from metadata lines and a data section (tensor offsets are relative
    to the data section, so moving it keeps them valid)."""
    meta = ("\n".join(lines) + "\n").encode("utf-8")
    d_off = (HDR + len(meta) + 63) // 64 * 64
    b = bytearray(d_off + len(data))
    b[:HDR] = raw[:HDR]
    b[HDR:HDR + len(meta)] = meta
    b[d_off:] = data
    n_t = sum(1 for l in lines if l.startswith("tensor "))
    struct.pack_into("<QQQQQ", b, 16, HDR, len(meta), d_off, len(data), len(b))
    struct.pack_into("<I", b, 60, n_t)
    if kind is not None:
        struct.pack_into("<I", b, 12, kind)
    return fix_crc(b)

def write(name, b):
    open(out + "/" + name, "wb").write(b)

# rebuilding without changes must reproduce the good file (checks rebuild itself)
assert rebuild(meta_lines, data) == raw, "rebuild() does not reproduce the good file"

# bad magic
b = bytearray(raw); b[0:8] = b"NOTOARD\0"; write("w1.bin", b)
# unsupported version, CRC fixed so only the version check fires
b = bytearray(raw); struct.pack_into("<I", b, 8, 2); write("w2.bin", fix_crc(b))
# truncated (last 100 bytes missing)
write("w3.bin", raw[:-100])
# one flipped bit in a tensor data byte: checksum mismatch
b = bytearray(raw); b[data_off + 100] ^= 0x10; write("w4.bin", b)
# header kind says confidence, metadata says denoiser; CRC fixed
b = bytearray(raw); struct.pack_into("<I", b, 12, 2); write("w5.bin", fix_crc(b))

tensors = [i for i, l in enumerate(meta_lines) if l.startswith("tensor ")]
def tline(name):
    for i in tensors:
        if meta_lines[i].split()[1] == name:
            return i
    raise SystemExit("tensor %s not in the good file" % name)

# a required tensor missing (line dropped; n_tensors, sizes, CRC fixed)
i = tline("ddpm.dynamics.model.embedding.bias")
write("w6.bin", rebuild(meta_lines[:i] + meta_lines[i + 1:], data))

# an extra tensor: a copy of embedding.bias under a new name, with its own data
i = tline("ddpm.dynamics.model.embedding.bias")
f = meta_lines[i].split()
off, nb = int(f[3]), int(f[4])
pad = (-len(data)) % 64
extra = data + b"\0" * pad + data[off:off + nb]
line = " ".join(["tensor", "ddpm.dynamics.model.extra_bias", f[2], str(len(data) + pad), str(nb)] + f[5:])
write("w7.bin", rebuild(meta_lines + [line], extra))

# a wrong shape with the same element count: embedding.weight (16, 8) -> (8, 16)
i = tline("ddpm.dynamics.model.embedding.weight")
f = meta_lines[i].split()
assert f[5] == "2" and f[6] != f[7], "embedding.weight is not a non-square matrix: %s" % meta_lines[i]
lines = list(meta_lines)
lines[i] = " ".join(f[:6] + [f[7], f[6]])
write("w8.bin", rebuild(lines, data))
PYEOF

fails=0
# run_case NAME FILE KEYWORD...: `BIN info FILE` must fail with one stderr line naming FILE
# and every keyword. With CMD set (an array), runs "${CMD[@]}" instead of `BIN info FILE`.
CMD=()
run_case() {
    local name=$1 file=$2
    shift 2
    if [ ${#CMD[@]} -gt 0 ]; then
        "${CMD[@]}" >"$TMP/stdout" 2>"$TMP/stderr"
    else
        "$BIN" info "$file" >"$TMP/stdout" 2>"$TMP/stderr"
    fi
    local rc=$?
    local nlines line problem=""
    nlines=$(wc -l <"$TMP/stderr")
    line=$(head -n 1 "$TMP/stderr")
    [ "$rc" -ne 0 ] || problem="exit status 0"
    [ -z "$problem" ] && [ "$nlines" -ne 1 ] && problem="$nlines lines on stderr, expected 1"
    [ -z "$problem" ] && ! grep -qF -- "$file" "$TMP/stderr" && problem="file name not mentioned"
    # keywords are looked for in the message with the file name taken out
    local msg=${line//"$file"/}
    for kw in "$@"; do
        [ -z "$problem" ] && ! grep -qiF -- "$kw" <<<"$msg" && problem="keyword '$kw' not mentioned"
    done
    if [ -z "$problem" ]; then
        echo "PASS loader $name: exit $rc, stderr: $line"
    else
        echo "FAIL loader $name: $problem (exit $rc); stderr was:"
        sed 's/^/    /' "$TMP/stderr"
        fails=$((fails + 1))
    fi
}

# positive control: the good file loads, nothing on stderr
if "$BIN" info "$GOOD" >"$TMP/stdout" 2>"$TMP/stderr" && [ ! -s "$TMP/stderr" ]; then
    echo "PASS loader good file: exit 0, $(head -n 1 "$TMP/stdout")"
else
    echo "FAIL loader good file: did not load cleanly:"
    sed 's/^/    /' "$TMP/stderr"
    fails=$((fails + 1))
fi

run_case "bad magic" "$TMP/w1.bin" magic
run_case "wrong version" "$TMP/w2.bin" version
run_case "truncated" "$TMP/w3.bin" truncated
run_case "flipped data byte" "$TMP/w4.bin" checksum
run_case "header kind disagrees with metadata" "$TMP/w5.bin" kind
if [ -z "$CONF" ]; then
    echo "SKIP loader confidence model where a denoiser is needed: no confidence model given"
elif ! "$BIN" --help 2>&1 | grep -q -- "ts REACTANT.xyz PRODUCT.xyz.*--weights\|--weights FILE"; then
    echo "SKIP loader confidence model where a denoiser is needed: the binary has no 'ts ... --weights'"
else
    if "$BIN" info "$CONF" >"$TMP/stdout" 2>"$TMP/stderr" && grep -q "confidence" "$TMP/stdout"; then
        echo "PASS loader good confidence model: exit 0, $(grep -m1 kind "$TMP/stdout")"
    else
        echo "FAIL loader good confidence model: 'info' did not load it as a confidence model:"
        sed 's/^/    /' "$TMP/stderr" "$TMP/stdout"
        fails=$((fails + 1))
    fi
    # the xyz files do not exist: the weights are loaded (and refused) before they are read
    CMD=("$BIN" ts "$TMP/none_R.xyz" "$TMP/none_P.xyz" --weights "$CONF")
    run_case "confidence model where a denoiser is needed (ts --weights)" "$CONF" confidence denoiser
    CMD=()
fi
run_case "missing tensor" "$TMP/w6.bin" missing ddpm.dynamics.model.embedding.bias
run_case "extra tensor" "$TMP/w7.bin" unexpected ddpm.dynamics.model.extra_bias
run_case "wrong shape" "$TMP/w8.bin" shape ddpm.dynamics.model.embedding.weight
run_case "file does not exist" "$TMP/w9.bin" "cannot open"

if [ "$fails" -ne 0 ]; then
    echo "test_loader: $fails case(s) failed"
    exit 1
fi
echo "test_loader: all cases passed"
