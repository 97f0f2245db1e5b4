#!/usr/bin/env bash
# Training-step throughput of ferry (cpu backend) next to PyTorch running the
# oracle model (tools/oracle/ds3.py, float32) with the same config, batch,
# sequence length and thread count, measured in the same run.
#   bench/train_step.sh [BUILD_DIR]       (THREADS, BATCH, SEQ, STEPS, LORA env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} batch=${BATCH:-8} seq=${SEQ:-256} steps=${STEPS:-3}
py=/usr/bin/python3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads

field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }
# Each config twice: full training, then LoRA rank $LORA on every target
# (base frozen, AdamW on the adapters; PyTorch: the oracle's LoRA, PEFT's
# math). GFLOP/s counts the full step's FLOPs (LoRA: full-equivalent).
lora=${LORA:-8}
printf "| config | mode | trainable / params | threads | batch x seq | ferry tok/s | ferry GFLOP/s | ferry MB | PyTorch tok/s | PyTorch MB | ratio |\n"
printf "|---|---|---|---|---|---|---|---|---|---|---|\n"
for cfg in tiny small; do
  for mode in full lora; do
    extra=(); [ "$mode" = lora ] && extra=(--lora-rank "$lora")
    f=$("$build/bench/bench_train_step" --config $cfg --vocab 8192 --batch "$batch" --seq "$seq" \
          --steps "$steps" --warmup 1 --dump-config "$tmp/$cfg.json" "${extra[@]}")
    t=$($py tools/oracle/bench_torch.py --config "$tmp/$cfg.json" --batch "$batch" --seq "$seq" \
          --threads "$threads" --steps "$steps" --warmup 1 "${extra[@]}" 2>/dev/null ||
        echo '{"tokens_per_s": 0, "max_rss_mb": 0}')
    ft=$(field "$f" tokens_per_s) tt=$(field "$t" tokens_per_s)
    ratio=$(awk -v a="$ft" -v b="$tt" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')
    name=$mode; [ "$mode" = lora ] && name="LoRA r$lora"
    printf "| %s | %s | %.2fM / %.1fM | %s | %s x %s | %.0f | %.1f | %.0f | %.0f | %.0f | %s |\n" "$cfg" "$name" \
      "$(awk -v p="$(field "$f" trainable)" 'BEGIN{print p/1e6}')" \
      "$(awk -v p="$(field "$f" params)" 'BEGIN{print p/1e6}')" "$threads" "$batch" "$seq" \
      "$ft" "$(field "$f" gflops)" "$(field "$f" max_rss_mb)" "$tt" "$(field "$t" max_rss_mb)" "$ratio"
  done
done
