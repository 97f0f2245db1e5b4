#!/usr/bin/env bash
# Generation speed of ferry (latent KV cache, absorbed MLA decode; f32 and
# Q8_0 decode weights) next to
# PyTorch running the oracle model with a plain k/v cache, same config,
# prompt, length and thread count, in the same run. Each side prefills and
# decodes REPS times in one process (fresh cache each time, the weights
# loaded once) and keeps its best figures: the first repetition pays for
# cold caches and page faults on both sides, and the machine may be shared.
#   bench/generate.sh [BUILD_DIR]      (THREADS, PROMPT, NEW, REPS env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} prompt=${PROMPT:-64} new=${NEW:-128} reps=${REPS:-5}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads
field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }
# run CMD...: prints "prefill decode" from its JSON line (zeros if it failed)
run() {
  local out
  out=$("$@") || out='{"prefill_tok_s": 0, "decode_tok_s": 0}'
  echo "$(field "$out" prefill_tok_s) $(field "$out" decode_tok_s)"
}
echo "threads $threads, prompt $prompt tokens, $new new tokens (greedy), vocab 8192, random weights, best of $reps"
echo
printf "| config | impl | prefill tok/s | decode tok/s | decode ratio vs torch |\n"
printf "|---|---|---|---|---|\n"
for cfg in tiny small; do
  "$build/bench/bench_generate" --config $cfg --vocab 8192 --prompt 0 --dump-config "$tmp/$cfg.json"
  read -r tp td < <(run /usr/bin/python3 tools/oracle/bench_generate_torch.py --config "$tmp/$cfg.json" \
                      --prompt "$prompt" --new "$new" --threads "$threads" --reps "$reps")
  for w in f32 q8_0; do
    read -r fp fd < <(run "$build/bench/bench_generate" --config $cfg --vocab 8192 --prompt "$prompt" --new "$new" \
                        --weights $w --reps "$reps")
    ratio=$(awk -v a="$fd" -v b="$td" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "n/a" }')
    printf "| %s | ferry (latent KV cache, %s weights) | %.0f | %.0f | %s |\n" $cfg $w "$fp" "$fd" "$ratio"
  done
  if awk -v b="$td" 'BEGIN { exit !(b > 0) }'; then
    printf "| %s | PyTorch (k/v cache) | %.0f | %.0f | 1.0x |\n" $cfg "$tp" "$td"
  else
    printf "| %s | PyTorch (k/v cache) | n/a | n/a | torch unavailable |\n" $cfg
  fi
done
