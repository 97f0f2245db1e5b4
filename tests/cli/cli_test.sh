#!/usr/bin/env bash
# End-to-end tests of the ferry command on a small corpus this script makes:
#   tokenizer -> data prepare -> train (loss falls) -> stop/resume is
#   bit-identical -> inspect -> generate is deterministic for a seed,
# and every subcommand's error path exits non-zero with a one-line reason
# and leaves existing files byte-identical.
#   cli_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=2

# A corpus with structure to learn: sentences from a small grammar.
awk 'BEGIN { srand(7);
  split("the a one every that", det); split("shepherd king river city servant stone lamb", noun);
  split("walked spoke rested waited sang wept", verb); split("by near beyond under before", prep);
  for (i = 0; i < 6000; i++) {
    printf "%s %s %s %s the %s", det[int(rand()*5)+1], noun[int(rand()*7)+1], verb[int(rand()*6)+1],
           prep[int(rand()*5)+1], noun[int(rand()*7)+1];
    printf (rand() < 0.3) ? ".\n" : ", and ";
  } }' > corpus.txt

# Runs a command that must fail: non-zero exit, exactly one line on stderr,
# and the listed files unchanged.
expect_fail() {
  local what=$1; shift
  local files=() sums_before sums_after
  while [ "$1" != "--" ]; do files+=("$1"); shift; done; shift
  sums_before=$(for f in "${files[@]}"; do sha256sum "$f" 2>/dev/null || echo "missing $f"; done)
  "$@" >out.txt 2>err.txt
  local rc=$?
  sums_after=$(for f in "${files[@]}"; do sha256sum "$f" 2>/dev/null || echo "missing $f"; done)
  if [ $rc -eq 0 ]; then bad "$what: exited 0"; return; fi
  if [ "$(wc -l <err.txt)" -ne 1 ]; then bad "$what: stderr is not one line: $(cat err.txt)"; return; fi
  if [ "$sums_before" != "$sums_after" ]; then bad "$what: files changed"; return; fi
  ok
  echo "  ok (exit $rc): $what -> $(cat err.txt)"
}

echo "== tokenizer, data"
check "$ferry tokenizer train --vocab-size 300 -o tok.json corpus.txt >/dev/null" "tokenizer train"
check "[ \"\$($ferry tokenizer decode -t tok.json \$($ferry tokenizer encode -t tok.json --text 'the king wept.'))\" = 'the king wept.' ]" \
  "tokenizer encode/decode round trip"
check "$ferry data prepare corpus.txt --tokenizer tok.json --out data >/dev/null" "data prepare"
cp tok.json data/tokenizer.json
check "$ferry inspect data/train-00000.bin >/dev/null" "inspect shard"

echo "== train: loss falls"
T="--data data --steps 40 --batch 4 --seq 32 --eval-every 20 --ckpt-every 20 --log-every 10 --lr 0.003"
check "$ferry train $T --out run >train.log 2>&1" "train"
first=$(grep -m1 '"loss_main"' run/metrics.jsonl | sed -E 's/.*"loss_main": ([0-9.]+).*/\1/')
last=$(grep '"loss_main"' run/metrics.jsonl | tail -1 | sed -E 's/.*"loss_main": ([0-9.]+).*/\1/')
check "awk -v a=$first -v b=$last 'BEGIN { exit !(b < a - 1.5) }'" "loss did not fall enough ($first -> $last)"
echo "  main loss $first -> $last"
check "[ -s run/loss.svg ] && grep -q '<svg' run/loss.svg" "loss.svg written"
check "grep -q val_loss run/metrics.jsonl" "validation loss logged"
check "$ferry inspect run >/dev/null" "inspect run"

echo "== stop and resume are bit-identical"
check "$ferry train $T --out run2 --stop-after 13 >/dev/null 2>&1" "train --stop-after"
check "[ \"\$(cat run2/checkpoints/LATEST)\" = step-00000013 ]" "stop checkpoint is LATEST"
check "$ferry train --out run2 --resume >/dev/null 2>&1" "train --resume"
check "cmp -s run/checkpoints/step-00000040/model.safetensors run2/checkpoints/step-00000040/model.safetensors" \
  "resumed weights differ from an uninterrupted run"
check "cmp -s run/checkpoints/step-00000040/optimizer.safetensors run2/checkpoints/step-00000040/optimizer.safetensors" \
  "resumed optimizer state differs"

echo "== Ctrl-C stops with a checkpoint"
$ferry train --data data --steps 100000 --batch 2 --seq 16 --eval-every 0 --ckpt-every 0 --out run3 >run3.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do [ "$(wc -l <run3/metrics.jsonl 2>/dev/null || echo 0)" -ge 3 ] && break; sleep 0.1; done
kill -INT $pid
wait $pid
rc=$?
check "[ $rc -eq 130 ]" "SIGINT exit code $rc, expected 130"
check "grep -q 'interrupted at step' run3.log" "no interruption message"
check "$ferry inspect run3 >/dev/null 2>&1" "checkpoint after SIGINT does not verify"
stopped=$(sed -E 's/step-0*//' run3/checkpoints/LATEST)
check "$ferry train --out run3 --resume --steps $((stopped + 2)) >/dev/null 2>&1" "resume after SIGINT"
check "[ \"\$(cat run3/checkpoints/LATEST)\" = \"\$(printf 'step-%08d' $((stopped + 2)))\" ]" "resume after SIGINT did not advance"

echo "== generate"
G="--model run --prompt 'the king' -n 24 --temperature 1.0 --top-k 20"
check "$ferry generate $G --seed 5 >g1.txt 2>/dev/null" "generate"
check "$ferry generate $G --seed 5 >g2.txt 2>/dev/null" "generate again"
check "$ferry generate $G --seed 6 >g3.txt 2>/dev/null" "generate other seed"
check "[ -s g1.txt ] && cmp -s g1.txt g2.txt" "same seed, different text"
check "! cmp -s g1.txt g3.txt" "different seeds, same text"
check "$ferry generate $G --seed 5 --weights q8_0 >g4.txt 2>/dev/null && [ -s g4.txt ]" "generate --weights q8_0"

echo "== error paths: non-zero exit, one line, nothing changed"
cp -r run bad && printf '\xff' | dd of=bad/checkpoints/step-00000040/model.safetensors bs=1 seek=4000 conv=notrunc 2>/dev/null
expect_fail "train: unknown flag" -- $ferry train --bogus
expect_fail "train: malformed number" -- $ferry train --steps abc
expect_fail "train: missing data" -- $ferry train --data nowhere --out r3
expect_fail "train: existing run without --resume" run/config.json run/metrics.jsonl -- $ferry train $T --out run
expect_fail "tokenizer: missing file" -- $ferry tokenizer encode -t nothere.json --text hi
head -c 300 tok.json > tok_trunc.json
expect_fail "tokenizer: truncated tokenizer.json" tok_trunc.json -- $ferry tokenizer encode -t tok_trunc.json --text hi
expect_fail "data prepare: missing input" -- $ferry data prepare nothere.txt --tokenizer tok.json --out d2
expect_fail "inspect: corrupted safetensors" bad/checkpoints/step-00000040/model.safetensors -- \
  $ferry inspect bad/checkpoints/step-00000040/model.safetensors
expect_fail "generate: corrupted checkpoint dir" bad/checkpoints/step-00000040/model.safetensors -- \
  $ferry generate --model bad/checkpoints/step-00000040 --prompt hi -n 2
mkdir -p trunc && cp data/*.bin data/tokenizer.json trunc/ && truncate -s -10 trunc/train-00000.bin
expect_fail "train: truncated shard" trunc/train-00000.bin -- $ferry train --data trunc --out r4 --steps 2
sed -E 's/"vocab_size":[[:space:]]*[0-9]+/"vocab_size": 999/' run/config.json > wrongvocab.json
expect_fail "train: config vocab != tokenizer vocab" wrongvocab.json -- $ferry train --data data --config wrongvocab.json --out r5 --steps 2
expect_fail "generate: missing model" -- $ferry generate --model nowhere --prompt hi
expect_fail "generate: bad temperature" -- $ferry generate --model run --prompt hi --temperature -1
expect_fail "generate: unknown weight format" -- $ferry generate --model run --prompt hi --weights q4_k
expect_fail "unknown command" -- $ferry frobnicate

finish cli_test
