#!/usr/bin/env bash
# test_hostile.sh - deliberate and unlucky input (issue 20): one test per defect an outside
# probe found, named "D<n> ..." after the issue's numbered list, each failing on the code
# before the fix (commit 0cf96bf) and passing now.
#
#   bash tests/test_hostile.sh [BINARY] [CONFIDENCE_WEIGHTS] [DENOISER_WEIGHTS]
#
# A refusal must exit with its status, print one error line (naming the file and the
# problem), write nothing; where the issue measured memory (defects 7-9) the peak resident
# size of the refusing process is measured with /usr/bin/time -v and must stay under
# 100 MB (printed with the wall time). Commands that a defect made hang or eat memory run
# under `timeout` and `ulimit -v`, so that the old code fails here instead of taking the
# machine. DENOISER_WEIGHTS (default build/tiny.bin) is the file the crafted weights start
# from; the repository's weights_diffusion.bin runs the commands.
set -u
. "$(dirname "$0")/cli_env.sh" hostile "$@"
TINY=$(cd "$ROOT" && realpath "${3:-build/tiny.bin}")
W=$ROOT/weights_diffusion.bin # the diffusion model: -n, --steps, --resamplings apply to it
R=$ROOT/examples/vinyl_alcohol_react.xyz
P=$ROOT/examples/vinyl_alcohol_prod.xyz
Q="--steps 4 --resamplings 1 --jump 1"
TIMEV=/usr/bin/time # also used by expect_failure when MAX_RSS_KB is set
MAXKB=102400 # 100 MB
# Under AddressSanitizer (make test-sanitize) the shadow memory and quarantine make peak
# RSS meaningless and `ulimit -v` impossible: those parts are skipped there.
SAN=${ASAN_OPTIONS:+1}
MALLOC_DEBUG=$(ls /usr/lib/*/libc_malloc_debug.so.0 2>/dev/null | head -1)

# refuse NAME STATUS MESSAGE -- COMMAND...: expect_failure (cli_env.sh: the status, one
# error line with MESSAGE and no control character, nothing written) with the peak RSS
# measured and held under 100 MB, except under AddressSanitizer
[ -z "$SAN" ] && MAX_RSS_KB=$MAXKB
refuse() {
    local name=$1 want=$2 pat=$3
    shift 4
    expect_failure "$name" "$want" "$pat" no-output.xyz -- "$@"
}

# craft KIND OUT [ARGS]: a weights file made from $TINY, metadata lines edited, CRC repaired
craft() {
    "$PYTHON" - "$TINY" "$@" <<'EOF'
import struct, sys, zlib
src, kind, out = sys.argv[1:4]
args = sys.argv[4:]
raw = bytearray(open(src, "rb").read())
meta_off, meta_size, data_off = struct.unpack_from("<QQQ", raw, 16)
lines = bytes(raw[meta_off:meta_off + meta_size]).decode().split("\n")
def setkey(key, value):
    for i, l in enumerate(lines):
        if l.startswith(key + " "):
            lines[i] = key + " " + value
            return
    raise SystemExit("no key " + key)
if kind == "offset":  # the largest tensor's offset, as text: near 2^64 (wraps) or "-19968"
    big = max((i for i, l in enumerate(lines) if l.startswith("tensor ")), key=lambda i: int(lines[i].split(" ")[4]))
    f = lines[big].split(" ")
    nbytes = int(f[4])
    assert nbytes >= 19968
    f[3] = args[0] if args else str(2 ** 64 - 64 * max(1, nbytes // 64))
    lines[big] = " ".join(f)
elif kind == "meta":
    setkey(args[0], args[1].encode().decode("unicode_escape"))
text = "\n".join(lines).encode("latin-1" if kind == "meta" else "ascii")
data = bytes(raw[data_off:])
new_meta = len(text)
new_data_off = (64 + new_meta + 63) // 64 * 64
out_b = bytearray(raw[:64]) + text + bytes(new_data_off - 64 - new_meta) + data
struct.pack_into("<QQQQQ", out_b, 16, 64, new_meta, new_data_off, len(data), len(out_b))
struct.pack_into("<I", out_b, 56, zlib.crc32(bytes(out_b[:56]) + bytes(out_b[60:])) & 0xFFFFFFFF)
open(out, "wb").write(out_b)
EOF
}

echo "== memory safety (defects 1-4)"
craft offset wrap.bin
refuse "D1 weights: the largest tensor's offset near 2^64 (offset + nbytes wraps)" 4 "lies outside the data section" -- "$BIN" info wrap.bin
craft offset neg.bin -19968
refuse "D1 weights: the largest tensor's offset '-19968' (read by %llu as 2^64 - 19968)" 4 "lies outside the data section" -- "$BIN" info neg.bin

rm -rf ck && "$BIN" train --data "$ROOT/tests/fixtures/train" --init "$TINY" --out ck --steps 1 --batch 2 2>/dev/null
"$PYTHON" - ck/checkpoint.bin <<'EOF'
import struct, sys, zlib
b = bytearray(open(sys.argv[1], "rb").read())
model_size = struct.unpack_from("<Q", b, 32)[0]
struct.pack_into("<Q", b, 24, 2 ** 64 - model_size // 64 * 64)  # model_off + model_size wraps to <= arrays_off
struct.pack_into("<I", b, 56, zlib.crc32(bytes(b[:56]) + bytes(b[60:])) & 0xFFFFFFFF)
open(sys.argv[1], "wb").write(b)
EOF
refuse "D2 checkpoint: model offset near 2^64 (model_off + model_size wraps)" 4 "inconsistent checkpoint header" -- \
    "$BIN" train --out ck --resume --steps 2

# the metadata of this configuration is a multiple of 64 bytes long: image_build's last
# sprintf wrote its NUL one byte past the block (ASan in the sanitizer suite; glibc's
# malloc checking, where its debug library exists, here)
rm -rf ic
if [ -n "$MALLOC_DEBUG" ] && [ -z "$SAN" ]; then
    env LD_PRELOAD="$MALLOC_DEBUG" MALLOC_CHECK_=3 "$BIN" train --data "$ROOT/tests/fixtures/train" --out ic --steps 1 --batch 2 \
        --init-config layers=1,hidden=6,radial=5,pos_grad=1,cutoff=10 >/dev/null 2>ic.err
else
    "$BIN" train --data "$ROOT/tests/fixtures/train" --out ic --steps 1 --batch 2 \
        --init-config layers=1,hidden=6,radial=5,pos_grad=1,cutoff=10 >/dev/null 2>ic.err
fi
st=$?
if [ $st -eq 0 ] && [ -s ic/model.bin ]; then
    pass "D3 init-config: metadata a multiple of 64 bytes (layers=1,hidden=6,radial=5,pos_grad=1,cutoff=10): trains$([ -n "$MALLOC_DEBUG" ] && [ -z "$SAN" ] && echo ' under MALLOC_CHECK_=3')"
else
    bad "D3 init-config: metadata a multiple of 64 bytes: exit $st: $(head -c 300 ic.err)"
fi

craft meta nfs.bin node_nfs 1e10,9,9
refuse "D4 weights: node_nfs 1e10 (float-to-int out of range)" 4 "'node_nfs' = '1e10,9,9' is not a list of 3 integers" -- "$BIN" info nfs.bin

echo "== files (defects 5, 6)"
# plant a symbolic link at every name the old code could choose (PATH.tmp.<pid> for the
# next 400 process ids), each pointing to a victim file: nothing may follow them
plant() { # plant PATH...: one process, the next command's pid follows its own
    "$PYTHON" -c '
import os, sys
p0 = os.getpid()
for f in sys.argv[1:]:
    for p in range(p0 + 1, p0 + 401):
        if not os.path.lexists("%s.tmp.%d" % (f, p)):
            os.symlink(os.path.abspath("victim"), "%s.tmp.%d" % (f, p))' "$@"
}
echo original >victim
umask 027
plant out.xyz
"$BIN" ts "$R" "$P" --weights "$W" $Q -o out.xyz 2>/dev/null
st=$?
if [ $st -eq 0 ] && [ "$(cat victim)" = original ] && [ -f out.xyz ] && [ ! -L out.xyz ] && [ "$(stat -c %a out.xyz)" = 640 ]; then
    pass "D5 ts: symbolic links planted at PATH.tmp.<pid> not followed; out.xyz a regular file with mode 640 (umask 027)"
else
    bad "D5 ts: exit $st, victim '$(head -c 40 victim)', out.xyz $(stat -c '%F %a' out.xyz 2>&1)"
fi
rm -f out.xyz.tmp.*
mkdir -p batch
printf '%s %s r1\n' "$R" "$P" >list.txt
plant batch/r1.xyz
"$BIN" ts --list list.txt --outdir batch --weights "$W" $Q 2>/dev/null
st=$?
if [ $st -eq 0 ] && [ "$(cat victim)" = original ] && [ -f batch/r1.xyz ] && [ ! -L batch/r1.xyz ]; then
    pass "D5 ts --list: planted links not followed, batch/r1.xyz written"
else
    bad "D5 ts --list: exit $st, victim '$(head -c 40 victim)'"
fi
rm -f batch/r1.xyz.tmp.*
mkdir -p tr
plant tr/train.log tr/val.log tr/checkpoint.bin tr/model.bin
"$BIN" train --data "$ROOT/tests/fixtures/train" --init "$TINY" --out tr --steps 2 --batch 2 2>/dev/null
st=$?
if [ $st -eq 0 ] && [ "$(cat victim)" = original ] && [ ! -L tr/train.log ] && [ -f tr/model.bin ]; then
    pass "D5 train: planted links not followed; train.log, checkpoint.bin, model.bin regular files"
else
    bad "D5 train: exit $st, victim '$(head -c 40 victim)', train.log $(stat -c %F tr/train.log 2>&1)"
fi
rm -f tr/*.tmp.*
umask 022

mkfifo fifo.xyz
refuse "D6 output: -o names a FIFO" 1 "fifo.xyz: exists and is a FIFO" -- "$BIN" ts "$R" "$P" --weights "$W" $Q -o fifo.xyz
[ -p fifo.xyz ] && pass "D6 output: the FIFO is still a FIFO" || bad "D6 output: the FIFO was replaced"
ln -s /proc/self/fd/1 stdout.xyz
refuse "D6 output: -o names a symbolic link to /proc/self/fd/1" 1 "stdout.xyz: exists and is a symbolic link" -- \
    "$BIN" ts "$R" "$P" --weights "$W" $Q -o stdout.xyz
[ -L stdout.xyz ] && pass "D6 output: the link is still a link" || bad "D6 output: the link was replaced"
# before any work: with a memory limit of 1 byte the sampler refuses at once (exit 5), so
# an output refused with exit 1 was checked first
export OA_REACTDIFF_MAX_MEMORY=1
refuse "D6 output: unwritable -o refused before sampling" 1 "nodir/out.xyz: cannot write: No such file or directory" -- \
    "$BIN" ts "$R" "$P" --weights "$W" $Q -o nodir/out.xyz
: >afile
refuse "D6 output: --outdir is a file, refused before sampling" 1 "afile: not a directory" -- \
    "$BIN" ts --list list.txt --outdir afile --weights "$W" $Q
ln -s nowhere/dir dangling
refuse "D6 output: --outdir is a dangling link, refused before sampling" 1 "dangling: cannot create directory" -- \
    "$BIN" ts --list list.txt --outdir dangling --weights "$W" $Q
n250=$(printf 'a%.0s' $(seq 250))
printf '%s %s %s\n' "$R" "$P" "$n250" >long.txt
refuse "D6 output: a 250-character name refused before sampling (its temporary file would not fit)" 3 "has 250 characters" -- \
    "$BIN" ts --list long.txt --outdir out250 --weights "$W" $Q
n300a=$(printf 'b%.0s' $(seq 300))x
n300b=$(printf 'b%.0s' $(seq 300))y
printf '%s %s %s\n%s %s %s\n' "$R" "$P" "$n300a" "$R" "$P" "$n300b" >long2.txt
refuse "D6 output: 301-character names equal in their first 255 are not duplicates, but too long" 3 "has 301 characters" -- \
    "$BIN" ts --list long2.txt --outdir out300 --weights "$W" $Q
unset OA_REACTDIFF_MAX_MEMORY

echo "== memory and time before refusal (defects 7, 8)"
export OA_REACTDIFF_MAX_MEMORY=1G
refuse "D7 ts -n 1000000: estimated before the inputs are filled" 5 "system too large" -- \
    timeout 60 "$BIN" ts "$R" "$P" --weights "$W" -n 1000000 -o big.xyz
refuse "D7 sample --atoms C50H50 -n 1000000: estimated before the inputs are filled" 5 "system too large" -- \
    timeout 60 "$BIN" sample --atoms C50H50 -n 1000000 --weights "$W" -o big
refuse "D7 ts --steps 1000000 --resamplings 500 --jump 1: the RePaint list is in the estimate" 5 "RePaint need about" -- \
    timeout 60 "$BIN" ts "$R" "$P" --weights "$W" --steps 1000000 --resamplings 500 --jump 1 -o big.xyz
unset OA_REACTDIFF_MAX_MEMORY
# the failure path: the estimate allowed (limit 1 TB), the RePaint list (10^9 entries, 4 GB)
# cannot be allocated under a 3 GB address-space cap: "out of memory", exit 5, no output
if [ -z "$SAN" ]; then
    (ulimit -v 3000000; OA_REACTDIFF_MAX_MEMORY=1000G exec timeout 60 "$BIN" ts "$R" "$P" --weights "$W" --steps 1000000 \
        --resamplings 1000 --jump 1 -o oom.xyz) >/dev/null 2>oom.err
    st=$?
    if [ $st -eq 5 ] && grep -q "out of memory (RePaint schedule" oom.err && [ "$(wc -l <oom.err)" -eq 1 ] && [ ! -e oom.xyz ]; then
        pass "D7 failed RePaint allocation (ulimit -v 3 GB): exit 5, '$(cat oom.err)', no output"
    else
        bad "D7 failed RePaint allocation: exit $st, '$(head -c 300 oom.err)'"
    fi
else
    echo "  SKIP  D7 failed RePaint allocation: ulimit -v is not possible under AddressSanitizer"
fi

mkdir -p wdir.bin
refuse "D8 weights: a directory" 1 "wdir.bin: cannot read: Is a directory" -- "$BIN" info wdir.bin
mkfifo wfifo.bin
refuse "D8 weights: a FIFO (no writer: the old code waited forever)" 1 "wfifo.bin: not a regular file" -- timeout 20 "$BIN" info wfifo.bin
truncate -s 3G zeros.bin # sparse: no disk space used
refuse "D8 weights: 3 GB of zeros, refused from the header" 4 "zeros.bin: not an oa_reactdiff weights file (bad magic)" -- \
    timeout 60 "$BIN" info zeros.bin
rm -f zeros.bin

echo "== the converter (defects 9, 10)"
CK=$ROOT/tests/fixtures/golden/tiny.ckpt
conv() { (ulimit -v 4000000 2>/dev/null; exec timeout 60 "$PYTHON" "$ROOT/tools/ckpt2bin.py" "$@"); }
for c in bytearray zip_bomb pickle_bomb stride0 timesteps num_layers control_name memo_bomb int_size; do
    "$PYTHON" "$ROOT/tests/hostile_ckpt.py" "$CK" "h_$c.ckpt" $c || bad "D9 could not build h_$c.ckpt"
done
# the warning about an unused tensor comes first where there is one: only the error line is checked
convrefuse() { # NAME MESSAGE CASE
    local name=$1 pat=$2 c=$3 rss="" wall="" st
    if [ -x "$TIMEV" ]; then
        "$TIMEV" -v -o time.txt bash -c "ulimit -v 4000000; exec timeout 60 '$PYTHON' '$ROOT/tools/ckpt2bin.py' h_$c.ckpt h_$c.bin --quiet" 2>err.txt
        st=$(awk -F'status ' '/Command exited with non-zero status/ {print $2}' time.txt)
        st=${st:-0}
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' time.txt)
        wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' time.txt)
    else
        conv "h_$c.ckpt" "h_$c.bin" --quiet 2>err.txt
        st=$?
    fi
    local msg
    msg=$(grep -v ": warning: " err.txt | head -1)
    if [ "$st" -ne 1 ] || ! grep -qF -- "$pat" <<<"$msg" || [ "$(grep -vc ': warning: ' err.txt)" -ne 1 ] || [ -e "h_$c.bin" ]; then
        bad "$name: exit $st, '$(head -c 300 err.txt | cat -v)'"
    elif LC_ALL=C grep -q "[[:cntrl:]]" <(tr -d '\n' <err.txt); then
        bad "$name: a control character in: $(cat -v err.txt)"
    elif [ -n "$rss" ] && [ "$rss" -gt "$MAXKB" ]; then
        bad "$name: peak RSS $((rss / 1024)) MB before refusing, over 100 MB"
    else
        pass "$name: '$msg'${rss:+ (peak RSS $((rss / 1024)) MB, $wall s)}"
    fi
}
convrefuse "D9 converter: builtins.bytearray(1450000000) in data.pkl" "unexpected bytearray(int)" bytearray
convrefuse "D9 converter: zip bomb (200 MB of zeros deflated into an extra tensor)" "a zip bomb or broadcast tensors?" zip_bomb
convrefuse "D9 converter: data.pkl declared 100 MB (deflated)" "declares 100054319 bytes" pickle_bomb
convrefuse "D9 converter: stride-0 tensor of 1e12 elements" "hold 4000000133152 bytes" stride0
convrefuse "D9 converter: timesteps 1e9" "timesteps is 1000000000 (1 to 1000000 supported)" timesteps
convrefuse "D9 converter: num_layers 1e6" "num_layers is 1000000 (1 to 32 supported)" num_layers
if [ -x "$TIMEV" ]; then # a valid pickle that puts None at memo index 2^25: converts, in little memory
    "$TIMEV" -v -o time.txt bash -c "ulimit -v 4000000; exec timeout 60 '$PYTHON' '$ROOT/tools/ckpt2bin.py' h_memo_bomb.ckpt h_memo_bomb.bin --quiet" 2>err.txt
    st=$?
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' time.txt)
    if [ $st -eq 0 ] && [ -s h_memo_bomb.bin ] && [ "$rss" -le "$MAXKB" ]; then
        pass "D9 converter: LONG_BINPUT 2^25 (found by tests/fuzz/fuzz_ckpt2bin.py): converts, peak RSS $((rss / 1024)) MB"
    else
        bad "D9 converter: LONG_BINPUT 2^25: exit $st, peak RSS $((${rss:-0} / 1024)) MB: $(head -c 200 err.txt)"
    fi
fi
convrefuse "D9 converter: a tensor size that is an integer (found by tests/fuzz/fuzz_ckpt2bin.py)" "has a malformed size/stride/offset" int_size
convrefuse "D10 converter: a tensor name with ESC and a newline is printed escaped" 'keys look like [\x1b[2J' control_name

craft meta esc.bin description 'evil\x1b]0;owned\x07\x1b[2J'
"$BIN" info esc.bin >info.txt 2>&1
st=$?
if [ $st -eq 0 ] && ! LC_ALL=C grep -q "[[:cntrl:]]" <(tr -d '\n' <info.txt) && grep -qF 'evil\x1b]0;owned\x07\x1b[2J' info.txt; then
    pass "D10 info: a description with terminal escapes printed escaped"
else
    bad "D10 info: exit $st: $(cat -v info.txt | grep description)"
fi
craft meta esc2.bin cutoff '\x1b[31mten'
refuse "D10 weights: an error quoting a value with a terminal escape" 4 "'cutoff' = '\x1b[31mten' is not a number" -- "$BIN" info esc2.bin

echo "== messages and parsers (defects 11, 12)"
craft meta sched.bin sampling_schedule cosinus
refuse "D11 weights: unknown sampling_schedule is the file's error" 4 "sched.bin: metadata 'sampling_schedule': unknown noise schedule 'cosinus'" -- \
    "$BIN" ts "$R" "$P" --weights sched.bin $Q -o out.xyz
refuse "D11 --shard 4294967296/4294967297 (wrapped to 0/1)" 2 "--shard: '4294967296/4294967297' is not I/N" -- \
    "$BIN" ts --list list.txt --outdir batch2 --weights "$W" $Q --shard 4294967296/4294967297

"$PYTHON" - "$R" <<'EOF'
import sys
lines = open(sys.argv[1]).read().split("\n")
lines[1] = "x" * 5000 + " C 0.0 0.0 0.0"  # a tail that reads as an atom if the line is split
open("longcomment.xyz", "w").write("\n".join(lines))
EOF
out=$("$BIN" rmsd longcomment.xyz "$R" --same-order 2>&1)
if [ "$out" = "0.00000000" ]; then
    pass "D12 xyz: a 5000-character comment line is skipped whole (rmsd to the file with a short comment: $out)"
else
    bad "D12 xyz: 5000-character comment: '$out'"
fi
"$PYTHON" - "$R" <<'EOF'
import sys
raw = open(sys.argv[1], "rb").read().split(b"\n")
raw[3] = raw[3][:4] + b"\0" + raw[3][4:]
open("nul.xyz", "wb").write(b"\n".join(raw))
EOF
refuse "D12 xyz: a NUL byte is reported as such" 3 "nul.xyz:4: NUL byte" -- "$BIN" rmsd nul.xyz "$R"

mkdir -p wide
cp -r "$ROOT/tests/fixtures/train/reactions" wide/
"$PYTHON" - "$ROOT/tests/fixtures/train/index.tsv" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
with open("wide/index.tsv", "w") as f:
    for r in rows:  # 70 filler columns first: id and split beyond column 64
        f.write("\t".join(["c%d" % k if r is rows[0] else "x" for k in range(70)] + r) + "\n")
EOF
rm -rf wtr
if "$BIN" train --data wide --init "$TINY" --out wtr --steps 1 --batch 2 >/dev/null 2>wtr.err && [ -s wtr/model.bin ]; then
    pass "D12 index.tsv: id and split in columns 71 and beyond are found"
else
    bad "D12 index.tsv: columns beyond 64: $(head -c 300 wtr.err)"
fi

"$PYTHON" - "$R" "$P" <<'EOF'
import sys
with open("big.txt", "w") as f:
    for i in range(200000):
        f.write("%s %s r%06d\n" % (sys.argv[1], sys.argv[2], i))
    f.write("%s %s r000007\n" % (sys.argv[1], sys.argv[2]))
EOF
refuse "D12 ts --list: 200,001 lines, a repeated name found by sorting (the old O(n^2) check took minutes)" 3 \
    "big.txt:200001: name 'r000007' is already used on line 8" -- timeout 60 "$BIN" ts --list big.txt --outdir bigout --weights "$W" $Q

echo
if [ "$fails" -ne 0 ]; then
    echo "test_hostile: $fails FAILED"
    exit 1
fi
echo "test_hostile: all passed"
