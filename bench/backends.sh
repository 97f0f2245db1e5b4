#!/usr/bin/env bash
# Every backend this build can use, side by side in one run: training tokens/s
# and greedy decode tokens/s for tiny and small (random weights), and the
# GFLOP/s of each backend's fy_be_gemm next to OpenBLAS cblas_sgemm called
# directly, for the shapes the tiny model's steps are made of. The backends
# are cpu plus every device `ferry devices` lists as opencl:P:D (and cuda when
# built); chaos:cpu is a wrapper around cpu, not a peer, and is left out.
# Each figure is the best of REPS runs (the machine may be shared).
#   bench/backends.sh [BUILD_DIR]   (THREADS, BATCH, SEQ, STEPS, PROMPT, NEW, REPS, CONFIGS env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} batch=${BATCH:-4} seq=${SEQ:-128} steps=${STEPS:-2}
prompt=${PROMPT:-32} new=${NEW:-64} reps=${REPS:-3} configs=${CONFIGS:-"tiny small"}
export OMP_NUM_THREADS=$threads FERRY_LOG=warn
bin=$build/bench/bench_backends
backends="cpu $("$build/ferry" devices | awk '$1 ~ /^opencl:[0-9]+:[0-9]+$/ ||
                                               ($1 ~ /^cuda(:[0-9]+)?$/ && $0 !~ /not built|unavailable/) { print $1 }' | tr '\n' ' ')"
field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
# best FIELD CMD...: the largest FIELD over reps runs of CMD ("n/a" if every run failed).
best() {
  local f=$1 b=0 out any=0; shift
  for _ in $(seq "$reps"); do
    if out=$("$@" 2>/dev/null); then b=$(max "$b" "$(field "$out" "$f")"); any=1; fi
  done
  [ $any = 1 ] && printf "%.0f" "$b" || echo "n/a"
}

echo "backends: $backends| threads $threads, train batch $batch x $seq, decode $new tokens after $prompt, vocab 8192, best of $reps"
echo
printf "| config | backend | train tok/s | decode tok/s |\n|---|---|---|---|\n"
for cfg in $configs; do
  for be in $backends; do
    tr=$(best tokens_per_s "$bin" --backend "$be" train --config "$cfg" --vocab 8192 --batch "$batch" --seq "$seq" \
           --steps "$steps" --warmup 1)
    de=$(best decode_tok_s "$bin" --backend "$be" decode --config "$cfg" --vocab 8192 --prompt "$prompt" --new "$new")
    printf "| %s | %s | %s | %s |\n" "$cfg" "$be" "$tr" "$de"
  done
done

echo
# M x N x K of C = op(A) B: tiny's dense FFN up (d 256 -> 768), down, the LM
# head (vocab 8192), and a weight gradient (A transposed: K = tokens).
shapes="2048x768x256 2048x256x768 2048x8192x256 768x256x2048:T"
header="| GEMM M x N x K | OpenBLAS sgemm GFLOP/s"
rule="|---|---"
for be in $backends; do header="$header | $be fy_be_gemm"; rule="$rule|---"; done
printf "%s |\n%s|\n" "$header" "$rule"
for s in $shapes; do
  dims=${s%%:*} ta=(); [ "$s" != "$dims" ] && ta=(--trans-a)
  IFS=x read -r m n k <<<"$dims"
  row="| $m x $n x $k${ta:+ (A^T)} | $(best gflops "$bin" openblas gemm --m "$m" --n "$n" --k "$k" "${ta[@]}" --reps 5)"
  for be in $backends; do
    row="$row | $(best gflops "$bin" --backend "$be" gemm --m "$m" --n "$n" --k "$k" "${ta[@]}" --reps 5)"
  done
  echo "$row |"
done
