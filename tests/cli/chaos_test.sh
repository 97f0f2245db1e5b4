#!/usr/bin/env bash
# Chaos test of `ferry train --supervise` (docs/DESIGN.md §5): a small training run is
# killed with SIGKILL at 20+ random instants (many land inside checkpoint
# writes, which take a large share of each step here) and once frozen with
# SIGSTOP (a hang). After every kill, LATEST must name a checkpoint that
# verifies; at the end the weights and optimizer state must be bit-identical
# to an uninterrupted run of the same seed.
#   chaos_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1

awk 'BEGIN { srand(3); split("the lamb king river city stone walked spoke rested sang by near", w);
  for (i = 0; i < 4000; i++) { printf "%s %s %s %s.\n", w[int(rand()*12)+1], w[int(rand()*12)+1],
    w[int(rand()*12)+1], w[int(rand()*12)+1] } }' > corpus.txt
$ferry tokenizer train --vocab-size 300 -o data/tokenizer.json corpus.txt >/dev/null 2>&1 ||
  { mkdir -p data && $ferry tokenizer train --vocab-size 300 -o data/tokenizer.json corpus.txt >/dev/null; }
$ferry data prepare corpus.txt --tokenizer data/tokenizer.json --out data >/dev/null || exit 1
V=$(( $(grep -o '"id":[[:space:]]*[0-9]*' data/tokenizer.json | grep -o '[0-9]*$' | sort -n | tail -1) + 1 ))
cat > small.json <<EOF
{"vocab_size": $V, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 32, "kv_lora_rank": 32,
 "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 4,
 "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "norm_topk_prob": true,
 "num_nextn_predict_layers": 1, "aux_loss_alpha": 0.0001, "max_position_embeddings": 256}
EOF
F="--config small.json --data data --steps 1500 --batch 2 --seq 16 --ckpt-every 2 --eval-every 40 --log-every 1000"
$ferry train $F --out ref >/dev/null 2>&1
check "[ -f ref/checkpoints/step-00001500/model.safetensors ]" "reference run did not finish"

echo "== 20+ SIGKILLs under the supervisor"
$ferry train --supervise --max-restarts 200 --restart-backoff 0.2 $F --out chaos >chaos.log 2>&1 &
sup=$!
kills=0 bad_latest=0
# The kill instants are random in a window after the supervisor restarts the
# trainer. A restart that reaches no checkpoint before its kill makes the
# supervisor double its backoff (0.2 s .. 30 s), and the 200 turns below then
# pass while it waits: on a loaded machine, where a restart takes longer than
# the window, the loop ran out of turns after ~8 kills. So the window widens
# while LATEST stays put (up to 2 s) and narrows again when it moves.
win=0.15 latest=""
for i in $(seq 1 200); do
  [ $kills -ge 22 ] && break
  kill -0 $sup 2>/dev/null || break
  sleep "$(awk -v r=$RANDOM -v w=$win 'BEGIN { printf "%.3f", 0.03 + r / 32768 * w }')"
  child=$(pgrep -P $sup)
  [ -n "$child" ] || continue
  kill -9 $child 2>/dev/null && kills=$((kills + 1))
  sleep 0.05 # the supervisor is backing off now: nothing writes
  if [ -f chaos/checkpoints/LATEST ]; then
    $ferry inspect "chaos/checkpoints/$(cat chaos/checkpoints/LATEST)" >/dev/null 2>&1 ||
      { bad_latest=$((bad_latest + 1)); echo "  LATEST invalid after kill $kills"; }
    now=$(cat chaos/checkpoints/LATEST)
    win=$(awk -v w=$win -v same=$([ "$now" = "$latest" ] && echo 1 || echo 0) \
      'BEGIN { w = same ? w * 1.5 : w / 1.5; printf "%.3f", (w > 2 ? 2 : (w < 0.15 ? 0.15 : w)) }')
    latest=$now
  fi
done
wait $sup
rc=$?
echo "  $kills kills, supervisor exit $rc, $(grep -c restart chaos/restarts.jsonl 2>/dev/null) restarts recorded, last kill window ${win} s"
check "[ $kills -ge 20 ]" "only $kills kills landed (the run finished, or the turns ran out while the supervisor backed off)"
check "[ $bad_latest -eq 0 ]" "LATEST named an invalid checkpoint $bad_latest times"
check "[ $rc -eq 0 ]" "supervised run exit code $rc"
check "cmp -s ref/checkpoints/step-00001500/model.safetensors chaos/checkpoints/step-00001500/model.safetensors" \
  "weights after 20+ kills differ from the uninterrupted run"
check "cmp -s ref/checkpoints/step-00001500/optimizer.safetensors chaos/checkpoints/step-00001500/optimizer.safetensors" \
  "optimizer state after kills differs"

echo "== a hang (SIGSTOP) is detected within the heartbeat timeout"
$ferry train --supervise --heartbeat-timeout 1.5 --restart-backoff 0.1 $F --out hang >hang.log 2>&1 &
sup=$!
for _ in $(seq 1 100); do [ -f hang/checkpoints/LATEST ] && break; sleep 0.05; done
child=$(pgrep -P $sup)
t0=$(date +%s.%N)
kill -STOP $child
for _ in $(seq 1 100); do grep -q hang hang/restarts.jsonl 2>/dev/null && break; sleep 0.05; done
t1=$(date +%s.%N)
wait $sup
rc=$?
detect=$(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.2f", b - a }')
echo "  hang detected after ${detect} s (timeout 1.5 s), supervisor exit $rc"
check "grep -q '\"reason\": \"hang' hang/restarts.jsonl" "hang not recorded in restarts.jsonl"
check "awk -v d=$detect 'BEGIN { exit !(d < 3.0) }'" "hang detection took ${detect} s"
check "[ $rc -eq 0 ]" "run after a hang did not finish (exit $rc)"
check "cmp -s ref/checkpoints/step-00001500/model.safetensors hang/checkpoints/step-00001500/model.safetensors" \
  "weights after a hang differ from the uninterrupted run"

echo "== a clean failure is not retried"
$ferry train --supervise $F --out chaos >again.log 2>&1
check "[ \$? -eq 1 ] && grep -q 'already holds a run' again.log" "bad input was retried or not reported"

finish chaos_test
