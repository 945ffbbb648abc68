# cli_env.sh - sourced by the command-line test scripts: BINARY and CONFIDENCE_WEIGHTS from
# the arguments, the repository root, and a temporary working directory removed on exit.
#   . "$(dirname "$0")/cli_env.sh" NAME "$@"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
BIN=$(realpath "${2:-./oa_reactdiff}")
CONF=$(realpath "${3:-build/conf_tiny.bin}")
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/oard-$1-XXXXXX")
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT
cd "$TMP" || exit 2
fails=0
pass() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; fails=$((fails + 1)); }

# expect_failure NAME STATUS MESSAGE OUTFILE -- COMMAND...: the command must exit with
# STATUS, print exactly one error line on stderr containing MESSAGE (a fixed string; the
# untrained-weights warning aside), nothing on stdout, and leave neither OUTFILE nor a
# temporary file beside it.
expect_failure() {
    local name=$1 want=$2 pat=$3 out=$4
    shift 5
    rm -f "$out" "$out".tmp.*
    "$@" >stdout.txt 2>stderr.txt
    local st=$? msg lines
    lines=$(grep -vc "UNTRAINED" stderr.txt)
    msg=$(grep -v "UNTRAINED" stderr.txt | head -1)
    if [ "$st" -ne "$want" ]; then
        bad "$name: exit status $st, expected $want ($msg)"
    elif [ "$lines" -ne 1 ]; then
        bad "$name: $lines stderr lines, expected one: $(grep -v UNTRAINED stderr.txt | tr '\n' '|')"
    elif ! grep -qF -- "$pat" <<<"$msg"; then
        bad "$name: message '$msg' does not contain '$pat'"
    elif [ -e "$out" ] || ls "$out".tmp.* >/dev/null 2>&1; then
        bad "$name: output $out (or a temporary file) exists"
    elif [ -s stdout.txt ]; then
        bad "$name: printed on stdout: $(head -c 200 stdout.txt)"
    else
        pass "$name: exit $st, '$msg'"
    fi
}
