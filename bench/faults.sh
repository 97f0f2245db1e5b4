#!/usr/bin/env bash
# Cost of surviving faults (docs/RELIABILITY.md):
#  1. checkpoint stall: synchronous save vs the stall of an asynchronous one
#     (model + AdamW state): a process's first, without and with the
#     snapshot buffers reserved in the background (fy_ckpt_async_reserve,
#     then 3 training steps of 2 x 64), and a later one
#     reusing them; the background write time; and those 3 steps' time
#     without and with the reserve running beside them;
#  2. step time with ABFT GEMM checks on none, the default 2 % and all GEMMs;
#  3. time from SIGKILL to training again under `ferry train --supervise`:
#     from the kill until the restarted trainer appends its next step; and
#     how long the restarted trainer's first checkpoint held training (its
#     "training held" log line: the first save of a fresh process), and the
#     last restarted trainer's second (a save reusing the first one's buffers).
#   bench/faults.sh [BUILD_DIR]      (env: THREADS, STEPS (default 2), BATCH (8), SEQ (256),
#                                     ONLY: one of stall, abft, kill to run just that part)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ferry=$PWD/$build/ferry
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=${THREADS:-$(nproc)} FERRY_LOG=error
want() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }

if want stall; then
echo "| config | params | sync save s | first async stall s, fresh buffers | first, reserved | later async stall s (reused) | async write s (background) | later stall / sync | 3 steps s, without / with the reserve |"
echo "|---|---|---|---|---|---|---|---|---|"
for cfg in tiny small; do
  r=$("$build/bench/bench_faults" --config $cfg --vocab 8192 --out "$tmp/ck-$cfg")
  printf "| %s | %.1fM | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f%% | %.2f / %.2f |\n" $cfg \
    "$(awk -v p="$(field "$r" params)" 'BEGIN{print p/1e6}')" "$(field "$r" sync_save_s)" \
    "$(field "$r" first_stall_s)" "$(field "$r" first_reserved_stall_s)" \
    "$(field "$r" async_stall_s)" "$(field "$r" async_write_s)" \
    "$(awk -v a="$(field "$r" async_stall_s)" -v b="$(field "$r" sync_save_s)" 'BEGIN{print 100*a/b}')" \
    "$(field "$r" gap_steps_s)" "$(field "$r" gap_steps_reserved_s)"
done

fi

# ABFT overhead: training steps on chaos:cpu checking 0, 2 % (the default) and 100 % of GEMMs,
# the three settings taking turns step by step in one process (same noise for all).
if want abft; then
echo
echo "| config | batch x seq | ABFT 0 % step s | ABFT 2 % (default) s | overhead | ABFT 100 % s | overhead | GEMMs checked per step (2 % / 100 %) |"
echo "|---|---|---|---|---|---|---|---|"
B=${BATCH:-8} S=${SEQ:-256} N=${STEPS:-3}
for cfg in tiny small; do
  r=$("$build/bench/bench_faults" --config $cfg --vocab 8192 --abft 0,0.02,1 --steps $N --batch $B --seq $S)
  z=$(field "$r" step_s_0) d=$(field "$r" step_s_0.02) a=$(field "$r" step_s_1)
  printf "| %s | %d x %d | %.3f | %.3f | %+.1f%% | %.3f | %+.0f%% | %.1f / %.0f |\n" $cfg $B $S "$z" "$d" \
    "$(awk -v a="$d" -v b="$z" 'BEGIN{print 100*(a/b-1)}')" "$a" "$(awk -v a="$a" -v b="$z" 'BEGIN{print 100*(a/b-1)}')" \
    "$(awk -v c="$(field "$r" checked_0.02)" -v n=$N 'BEGIN{print c/(n+1)}')" "$(awk -v c="$(field "$r" checked_1)" -v n=$N 'BEGIN{print c/(n+1)}')"
done

fi

# Kill-to-training: a supervised small-model run on a small corpus.
want kill || exit 0
cd "$tmp"
awk 'BEGIN { srand(1); for (i = 0; i < 20000; i++) printf "word%d and word%d.\n", int(rand()*500), int(rand()*500) }' > c.txt
$ferry tokenizer train --vocab-size 1024 -o tok.json c.txt >/dev/null
mkdir -p d && cp tok.json d/tokenizer.json
$ferry data prepare c.txt --tokenizer tok.json --out d >/dev/null
echo
echo "| config | kill -> next step logged (s), 3 kills | restarted trainer's first checkpoint: training held (s) | the last one's second checkpoint: held (s) | restart backoff |"
echo "|---|---|---|---|---|"
FERRY_LOG=info $ferry train --supervise --restart-backoff 0 --config small --data d --out run --steps 100000 --batch 2 \
  --seq 64 --ckpt-every 5 --eval-every 0 --log-every 100000 >run.log 2>&1 &
sup=$!
times="" held=""
last_held() { grep 'training held' run.log | tail -1 | sed -E 's/.*training held ([0-9.]+) s.*/\1/'; }
held_lines() { grep -c 'training held' run.log || true; }
step_of_last() { tail -1 run/metrics.jsonl 2>/dev/null | sed -nE 's/^\{"step": ([0-9]+), "loss".*/\1/p'; }
for k in 1 2 3; do
  for _ in $(seq 1 600); do [ -f run/checkpoints/LATEST ] && [ "$(wc -l <run/metrics.jsonl 2>/dev/null || echo 0)" -ge 8 ] && break; sleep 0.1; done
  child=$(pgrep -P $sup)
  kill -STOP "$child"                  # freeze it to read a consistent LATEST
  S=$(sed -E 's/step-0*//' run/checkpoints/LATEST)
  inode=$(stat -c %i run/metrics.jsonl)
  t0=$(date +%s.%N)
  n0=$(held_lines)
  kill -9 "$child"
  # Training again = the new trainer (new metrics.jsonl inode) logged step S+1.
  for _ in $(seq 1 3000); do
    [ "$(stat -c %i run/metrics.jsonl 2>/dev/null)" != "$inode" ] && [ "$(step_of_last)" = "$((S + 1))" ] && break
    sleep 0.01
  done
  t1=$(date +%s.%N)
  times="$times $(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.2f", b - a }')"
  for _ in $(seq 1 1200); do [ "$(held_lines)" -gt "$n0" ] && break; sleep 0.05; done
  held="$held $(last_held)"
done
for _ in $(seq 1 1200); do [ "$(held_lines)" -gt "$((n0 + 1))" ] && break; sleep 0.05; done
held2=$(last_held)
kill -INT $sup; wait $sup || true
echo "| small |$times |$held | $held2 | 0 s |"
