#!/usr/bin/env bash
# test_errors.sh - one test per row of the README's table of user-caused failures.
#
#   bash tests/test_errors.sh [BINARY] [CONFIDENCE_WEIGHTS]
#
# Each row: the failure is provoked as a user would, then the command must exit with the
# table's status, print exactly one error line on stderr ("oa_reactdiff: ..." naming the
# file and the problem; the untrained-weights warning aside) that contains the table's
# message, and leave no output file and no temporary file (expect_failure in cli_env.sh).
# Rows print ok/FAIL with the message seen. The row names are the README table's first column.
set -u
. "$(dirname "$0")/cli_env.sh" errors "$@"
R=$ROOT/examples/vinyl_alcohol_react.xyz
P=$ROOT/examples/vinyl_alcohol_prod.xyz
W=$ROOT/weights_diffusion.bin
export OA_REACTDIFF_WEIGHTS=$W # the rows run the diffusion method (the default weights.bin is a bridge model)
Q="--steps 8 --resamplings 1 --jump 1"

row() { expect_failure "$@"; } # one row of the README table

ts() { "$BIN" ts "$@" $Q -o out.xyz; }

# --- input files
row "missing file" 1 "missing.xyz: cannot open: No such file" out.xyz -- ts missing.xyz "$P"
: >empty.xyz
row "empty file" 3 "empty.xyz: empty file" out.xyz -- ts empty.xyz "$P"
mkdir -p adir.xyz
row "unreadable file (a directory)" 1 "adir.xyz: cannot read" out.xyz -- ts adir.xyz "$P"
if [ "$(id -u)" -ne 0 ]; then
    cp "$R" noperm.xyz && chmod 000 noperm.xyz
    row "unreadable file (no permission)" 1 "noperm.xyz: cannot open: Permission denied" out.xyz -- ts noperm.xyz "$P"
else
    echo "  SKIP  unreadable file (no permission): running as root, permissions do not apply"
fi
sed '1s/.*/7 atoms/' "$R" >count.xyz
row "wrong atom-count line" 3 "count.xyz:1: expected the atom count" out.xyz -- ts count.xyz "$P"
sed '1s/.*/9/' "$R" >short.xyz
row "atom count larger than the atoms" 3 "short.xyz: atom count says 9 atoms, file ends after 7" out.xyz -- ts short.xyz "$P"
sed '1s/.*/5/' "$R" >long.xyz
row "atom count smaller than the atoms" 3 "long.xyz:8: more atoms than the atom count of the frame before" out.xyz -- ts long.xyz "$P"
sed '4s/\(^ *[A-Z][a-z]* *\)[^ ]*/\1abc/' "$R" >nonnum.xyz
row "non-numeric coordinate" 3 "nonnum.xyz:4: coordinate x is missing or not a number" out.xyz -- ts nonnum.xyz "$P"
sed '5s/\(^ *[A-Z][a-z]* *[^ ]* *\)[^ ]*/\1nan/' "$R" >nan.xyz
row "NaN coordinate" 3 "nan.xyz:5: coordinate y is not finite (NaN or Inf)" out.xyz -- ts nan.xyz "$P"
sed '6s/\(^ *[A-Z][a-z]* *[^ ]* *[^ ]* *\)[^ ]*/\1-inf/' "$R" >inf.xyz
row "infinite coordinate" 3 "inf.xyz:6: coordinate z is not finite (NaN or Inf)" out.xyz -- ts inf.xyz "$P"
sed '3s/^ *[A-Z][a-z]*/Xx/' "$R" >unknown.xyz
row "unknown element" 3 "unknown.xyz:3: unknown element 'Xx'" out.xyz -- ts unknown.xyz "$P"
sed '3s/^ *[A-Z][a-z]*/Si/' "$R" >si_r.xyz
sed '3s/^ *[A-Z][a-z]*/Si/' "$P" >si_p.xyz
row "element the model does not know" 3 "si_r.xyz: atom 1 is Si, which the model does not know (it knows H, C, N, O, F)" out.xyz -- ts si_r.xyz si_p.xyz
sed '4s/^ *[A-Z][a-z]*/N/' "$P" >other_p.xyz
row "reactant/product composition mismatch" 3 "composition mismatch (C: 2 vs 1)" out.xyz -- ts "$R" other_p.xyz

# --- size: a 3 x 30,000-atom reaction is refused before anything large is allocated
$PYTHON - <<'EOF'
n = 30000
with open("huge.xyz", "w") as f:
    f.write("%d\nhuge\n" % n)
    for i in range(n):
        f.write("%s %.3f %.3f %.3f\n" % ("CH"[i % 2], (i % 40) * 1.5, (i // 40 % 40) * 1.5, (i // 1600) * 1.5))
EOF
row "system too large for memory" 5 "GiB of work memory; the limit is" out.xyz -- ts huge.xyz huge.xyz

# --- weights
$PYTHON - "$W" <<'EOF'
import struct, sys, zlib
raw = open(sys.argv[1], "rb").read()
def fix_crc(b):
    b = bytearray(b)
    struct.pack_into("<I", b, 56, zlib.crc32(bytes(b[:56]) + bytes(b[60:])) & 0xFFFFFFFF)
    return bytes(b)
open("magic.bin", "wb").write(b"PK\x03\x04" + raw[4:])            # e.g. a checkpoint zip given by mistake
v = bytearray(raw); struct.pack_into("<I", v, 8, 2); open("version.bin", "wb").write(fix_crc(v))
open("truncated.bin", "wb").write(raw[:len(raw) // 2])
c = bytearray(raw); c[len(c) - 100] ^= 0x40; open("corrupt.bin", "wb").write(bytes(c))
EOF
row "weights: wrong magic" 4 "magic.bin: not an oa_reactdiff weights file (bad magic)" out.xyz -- ts "$R" "$P" --weights magic.bin
row "weights: wrong version" 4 "version.bin: weights format version 2, this build reads version 1" out.xyz -- ts "$R" "$P" --weights version.bin
row "weights: truncated" 4 "truncated.bin: truncated or padded" out.xyz -- ts "$R" "$P" --weights truncated.bin
row "weights: corrupted (checksum)" 4 "corrupt.bin: checksum mismatch" out.xyz -- ts "$R" "$P" --weights corrupt.bin
row "weights: wrong kind" 4 "is a confidence model, a denoiser model is needed here" out.xyz -- ts "$R" "$P" --weights "$CONF"
row "weights: missing" 1 "nothere.bin: cannot open weights file" out.xyz -- ts "$R" "$P" --weights nothere.bin

# --- output
row "unwritable output (no such directory)" 1 "nodir/out.xyz: cannot write: No such file or directory" nodir/out.xyz -- "$BIN" ts "$R" "$P" $Q -o nodir/out.xyz
mkdir -p ro && chmod 555 ro
if [ "$(id -u)" -ne 0 ]; then
    row "unwritable output (read-only directory)" 1 "ro/out.xyz: cannot write: Permission denied" ro/out.xyz -- "$BIN" ts "$R" "$P" $Q -o ro/out.xyz
else
    echo "  SKIP  unwritable output (read-only directory): running as root, permissions do not apply"
fi
# write failure part-way: a file-size limit of 1 KiB (SIGXFSZ ignored, so write() fails
# with EFBIG) stops the 8 frames after the first kilobyte
row "write failure part-way (file size limit)" 1 "out.xyz: write failed: File too large" out.xyz -- \
    bash -c 'trap "" XFSZ; ulimit -f 1; exec "$0" "$@"' "$BIN" ts "$R" "$P" -n 8 $Q -o out.xyz

# --- NaN during sampling: weights scaled by 1e12 (finite, so they load) overflow float32
$PYTHON - "$W" <<'EOF'
import array, struct, sys, zlib
raw = bytearray(open(sys.argv[1], "rb").read())
meta_off, meta_size, data_off = struct.unpack_from("<QQQ", raw, 16)
for line in raw[meta_off:meta_off + meta_size].decode().splitlines():
    p = line.split()
    if p and p[0] == "tensor" and "gamma" not in p[1] and p[2] == "f32":
        off, nb = data_off + int(p[3]), int(p[4])
        a = array.array("f", bytes(raw[off:off + nb]))
        a = array.array("f", [x * 1e12 for x in a])
        raw[off:off + nb] = a.tobytes()
struct.pack_into("<I", raw, 56, zlib.crc32(bytes(raw[:56]) + bytes(raw[60:])) & 0xFFFFFFFF)
open("overflow.bin", "wb").write(bytes(raw))
EOF
row "NaN during sampling" 6 "NaN/Inf for sample 0" out.xyz -- ts "$R" "$P" -n 2 --weights overflow.bin

# --- command line and batch lists
row "bad command line" 2 "ts: unknown option '--sed'" out.xyz -- "$BIN" ts "$R" "$P" --sed 1 -o out.xyz
printf 'a.xyz\n' >list.txt
row "malformed reaction list" 3 "list.txt:1: expected 'REACTANT.xyz PRODUCT.xyz [NAME]'" outdir -- "$BIN" ts --list list.txt --outdir outdir $Q
cp "$R" r.xyz && cp "$P" p.xyz && cp other_p.xyz bad_p.xyz
printf 'r.xyz p.xyz good\nr.xyz bad_p.xyz bad\n' >list2.txt
"$BIN" ts --list list2.txt --outdir outdir2 $Q >stdout.txt 2>stderr.txt
st=$?
if [ $st -eq 7 ] && grep -q "bad (list2.txt:2): .*composition mismatch" stderr.txt && grep -q "1 of 2 reactions failed" stderr.txt &&
    [ -s outdir2/good.xyz ] && [ ! -e outdir2/bad.xyz ]; then
    pass "batch with a failing reaction: exit 7, '$(grep 'bad (' stderr.txt)', the good reaction's output written"
else
    bad "batch with a failing reaction: exit $st, $(grep -v UNTRAINED stderr.txt | tr '\n' '|')"
fi
# an interrupted batch keeps its finished outputs and a rerun resumes: tests/test_cli.sh

# --- train: the dataset, the start, the checkpoint (tests/fixtures/train, copied and spoilt)
TRAIN="$BIN train --batch 2 --steps 2 --val-every 1"
cp -r "$ROOT/tests/fixtures/train" ds
tr() { d=$1; shift; $TRAIN --data "$d" --init "$W" --out run "$@"; } # output: run/model.bin
row "train: missing dataset" 1 "nodata/index.tsv: cannot open: No such file or directory" run/model.bin -- tr nodata
cp -r ds ds_nosplit && cut -f1-13 ds/index.tsv >ds_nosplit/index.tsv
row "train: index without a split column" 3 "ds_nosplit/index.tsv:1: the header names no 'split' column" run/model.bin -- tr ds_nosplit
cp -r ds ds_row && printf 'r0000\tC\n' >>ds_row/index.tsv
row "train: malformed index row" 3 "ds_row/index.tsv:9: 2 tab-separated fields, the header has 15" run/model.bin -- tr ds_row
cp -r ds ds_split && sed -i '2s/\ttrain\t/\ttrian\t/' ds_split/index.tsv
row "train: unknown split" 3 "ds_split/index.tsv:2: split 'trian' is not train, val or test" run/model.bin -- tr ds_split
cp -r ds ds_gone && rm ds_gone/reactions/r55d200ea469c/ts.xyz
row "train: reaction file missing" 1 "ds_gone/reactions/r55d200ea469c/ts.xyz: cannot open: No such file" run/model.bin -- tr ds_gone
cp -r ds ds_order && f=ds_order/reactions/r55d200ea469c/prod.xyz && { sed -n '1,2p' $f; sed -n '4p' $f; sed -n '3p' $f; sed -n '5,$p' $f; } >x.xyz && mv x.xyz $f
row "train: atom order differs between react, ts and prod" 3 "r55d200ea469c/prod.xyz: atom 1 is O, ds_order/reactions/r55d200ea469c/react.xyz has C there" run/model.bin -- tr ds_order
cp -r ds ds_si && for x in react ts prod; do sed -i '3s/^ *[A-Z][a-z]*/Si/' ds_si/reactions/r55d200ea469c/$x.xyz; done
row "train: element the model does not know" 3 "react.xyz: atom 1 is Si, which the model does not know" run/model.bin -- tr ds_si
cp -r ds ds_notrain && awk -F'\t' -v OFS='\t' 'NR > 1 && $14 == "train" { $14 = "test" } { print }' ds/index.tsv >ds_notrain/index.tsv
row "train: no training reactions" 3 "ds_notrain/index.tsv: no reactions in the train split" run/model.bin -- tr ds_notrain
row "train: bad --init-config" 2 "--init-config: unknown key 'layer'" run/model.bin -- $TRAIN --data ds --init-config layer=2 --out run
$TRAIN --data ds --init "$W" --out done 2>/dev/null
row "train: checkpoint exists (no --resume)" 2 "done/checkpoint.bin exists: add --resume" done/model.bin -- tr ds --out done
row "train: resume with other settings" 2 "--batch 3 differs from the checkpoint's 2" done/model.bin -- tr ds --out done --resume --batch 3
cp -r ds ds_changed && sed -i '2s/\ttrain\t/\ttest\t/' ds_changed/index.tsv
row "train: resume on a changed dataset" 3 "ds_changed/index.tsv: the train split (crc32" done/model.bin -- tr ds_changed --out done --resume
cp -r done spoilt && $PYTHON -c "
import sys; b = bytearray(open('spoilt/checkpoint.bin', 'rb').read()); b[len(b) // 2] ^= 1; open('spoilt/checkpoint.bin', 'wb').write(b)"
row "train: corrupted checkpoint" 4 "spoilt/checkpoint.bin: checksum mismatch" spoilt/model.bin -- tr ds --out spoilt --resume
row "train: checkpoint of the other precision" 4 "done/checkpoint.bin: written by the float32 build, this is the float64 build" done/model.bin -- \
    "$ROOT/oa_reactdiff64" train --data ds --out done --resume

echo
[ $fails -eq 0 ] && echo "test_errors: all passed" || echo "test_errors: $fails FAILED"
[ $fails -eq 0 ]
