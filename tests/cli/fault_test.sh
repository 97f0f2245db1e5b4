#!/usr/bin/env bash
# Fault injection end to end (docs/DESIGN.md §5, docs/RELIABILITY.md): on a micro
# model and a small generated corpus, every fault FERRY_INJECT can inject is
# detected, rolled back, named in metrics.jsonl, and (being transient) leaves
# the final weights bit-identical to a clean run; a fault that repeats skips
# its batch (final loss within noise, resume still exact); one that never
# goes away stops the run with a diagnosis instead of looping.
#   fault_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=2
unset FERRY_INJECT

. "$here/micro_fixture.sh"
T="--data data --config micro.json --steps 60 --batch 2 --seq 16 --eval-every 0 --ckpt-every 0 --log-every 100"
final() { grep '"loss_main"' "$1/metrics.jsonl" | tail -1 | sed -E 's/.*"loss_main": ([0-9.]+).*/\1/'; }
same_state() {
  cmp -s "$1/checkpoints/step-00000060/model.safetensors" "$2/checkpoints/step-00000060/model.safetensors" &&
  cmp -s "$1/checkpoints/step-00000060/optimizer.safetensors" "$2/checkpoints/step-00000060/optimizer.safetensors"
}
# event STEP WORDS...: metrics.jsonl has a rollback event at STEP whose line contains every word.
event() {
  local run=$1 step=$2; shift 2
  local line
  line=$(grep "\"step\": $step, \"event\": \"rollback\"" "$run/metrics.jsonl" | head -1)
  [ -n "$line" ] || return 1
  for w in "$@"; do case "$line" in *"$w"*) ;; *) return 1 ;; esac; done
}

echo "== clean run"
check "$ferry train $T --out clean >clean.log 2>&1" "clean train"
check "! grep -q '\"event\"' clean/metrics.jsonl" "clean run logged a guard event"
clean_loss=$(final clean)
# The default run samples 2 % of its GEMMs for ABFT checks: no number changes.
check "$ferry train $T --abft 0 --out plain >plain.log 2>&1" "train with --abft 0"
check "same_state clean plain" "the default ABFT sampling changed the numbers"

echo "== each transient fault: detected, rolled back, named; final state bit-identical"
G=model.layers.1.mlp.gate.weight
run_fault() {  # NAME INJECT STEP WORDS...
  local name=$1 inject=$2 step=$3; shift 3
  FERRY_INJECT="$inject" $ferry train $T --out "$name" >"$name.log" 2>&1
  check "[ $? -eq 0 ]" "$name: train failed: $(tail -1 "$name.log")"
  if event "$name" "$step" "$@"; then ok; else
    bad "$name: no rollback event at step $step naming: $* ($(grep event "$name/metrics.jsonl"))"; fi
  check "same_state clean $name" "$name: final weights/optimizer differ from the clean run"
  echo "  $name: $(grep -m1 '"event"' "$name/metrics.jsonl")"
}
run_fault nan_grad "nan_grad:step=15,tensor=model.layers.2.self_attn.o_proj.weight,index=3" 15 \
  "non-finite gradient norm" "model.layers.2.self_attn.o_proj.weight" '"restored_step": 10'
run_fault flip_weight_exp "flip_weight:step=25,tensor=$G,index=7,bit=30" 26 \
  "state checksum" "weight $G" '"restored_step": 20'
run_fault flip_weight_mant "flip_weight:step=27,tensor=model.embed_tokens.weight,index=100,bit=21" 28 \
  "state checksum" "weight model.embed_tokens.weight"
run_fault flip_moment_m "flip_moment:step=33,tensor=model.layers.0.mlp.up_proj.weight,index=5,bit=29,moment=m" 34 \
  "state checksum" "adam.m[model.layers.0.mlp.up_proj.weight]"
run_fault flip_moment_v "flip_moment:step=36,tensor=$G,index=2,bit=27,moment=v" 37 \
  "state checksum" "adam.v[$G]"
run_fault spike "spike:step=45" 45 "sigma" "batch 44" '"restored_step": 40'
run_fault all "nan_grad:step=12;flip_weight:step=22,tensor=$G,index=1,bit=30;spike:step=50" 50 "sigma"

echo "== a fault right after a resume rolls back to the checkpoint resumed from"
# No in-memory snapshot is taken at a resume (it would cost first-touch time);
# until the next one (step 40) the loaded checkpoint is the rollback base.
$ferry train $T --out rfault --stop-after 30 >/dev/null 2>&1
FERRY_INJECT="nan_grad:step=33,tensor=$G,index=2" $ferry train --out rfault --resume >rfault.log 2>&1
check "[ $? -eq 0 ]" "resume with a fault failed: $(tail -1 rfault.log)"
if event rfault 33 "non-finite gradient norm" '"restored_step": 30'; then ok; else
  bad "rfault: no rollback to step 30 at step 33 ($(grep event rfault/metrics.jsonl))"; fi
check "grep -q 'rolling back to step 30 (the checkpoint resumed from)' rfault.log" "rollback source not named: $(grep guard rfault.log)"
check "same_state clean rfault" "rollback to the resumed checkpoint: final state differs from the clean run"

echo "== ABFT-checked GEMMs on chaos:cpu: no false alarm, corruption detected and named"
sed 's/"warmup_steps": 5}/"warmup_steps": 5, "abft_fraction": 1}/' micro.json > micro_abft.json
A="--data data --config micro_abft.json --steps 60 --batch 2 --seq 16 --eval-every 0 --ckpt-every 0 --log-every 100 --backend chaos:cpu"
check "$ferry train $A --out abft >abft.log 2>&1" "abft clean run"
check "! grep -q '\"event\"' abft/metrics.jsonl" "ABFT false alarm: $(grep event abft/metrics.jsonl | head -1)"
check "same_state clean abft" "chaos:cpu with ABFT changed the numbers"
for gi in 5 17 150; do
  FERRY_INJECT="gemm:step=40,index=$gi" $ferry train $A --out gemm$gi >gemm$gi.log 2>&1
  check "[ $? -eq 0 ]" "gemm$gi: train failed"
  if event gemm$gi 40 "ABFT checksum mismatch" "GEMM #$gi " "restored_step\": 30"; then ok; else
    bad "gemm$gi: no ABFT rollback event ($(grep event gemm$gi/metrics.jsonl))"; fi
  check "grep -q 'model\.' <<<\"\$(grep event gemm$gi/metrics.jsonl)\"" "gemm$gi: the report names no tensor"
  check "same_state clean gemm$gi" "gemm$gi: final state differs from the clean run"
  echo "  gemm$gi: $(grep -m1 '"event"' gemm$gi/metrics.jsonl)"
done
check "! FERRY_INJECT='gemm:step=3' $ferry train $T --abft 0 --out nochaos >/dev/null 2>&1" "gemm fault with ABFT off (no chaos backend) accepted"

echo "== re-execution (guard_recompute_every): a bit flip inside a step is caught only by recomputing it"
sed 's/"warmup_steps": 5}/"warmup_steps": 5, "guard_recompute_every": 10}/' micro.json > micro_rx.json
R="--data data --config micro_rx.json --steps 60 --batch 2 --seq 16 --eval-every 0 --ckpt-every 0 --log-every 100"
check "$ferry train $R --out rx >rx.log 2>&1" "re-execution clean run"
check "! grep -q '\"event\"' rx/metrics.jsonl" "re-execution false alarm: $(grep event rx/metrics.jsonl | head -1)"
check "same_state clean rx" "re-executing steps changed the numbers"
FLIP="flip_act:step=41,layer=1,act=ln2,index=5,bit=22"  # high mantissa: no NaN, no spike
FERRY_INJECT="$FLIP" $ferry train $R --out rxflip >rxflip.log 2>&1
check "[ $? -eq 0 ]" "rxflip: train failed: $(tail -1 rxflip.log)"
if event rxflip 41 "re-execution of step 41 disagrees" "model." '"restored_step": 40'; then ok; else
  bad "rxflip: no re-execution rollback at step 41 ($(grep event rxflip/metrics.jsonl))"; fi
check "same_state clean rxflip" "rxflip: final state differs from the clean run"
echo "  rxflip: $(grep -m1 '"event"' rxflip/metrics.jsonl)"
# Without re-execution the same flip goes unnoticed and changes the result.
FERRY_INJECT="$FLIP" $ferry train $T --out noflipcheck >noflipcheck.log 2>&1
check "! grep -q '\"event\"' noflipcheck/metrics.jsonl && ! same_state clean noflipcheck" \
  "an activation flip without re-execution should be silent and change the weights"
check "! FERRY_INJECT='flip_act:step=3,act=nope' $ferry train $T --out badact >/dev/null 2>&1" "unknown activation accepted"

echo "== a repeating bad batch is skipped; resume stays exact"
check "FERRY_INJECT='spike:step=45,repeat=2' $ferry train $T --out skip >skip.log 2>&1" "skip run failed"
check "grep -q '\"skip_batch\": true' skip/metrics.jsonl" "no skip_batch event"
check "grep -q '\"skipped_batches\": \[45\]' skip/checkpoints/step-00000060/trainer_state.json" \
  "skipped batch not saved in trainer_state.json"
skip_loss=$(final skip)
check "awk -v a=$clean_loss -v b=$skip_loss 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 0.25 * a) }'" \
  "final loss after a skip $skip_loss is not within noise of the clean $clean_loss"
echo "  final main loss: clean $clean_loss, with a skipped batch $skip_loss"
FERRY_INJECT='spike:step=45,repeat=2' $ferry train $T --out skip2 --stop-after 50 >/dev/null 2>&1
check "$ferry train --out skip2 --resume >/dev/null 2>&1" "resume after a skip"
check "same_state skip skip2" "resume after a skipped batch is not bit-identical"

echo "== a fault that never goes away stops with a diagnosis"
FERRY_INJECT="nan_grad:step=20,repeat=1000" $ferry train $T --out stuck >stuck.log 2>stuck.err
rc=$?
check "[ $rc -ne 0 ]" "persistent fault: exit 0"
check "grep -q 'consecutive failed attempts at step 20' stuck.err" "no diagnosis: $(cat stuck.err)"
check "[ \$(grep -c '\"event\"' stuck/metrics.jsonl) -eq 5 ]" "expected 5 rollback events"

echo "== bad FERRY_INJECT is an error"
check "! FERRY_INJECT='flip_weight:step=3,tensor=nope' $ferry train $T --out badinj >/dev/null 2>&1" "unknown tensor accepted"
check "! FERRY_INJECT='meteor:step=3' $ferry train $T --out badinj2 >/dev/null 2>&1" "unknown fault accepted"

finish fault_test
