#!/usr/bin/env bash
# Runs one libFuzzer target for a time budget (ctest label fuzz, and the
# long runs of docs/RELIABILITY.md "Fuzzing") from: the corpus it grew
# before (WORK_DIR/corpus/NAME, where new inputs go), the seeds
# make_seeds.sh made (WORK_DIR/seeds/NAME), the committed hand-written
# seeds (tests/fuzz/seeds/NAME) and every crash input found before
# (tests/fuzz/regress/NAME), which must run clean. Prints libFuzzer's final
# line (execs, cov, ft) and, on a crash, where the input is.
#   run_fuzz.sh FUZZ_BINARY NAME WORK_DIR SECONDS
set -u
bin=$1 name=$2 work=$3 secs=$4
fz=$(cd "$(dirname "$0")" && pwd)
if [ ! -x "$bin" ]; then
  echo "fuzz_$name: SKIP: no fuzz binary $bin (needs clang's libFuzzer: configure with CC=clang -DFERRY_FUZZ=ON)"
  exit 77
fi
corpus=$work/corpus/$name art=$work/artifacts/$name
mkdir -p "$corpus" "$art"
log=$work/fuzz_$name.log
# LeakSanitizer on: a parser that leaks on some input is a finding too.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMP_NUM_THREADS=1
dirs=("$corpus")
for d in "$work/seeds/$name" "$fz/seeds/$name" "$fz/regress/$name"; do [ -d "$d" ] && dirs+=("$d"); done
"$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2560 -max_len=262144 -print_final_stats=1 \
  -artifact_prefix="$art/" "${dirs[@]}" >"$log" 2>&1
rc=$?
final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
[ -n "$final" ] || final=$(grep -E '^#[0-9]+' "$log" | tail -1)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | head -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | head -1)
echo "fuzz_$name: ${secs}s, ${execs:-?} runs, ${rate:-?} exec/s; $final"
if [ $rc -ne 0 ]; then
  echo "FAIL: fuzz_$name exited $rc (log $log):"
  grep -E 'ERROR: |runtime error|SUMMARY|Test unit written|^==[0-9]+==' "$log" | head -20
  echo "the input is in $art/: copy it to tests/fuzz/regress/$name/ with the fix, so ctest replays it"
  exit 1
fi
