# The start and end every shell test shares (tests/cli, tests/dist).
# Sourced first with the script's arguments, FERRY_BINARY WORK_DIR: sets
# $ferry, $work and $here (the script's own folder, for the fixtures),
# makes $work afresh and enters it, quiets ferry's log to warnings;
# ok/bad/check count checks and say what failed; `finish NAME` prints
# "NAME: P passed, F failed" and is the script's status.
here=$(cd "$(dirname "$0")" && pwd)
ferry=$1
work=$2
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
export FERRY_LOG=warn
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
finish() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
