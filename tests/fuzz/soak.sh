#!/usr/bin/env bash
# The long fuzz runs of docs/RELIABILITY.md "Fuzzing" (not a ctest): each
# target named runs SECONDS (NAME:SECONDS for another budget) in libFuzzer's fork mode, which keeps going
# after a crash, leak or timeout and saves each input under
# WORK/artifacts/NAME/, two targets at a time, at nice 10. Starts from
# WORK/corpus/NAME plus the seeds run_fuzz.sh uses; writes WORK/soak_NAME.log
# and prints each target's last status line (execs, cov, ft, crashes).
#   soak.sh FUZZ_BIN_DIR WORK_DIR SECONDS NAME[:SECONDS]...
set -u
bin=$1 work=$2 secs=$3
shift 3
fz=$(cd "$(dirname "$0")" && pwd)
export ASAN_OPTIONS=detect_leaks=1:symbolize=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMP_NUM_THREADS=1 fz bin work secs
one() {
  name=${1%%:*} secs=$secs
  case $1 in *:*) secs=${1#*:} ;; esac
  mkdir -p "$work/corpus/$name" "$work/artifacts/$name"
  dirs=("$work/corpus/$name")
  for d in "$work/seeds/$name" "$fz/seeds/$name" "$fz/regress/$name"; do [ -d "$d" ] && dirs+=("$d"); done
  start=$(date +%s)
  nice -n 10 "$bin/fuzz_$name" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -max_total_time="$secs" -timeout=20 -rss_limit_mb=2560 -max_len=262144 \
    -artifact_prefix="$work/artifacts/$name/" "${dirs[@]}" >"$work/soak_$name.log" 2>&1
  echo "soak $name: $(( $(date +%s) - start ))s; $(grep -E '^#[0-9]+: cov' "$work/soak_$name.log" | tail -1);" \
       "artifacts: $(ls "$work/artifacts/$name" | wc -l)"
}
export -f one
printf '%s\n' "$@" | xargs -P2 -I{} bash -c 'one {}'
