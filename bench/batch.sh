#!/usr/bin/env bash
# Continuous-batching throughput of the batch step (fy_model_batch_step):
# aggregate decoded tokens/s against the number of sequences decoding
# together (each with a 64-token prompt prefilled first), tiny and small,
# f32 and Q8_0 weights, random weights, vocab 8192; then the batch-invariant
# linear (linear_rows; also with its many-row kernel off: cpu_linear.c's
# tiles alone) next to OpenBLAS sgemm for the models' shapes.
#   bench/batch.sh [BUILD_DIR]     (THREADS, STEPS, REPS, BATCHES env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} steps=${STEPS:-32} reps=${REPS:-3} batches=${BATCHES:-"1 4 16 64"}
export OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }
echo "threads $threads, $steps decode steps after a 64-token prompt, best of $reps"
echo
printf "| config | weights |"; for b in $batches; do printf " batch %s tok/s |" "$b"; done; printf " 16 vs 1 |\n"
printf "|---|---|"; for b in $batches; do printf -- "---|"; done; printf -- "---|\n"
for cfg in tiny small; do
  for w in f32 q8_0; do
    printf "| %s | %s |" $cfg $w
    one=0 sixteen=0
    for b in $batches; do
      out=$("$build/bench/bench_batch" --config $cfg --weights $w --batch "$b" --ctx 64 --steps "$steps" --reps "$reps") ||
        out='{"tok_s": 0}'
      t=$(field "$out" tok_s)
      [ "$b" = 1 ] && one=$t
      [ "$b" = 16 ] && sixteen=$t
      printf " %.0f |" "$t"
    done
    awk -v a="$sixteen" -v b="$one" 'BEGIN { if (b > 0 && a > 0) printf " %.1fx |\n", a / b; else print " n/a |" }'
  done
done
echo
printf "| linear (in x out) | rows N | linear_rows GFLOP/s | its tiles alone | sgemm GFLOP/s |\n|---|---|---|---|---|\n"
for shape in "256 256" "256 8192" "512 512" "512 8192"; do
  for n in 1 4 16 64 256 512; do
    out=$("$build/bench/bench_batch" --linear $shape --batch $n --reps "$reps")
    printf "| %s | %d | %.1f | %.1f | %.1f |\n" "${shape/ / x }" $n "$(field "$out" rows_gflops)" \
      "$(field "$out" tiles_gflops)" "$(field "$out" sgemm_gflops)"
  done
done
