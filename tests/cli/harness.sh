# The start and end every shell test shares (tests/cli, tests/dist).
# Sourced with $ferry and $work set, before any cd: makes $work afresh and
# enters it; ok/bad/check count checks and say what failed; `finish NAME`
# prints "NAME: P passed, F failed" and is the script's status.
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
finish() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
