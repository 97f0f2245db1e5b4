#!/usr/bin/env bash
# Generation speed of ferry (latent KV cache, absorbed MLA decode) next to
# PyTorch running the oracle model with a plain k/v cache, same config,
# prompt, length and thread count, in the same run.
#   bench/generate.sh [BUILD_DIR]      (THREADS, PROMPT, NEW env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} prompt=${PROMPT:-64} new=${NEW:-128}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads
field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }
printf "| config | threads | prompt | new | ferry prefill tok/s | ferry decode tok/s | PyTorch prefill tok/s | PyTorch decode tok/s | decode ratio |\n"
printf "|---|---|---|---|---|---|---|---|---|\n"
for cfg in tiny small; do
  f=$("$build/bench/bench_generate" --config $cfg --vocab 8192 --prompt "$prompt" --new "$new" --dump-config "$tmp/$cfg.json")
  t=$(/usr/bin/python3 tools/oracle/bench_generate_torch.py --config "$tmp/$cfg.json" --prompt "$prompt" \
        --new "$new" --threads "$threads" 2>/dev/null || echo '{"prefill_tok_s": 0, "decode_tok_s": 0}')
  fd=$(field "$f" decode_tok_s) td=$(field "$t" decode_tok_s)
  printf "| %s | %s | %s | %s | %.0f | %.0f | %.0f | %.0f | %s |\n" $cfg "$threads" "$prompt" "$new" \
    "$(field "$f" prefill_tok_s)" "$fd" "$(field "$t" prefill_tok_s)" "$td" \
    "$(awk -v a="$fd" -v b="$td" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "n/a" }')"
done
