#!/usr/bin/env bash
# ferry train --lora-rank R --base-weights FMT: LoRA on a frozen base held
# as q8_0 / q4_0 (QLoRA-style; docs/FINETUNE.md "A quantized base"). Each
# format trains (the log names it, config.json records
# ferry.lora_base_weights), a run stopped at 3 resumes bit-identically to a
# straight one, --resume refuses another --base-weights (and accepts the
# run's own), the held base trains differently from the f32 one (the
# rounding is real), generate applies the result, and --base-weights
# without --lora-rank or with an unknown format is refused.
#   qlora_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"

T=(--config micro.json --data data --batch 4 --seq 32 --eval-every 3 --seed 3 --steps 6 --ckpt-every 3 --lr 1e-2)
L=(--lora-rank 4 --lora-dropout 0.1)
G=(--prompt "the king" -n 12 --temperature 0 --print-ids)
ck() { echo "$1/checkpoints/step-$(printf %08d "$2")/$3.safetensors"; }

check '"$ferry" train "${T[@]}" "${L[@]}" --out f32 >f32.log 2>&1' "the f32-base LoRA run (see f32.log)"
for q in q8_0 q4_0; do
  check '"$ferry" train "${T[@]}" "${L[@]}" --base-weights $q --out $q >$q.log 2>&1' "LoRA on a $q base (see $q.log)"
  check 'grep -q "^LoRA: rank 4.*(base frozen, $q)" $q.log' "the LoRA line names the $q base (see $q.log)"
  check 'python3 -c "import json,sys; sys.exit(json.load(open(\"$q/config.json\"))[\"ferry\"][\"lora_base_weights\"] != \"$q\")"' \
    "$q/config.json records ferry.lora_base_weights"
  check '! cmp -s "$(ck f32 6 model)" "$(ck $q 6 model)"' "the $q base trained the f32 base's bits"
  check '"$ferry" train "${T[@]}" "${L[@]}" --base-weights $q --stop-after 3 --out ${q}r >${q}r.log 2>&1' \
    "stop a $q run after 3 (see ${q}r.log)"
  check '"$ferry" train --out ${q}r --resume >${q}rr.log 2>&1 && grep -q "(base frozen, $q)" ${q}rr.log' \
    "resume the $q run (see ${q}rr.log)"
  check 'cmp -s "$(ck $q 6 model)" "$(ck ${q}r 6 model)" && cmp -s "$(ck $q 6 optimizer)" "$(ck ${q}r 6 optimizer)"' \
    "the resumed $q run differs from the straight one"
  check '"$ferry" generate --model $q "${G[@]}" >g$q.log 2>&1 && [ "$(grep "^ids:" g$q.log | wc -w)" = 13 ]' \
    "generate --model of the $q LoRA run (see g$q.log)"
done
# --resume keeps the run's format: the same one is accepted, another refused.
check '"$ferry" train --out q8_0r --resume --base-weights q8_0 --steps 7 >same.log 2>&1' \
  "--resume with the run's own --base-weights (see same.log)"
check '! "$ferry" train --out q8_0r --resume --base-weights q4_0 --steps 8 >conf.log 2>&1 && grep -q "holds its LoRA base as q8_0" conf.log' \
  "--resume with another --base-weights refused (see conf.log)"
check '! "$ferry" train "${T[@]}" --base-weights q8_0 --out nolora >nolora.log 2>&1 && grep -q "needs --lora-rank" nolora.log' \
  "--base-weights without --lora-rank refused (see nolora.log)"
check '! "$ferry" train "${T[@]}" "${L[@]}" --base-weights q3 --out bad >bad.log 2>&1 && grep -q "unknown weight format" bad.log' \
  "an unknown --base-weights refused (see bad.log)"
finish qlora_test
