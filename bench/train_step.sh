#!/usr/bin/env bash
# Training-step throughput of ferry (cpu backend) next to PyTorch running the
# oracle model (tools/oracle/ds3.py, float32) with the same config, batch,
# sequence length and thread count, measured in the same run.
#   bench/train_step.sh [BUILD_DIR]   (THREADS, BATCH, SEQ, STEPS, LORA, PEFT_PYTHON env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} batch=${BATCH:-8} seq=${SEQ:-256} steps=${STEPS:-3}
py=/usr/bin/python3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads

field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
# Each config three times: full training; LoRA rank $LORA on every target
# (base frozen, AdamW on the adapters; PyTorch: the oracle's LoRA, PEFT's
# math); LoRA on the attention targets, also next to transformers' own
# DeepseekV3ForCausalLM with PyPI peft (PEFT_PYTHON, default the interop venv
# of scripts/pyenv.sh): the targets peft adapts as such on transformers 5
# (its routed experts are fused 3-D parameters; see docs/FINETUNE.md).
# GFLOP/s counts the full step's FLOPs (LoRA: full-equivalent).
lora=${LORA:-8}
attn=q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj
peft_py=${PEFT_PYTHON:-$(scripts/pyenv.sh 2>/dev/null || true)}
# "of sgemm": ferry's GFLOP/s against OpenBLAS sgemm alone on the config's
# largest linear at this batch, timed by the same bench_train_step process
# after its steps; the config's last row is that ceiling.
printf "| config | mode | trainable / params | threads | batch x seq | ferry tok/s | ferry GFLOP/s | of sgemm | ferry MB | PyTorch tok/s | PyTorch MB | ratio | transformers+peft tok/s | peft MB | ratio |\n"
printf "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
for cfg in tiny small; do
  for mode in full lora lora-attn; do
    extra=()
    case $mode in
      lora) extra=(--lora-rank "$lora") name="LoRA r$lora, all targets" ;;
      lora-attn) extra=(--lora-rank "$lora" --lora-targets "$attn") name="LoRA r$lora, attention" ;;
      *) name=full ;;
    esac
    f=$("$build/bench/bench_train_step" --config $cfg --vocab 8192 --batch "$batch" --seq "$seq" \
          --steps "$steps" --warmup 1 --dump-config "$tmp/$cfg.json" "${extra[@]}")
    t=$($py tools/oracle/bench_torch.py --config "$tmp/$cfg.json" --batch "$batch" --seq "$seq" \
          --threads "$threads" --steps "$steps" --warmup 1 "${extra[@]}" 2>/dev/null ||
        echo '{"tokens_per_s": 0, "max_rss_mb": 0}')
    p='{"tokens_per_s": 0, "max_rss_mb": 0}'
    if [ "$mode" = lora-attn ] && [ -n "$peft_py" ]; then
      p=$("$peft_py" tools/interop/bench_peft.py --config "$tmp/$cfg.json" --batch "$batch" --seq "$seq" \
            --threads "$threads" --steps "$steps" --warmup 1 "${extra[@]}" 2>/dev/null || echo "$p")
    fi
    ft=$(field "$f" tokens_per_s) tt=$(field "$t" tokens_per_s) pt=$(field "$p" tokens_per_s)
    pcol="n/a | n/a | n/a"
    [ "$mode" = lora-attn ] && pcol=$(printf "%.0f | %.0f | %s" "$pt" "$(field "$p" max_rss_mb)" "$(ratio "$ft" "$pt")")
    sg=$(field "$f" sgemm_gflops) shape=$(sed -E 's/.*"sgemm_shape": "([^"]*)".*/\1/' <<<"$f")
    [ "$mode" = full ] && { ceil=$sg ceil_shape=$shape; }
    printf "| %s | %s | %.2fM / %.1fM | %s | %s x %s | %.0f | %.1f | %s | %.0f | %.0f | %.0f | %s | %s |\n" "$cfg" "$name" \
      "$(awk -v p="$(field "$f" trainable)" 'BEGIN{print p/1e6}')" \
      "$(awk -v p="$(field "$f" params)" 'BEGIN{print p/1e6}')" "$threads" "$batch" "$seq" \
      "$ft" "$(field "$f" gflops)" "$(awk -v a="$(field "$f" gflops)" -v b="$sg" 'BEGIN { printf "%.0f %%", 100 * a / b }')" \
      "$(field "$f" max_rss_mb)" "$tt" "$(field "$t" max_rss_mb)" "$(ratio "$ft" "$tt")" "$pcol"
  done
  printf "| %s | sgemm ceiling: OpenBLAS alone, %s (M x K x N) | | %s | %s x %s | | %.1f | 100 %% | | | | | n/a | n/a | n/a |\n" \
    "$cfg" "$ceil_shape" "$threads" "$batch" "$seq" "$ceil"
done
