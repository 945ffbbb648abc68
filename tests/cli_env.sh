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
# untrained-weights warning aside) and no control character (a terminal escape quoted
# from a file), nothing on stdout, and leave neither OUTFILE nor a temporary file beside
# it. With MAX_RSS_KB set (and /usr/bin/time there), its peak resident size is measured
# (/usr/bin/time -v), printed with the wall time, and must not exceed MAX_RSS_KB.
expect_failure() {
    local name=$1 want=$2 pat=$3 out=$4
    shift 5
    rm -f "$out" "$out".tmp.*
    local st msg lines rss="" mem=""
    if [ -n "${MAX_RSS_KB:-}" ] && [ -x /usr/bin/time ]; then
        /usr/bin/time -v -o time.txt "$@" >stdout.txt 2>stderr.txt # passes the command's status on
        st=$?
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' time.txt)
        mem=" (peak RSS $((rss / 1024)) MB, $(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' time.txt) s)"
    else
        "$@" >stdout.txt 2>stderr.txt
        st=$?
    fi
    lines=$(grep -vc "UNTRAINED" stderr.txt)
    msg=$(grep -v "UNTRAINED" stderr.txt | head -1)
    if [ "$st" -ne "$want" ]; then
        bad "$name: exit status $st, expected $want ($msg)$mem"
    elif [ "$lines" -ne 1 ]; then
        bad "$name: $lines stderr lines, expected one: $(grep -v UNTRAINED stderr.txt | head -3 | tr '\n' '|')"
    elif ! grep -qF -- "$pat" <<<"$msg"; then
        bad "$name: message '$msg' does not contain '$pat'"
    elif LC_ALL=C grep -q "[[:cntrl:]]" <(grep -v UNTRAINED stderr.txt | tr -d '\n'); then
        bad "$name: the message holds a control character: $(head -c 300 stderr.txt | cat -v)"
    elif [ -e "$out" ] || ls "$out".tmp.* >/dev/null 2>&1; then
        bad "$name: output $out (or a temporary file) exists"
    elif [ -s stdout.txt ]; then
        bad "$name: printed on stdout: $(head -c 200 stdout.txt | cat -v)"
    elif [ -n "$rss" ] && [ "$rss" -gt "$MAX_RSS_KB" ]; then
        bad "$name: peak RSS $((rss / 1024)) MB before refusing, over $((MAX_RSS_KB / 1024)) MB"
    else
        pass "$name: exit $st, '$msg'$mem"
    fi
}
