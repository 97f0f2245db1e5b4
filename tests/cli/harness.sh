# The start and end every shell test shares (tests/cli, tests/dist).
# Sourced first with the script's arguments, FERRY_BINARY WORK_DIR: sets
# $ferry, $work and $here (the script's own folder, for the fixtures),
# makes $work afresh and enters it, quiets ferry's log to warnings;
# ok/bad/check count checks and say what failed; `skip_part WHY` says that a
# part of the test could not run here (a missing device or tool);
# `finish NAME` prints "NAME: P passed, F failed" and is the script's status:
# 1 on any failure, else 77 (reported as skipped, with what did not run)
# when a part was skipped, else 0. A partly-run test is not a pass.
here=$(cd "$(dirname "$0")" && pwd)
ferry=$1
work=$2
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
export FERRY_LOG=warn
pass=0 fail=0 skipped=""
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
skip_part() { skipped="$skipped${skipped:+; }$*"; echo "SKIP (part): $*"; }
finish() {
  echo "$1: $pass passed, $fail failed"
  [ "$fail" -eq 0 ] || return 1
  [ -z "$skipped" ] || { echo "SKIP: $1: not run here: $skipped"; return 77; }
}
