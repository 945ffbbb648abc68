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
