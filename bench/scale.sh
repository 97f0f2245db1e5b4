#!/usr/bin/env bash
# Scale-out over slow links (docs/SCALING.md): the same model, data and token
# budget trained on 1 rank and on 2 ranks with plain data parallelism (ZeRO-1),
# DP with its gradients sent during the backward in 25 MB buckets (DP-buckets)
# or layer by layer (DP-buckets-layer), the DDP layout (--zero 0: whole AdamW
# on every rank, gradients all-reduced; one-shot, in buckets, layer by layer,
# with the progress thread),
# expert parallel (EP: each rank holds and runs its own routed experts),
# int8-compressed gradients, and DiLoCo (H = 8, 32, and 8 with int8 deltas); the 2-rank runs once on
# the normal link (loopback) and once across two network namespaces joined by
# a shaped veth pair (tests/dist/slowlink.sh: RATE Mbit/s, DELAY ms where the
# kernel has netem). Prints tokens/s, bytes sent per step and per token (rank
# 0), the final validation loss, and bytes/token and loss against plain DP.
#   bench/scale.sh [BUILD_DIR]   (env: CONFIG (tiny), STEPS (96), BATCH (8), SEQ (128),
#                                 RATE (100), DELAY (20), THREADS (1 per rank),
#                                 RUNS (names of runs, default all), LINKS (normal slow),
#                                 SLOW_STEPS (steps of the slow-link runs, default STEPS:
#                                 fewer measure their tokens/s only; the loss is then n/a))
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ferry=$PWD/$build/ferry
cfg=${CONFIG:-tiny} steps=${STEPS:-96} batch=${BATCH:-8} seq=${SEQ:-128}
rate=${RATE:-100} delay=${DELAY:-20} slow_steps=${SLOW_STEPS:-${STEPS:-96}}
# Kernels without netem get the delay from the user-space link (slowlink.sh).
[ -x "$build/tests/delaylink" ] && export FERRY_DELAYLINK=$PWD/$build/tests/delaylink
export OMP_NUM_THREADS=${THREADS:-1} FERRY_LOG=error
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# One prepared corpus for every run (the default KJV corpus, cached in data/).
"$ferry" train --config "$cfg" --out "$tmp/prep" --steps 1 --batch 2 --seq 16 --eval-every 0 >/dev/null
data=$(sed -n 's/.*"data_dir":[[:space:]]*"\([^"]*\)".*/\1/p' "$tmp/prep/config.json")
common="--data $data --config $cfg --steps $steps --batch $batch --seq $seq --eval-every $steps --ckpt-every 0 --log-every 100000"

run() { # name link ranks flags...
  local name=$1 link=$2 ranks=$3; shift 3
  local out="$tmp/$name-$link" t0 t1 log="$tmp/$name-$link.log" n=$steps c=$common
  if [ "$link" = slow ] && [ "$slow_steps" != "$steps" ]; then
    n=$slow_steps c="${common/--steps $steps --/--steps $slow_steps --}"
    c="${c/--eval-every $steps /--eval-every 0 }"
  fi
  t0=$(date +%s.%N)
  if [ "$ranks" = 1 ]; then
    "$ferry" train $c --out "$out" "$@" > "$log" 2>&1 || true
  elif [ "$link" = normal ]; then
    "$ferry" train $c --out "$out" --ranks 2 "$@" > "$log" 2>&1 || true
  else
    tests/dist/slowlink.sh --rate-mbit "$rate" --delay-ms "$delay" --env FERRY_LOG -- \
      "$ferry" train $c --out "$out" --comm-timeout 3600 "$@" > "$log" 2>&1 || true
  fi
  t1=$(date +%s.%N)
  local bpt vl
  bpt=$(sed -n 's/.*(\([0-9.]*\) bytes per token).*/\1/p' "$log"); bpt=${bpt:-0}
  vl=$(sed -n 's/.*validation loss \([0-9.]*\);.*/\1/p' "$log"); vl=${vl:-n/a}
  echo "$name $link $ranks $(awk -v a=$t0 -v b=$t1 -v n=$((n * batch * seq)) 'BEGIN{printf "%.0f", n/(b-a)}') $bpt $vl"
}

# RUNS (env): the names of the runs to do, e.g. RUNS="DP DP-buckets" (default: all).
want() { [ -z "${RUNS:-}" ] || [[ " $RUNS " == *" $1 "* ]]; }
{
  if want 1-rank; then run 1-rank normal 1; fi
  for link in ${LINKS:-normal slow}; do
    if want DP; then run DP $link 2; fi
    if want DP-buckets; then run DP-buckets $link 2 --grad-buckets 1; fi
    if want DP-buckets-layer; then run DP-buckets-layer $link 2 --grad-buckets 1 --bucket-mb 0; fi
    if want DP-buckets-progress; then run DP-buckets-progress $link 2 --grad-buckets 2; fi
    if want DDP; then run DDP $link 2 --zero 0; fi
    if want DDP-buckets; then run DDP-buckets $link 2 --zero 0 --grad-buckets 1; fi
    if want DDP-buckets-layer; then run DDP-buckets-layer $link 2 --zero 0 --grad-buckets 1 --bucket-mb 0; fi
    if want DDP-buckets-progress; then run DDP-buckets-progress $link 2 --zero 0 --grad-buckets 2; fi
    if want EP; then run EP $link 2 --expert-parallel; fi
    if want DP-int8; then run DP-int8 $link 2 --compress-grads; fi
    if want DiLoCo-H8; then run DiLoCo-H8 $link 2 --diloco 8; fi
    if want DiLoCo-H32; then run DiLoCo-H32 $link 2 --diloco 32; fi
    if want DiLoCo-H8-int8; then run DiLoCo-H8-int8 $link 2 --diloco 8 --compress-grads; fi
  done
} > "$tmp/rows"
{ sed -n 's/.*slowlink: .*shaping: /(slow link: /p' "$tmp"/*-slow.log 2>/dev/null || true; } | head -1 | sed 's/$/)/'
grep -q "slowlink: NOTE" "$tmp"/*-slow.log 2>/dev/null && echo "(slow link: bandwidth cap only; no netem and no delaylink for the delay)"
[ "$slow_steps" = "$steps" ] || echo "(slow-link runs: $slow_steps steps, for tokens/s; their loss is n/a)"
echo "model $cfg, $steps steps x $batch x $seq tokens = $((steps * batch * seq)) tokens; slow link $rate Mbit/s, ${delay} ms"
echo
echo "| run | link | ranks | tokens/s | bytes/step (rank 0) | bytes/token | val loss | bytes/token vs DP | loss vs DP |"
echo "|---|---|---|---|---|---|---|---|---|"
awk -v tok=$((batch * seq)) '
  { rows[NR] = $0; if ($1 == "DP") { dpb[$2] = $5; dpl[$2] = $6 } }
  END { for (i = 1; i <= NR; i++) { split(rows[i], f, " ");
    ratio = (f[5] > 0 && dpb[f[2]] > 0) ? sprintf("%.1fx fewer", dpb[f[2]] / f[5]) : "-";
    dl = (dpl[f[2]] + 0 > 0 && f[6] + 0 > 0) ? sprintf("%+.1f%%", 100 * (f[6] / dpl[f[2]] - 1)) : "-";
    printf "| %s | %s | %s | %s | %.0f | %.0f | %s | %s | %s |\n", f[1], f[2], f[3], f[4], f[5] * tok, f[5], f[6], ratio, dl } }' "$tmp/rows"
