#!/usr/bin/env bash
# How ferry's OpenMP threads wait (src/cli/env.c, docs/PERFORMANCE.md "Under
# contention"): with neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT set, ferry
# re-executes itself once with GOMP_SPINCOUNT 30000 on a quiet machine or
# 300 beside busy neighbours (generate, serve; looked at once, at start-up)
# or 0 (everything else), and libgomp (which reads it before main) runs with that;
# a value the user set is left alone, with no re-exec. Read from libgomp's
# own report (OMP_DISPLAY_ENV=verbose prints its settings at start-up, once
# per process).
#   openmp_env_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
unset OMP_WAIT_POLICY GOMP_SPINCOUNT
# spins CMD...: libgomp's GOMP_SPINCOUNT of each process, space-separated.
spins() { OMP_DISPLAY_ENV=verbose "$ferry" "$@" 2>&1 >/dev/null | sed -nE "s/^ *GOMP_SPINCOUNT = '([0-9]+)'.*/\1/p" | tr '\n' ' '; }
# Whether this machine is quiet now depends on ctest's other jobs: either
# spin, after one re-exec.
s=$(spins generate --help)
check '[ "$s" = "300000 30000 " ] || [ "$s" = "300000 300 " ]' "generate: libgomp saw '$s', not 300000 then 30000 or 300 after one re-exec"
s=$(spins serve --help)
check '[ "$s" = "300000 30000 " ] || [ "$s" = "300000 300 " ]' "serve: libgomp saw '$s'"
# Beside one busy loop per CPU the machine is not quiet, whatever else runs:
# the short spin.
busy=()
for _ in $(seq "$(getconf _NPROCESSORS_ONLN)"); do
  timeout 60 sh -c 'while :; do :; done' & busy+=($!)
done
sleep 0.2
s=$(spins generate --help)
kill "${busy[@]}" 2>/dev/null; wait 2>/dev/null
check '[ "$s" = "300000 300 " ]' "generate beside busy loops: libgomp saw '$s', not 300000 then 300"
check '[ "$(spins train --help)" = "300000 0 " ]' "train: libgomp saw '$(spins train --help)', not 0 after one re-exec"
check '[ "$(spins --version)" = "300000 0 " ]' "--version: libgomp saw '$(spins --version)'"
check '[ "$(GOMP_SPINCOUNT=5 spins generate --help)" = "5 " ]' "a user's GOMP_SPINCOUNT was not left alone (or ferry re-executed)"
check '[ "$(OMP_WAIT_POLICY=active spins train --help)" = "30000000000 " ]' "a user's OMP_WAIT_POLICY was not left alone"
# The re-exec keeps the arguments: a bad flag still fails the same way, once.
"$ferry" train --no-such-flag >out.txt 2>err.txt
rc=$?
check '[ $rc -ne 0 ] && [ "$(grep -c no-such-flag err.txt)" -eq 1 ]' "a bad flag after the re-exec: $(cat err.txt)"
finish openmp_env_test
