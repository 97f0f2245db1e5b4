#!/usr/bin/env bash
# ferry train --init-from MODEL: a micro run is trained, exported to a
# Hugging Face directory (f32, exact), and fine-tuned from both. The
# fine-tune starts from the model's weights (its validation loss after one
# step at lr 1e-9 is the source's own, far below a fresh model's), the
# ferry run and its f32 export give bit-identical checkpoints, a stopped
# run resumes bit-identically without the model, and the refusals hold.
#   init_from_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"

T=(--data data --batch 4 --seq 32 --eval-every 0 --seed 3)
# The "KEY" value of the first / last metrics.jsonl line holding it.
first() { grep -m1 "\"$2\"" "$1/metrics.jsonl" | sed -E "s/.*\"$2\": ([-0-9.e+]+).*/\\1/"; }
last() { grep "\"$2\"" "$1/metrics.jsonl" | tail -1 | sed -E "s/.*\"$2\": ([-0-9.e+]+).*/\\1/"; }
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= t) }'; }
ck() { echo "$1/checkpoints/step-$(printf %08d "$2")/model.safetensors"; }

check '"$ferry" train --config micro.json --out src --steps 40 --data data --batch 4 --seq 32 --eval-every 40 \
  --seed 1 >src.log 2>&1' "train the source run (see src.log)"
check '"$ferry" convert --model src --to hf --dtype f32 --out hf32 >conv.log 2>&1' "convert --to hf --dtype f32 (see conv.log)"

# (a) the weights are the model's: validation after one step at lr 1e-9 is
# the source's own. The expert-bias balancing moves by gamma per step
# whatever the lr, so src0 is src with ferry.bias_update_speed 0 (exact
# check); hf32 keeps the default gamma 0.001 (checked to 1e-3).
cp -r src src0
python3 -c 'import json; p = "src0/config.json"; c = json.load(open(p)); c["ferry"]["bias_update_speed"] = 0; json.dump(c, open(p, "w"))'
V=("${T[@]}" --eval-every 1 --steps 1 --lr 1e-9)
check '"$ferry" train --init-from src0 "${V[@]}" --out v0 >v0.log 2>&1' "train --init-from src0 (see v0.log)"
check '"$ferry" train --init-from hf32 "${V[@]}" --out va >va.log 2>&1' "train --init-from hf32 (see va.log)"
check '"$ferry" train --config micro.json "${V[@]}" --out vs >vs.log 2>&1' "train from scratch (see vs.log)"
src_val=$(last src val_loss) v0_val=$(last v0 val_loss) init_val=$(last va val_loss) scratch_val=$(last vs val_loss)
echo "  validation loss: source $src_val; after 1 step at lr 1e-9: --init-from src0 $v0_val," \
  "--init-from hf32 $init_val, fresh model $scratch_val"
check 'near "$src_val" "$v0_val" 1e-4' "init-from src0 validation loss $v0_val != source's $src_val"
check 'near "$src_val" "$init_val" 1e-3' "init-from hf32 validation loss $init_val != source's $src_val"
check 'awk -v a="$init_val" -v b="$scratch_val" "BEGIN { exit !(a < b - 1.0) }"' \
  "init-from loss $init_val not far below a fresh model's $scratch_val"
check '[ -s va/tokenizer.json ] && cmp -s va/tokenizer.json va/data/tokenizer.json || cmp -s va/tokenizer.json data/tokenizer.json' \
  "the model's tokenizer is not saved into the run"
check 'python3 -c "import json,os,sys; c=json.load(open(\"va/config.json\")); sys.exit(c[\"hidden_size\"] != 64 or c[\"ferry\"][\"data_dir\"] != os.path.abspath(\"data\"))"' \
  "config.json: the model's sizes and ferry.data_dir"

# (b) the ferry run and its f32 export start identically; the step counter
# and schedule are fresh (steps 1..6).
check '"$ferry" train --init-from src "${T[@]}" --steps 6 --lr 1e-3 --out a >a.log 2>&1' "train --init-from src (see a.log)"
check '"$ferry" train --init-from hf32 "${T[@]}" --steps 6 --lr 1e-3 --out b >b.log 2>&1' "train --init-from hf32 (see b.log)"
check '[ -f "$(ck a 6)" ] && cmp -s "$(ck a 6)" "$(ck b 6)"' "checkpoints of --init-from src and --init-from hf32 differ"
check 'near "$(first a loss)" "$(first b loss)" 1e-4' "step-1 losses differ: $(first a loss) vs $(first b loss)"
check '[ "$(grep -m1 "\"loss\"" a/metrics.jsonl | sed -E "s/.*\"step\": ([0-9]+).*/\\1/")" = 1 ]' "the step counter does not start at 1"

# Resume: stopped at step 3, the model moved away, resumed to 6: bit-identical.
check '"$ferry" train --init-from hf32 "${T[@]}" --steps 6 --lr 1e-3 --stop-after 3 --out c >c.log 2>&1; [ -f "$(ck c 3)" ]' \
  "stop after 3 (see c.log)"
mv hf32 hf32.away
check '"$ferry" train --out c --resume >cr.log 2>&1' "--resume of an --init-from run without its model (see cr.log)"
check 'cmp -s "$(ck b 6)" "$(ck c 6)"' "resumed --init-from run differs from the straight one"
mv hf32.away hf32

# Text data is tokenized with the model's tokenizer, not a new one.
check '"$ferry" train --init-from hf32 --data corpus.txt --batch 4 --seq 32 --eval-every 0 --steps 1 --vocab-size 280 --out t >t.log 2>&1' \
  "--init-from with text data (see t.log)"
check 'cmp -s t/data/tokenizer.json t/tokenizer.json && cmp -s t/tokenizer.json va/tokenizer.json' "text not tokenized with the model's tokenizer"

# --supervise: a restart resumes the run (never --init-from again), and the
# run killed once ends bit-identical to one never killed.
S=("${T[@]}" --steps 1500 --ckpt-every 100 --lr 1e-3)
check '"$ferry" train --init-from hf32 "${S[@]}" --out sref >sref.log 2>&1' "train sref (see sref.log)"
"$ferry" train --supervise --restart-backoff 0.1 --init-from hf32 "${S[@]}" --out sup >sup.log 2>&1 &
sup=$!
for _ in $(seq 1 200); do [ -f sup/checkpoints/LATEST ] && break; sleep 0.02; done
child=$(pgrep -P $sup | head -1)
[ -n "$child" ] && kill -KILL "$child"
wait $sup
rc=$?
check '[ $rc -eq 0 ] && [ -s sup/restarts.jsonl ]' "supervised --init-from run: exit $rc, restarted? (see sup.log)"
check 'cmp -s "$(ck sref 1500)" "$(ck sup 1500)"' "the supervised --init-from run, killed once, differs from sref"

# Refusals: one line each, nothing written.
refused() { # NAME PATTERN -- command...
  local name=$1 pat=$2; shift 3
  if "$@" >r.out 2>r.err; then bad "$name: accepted"; return; fi
  if [ "$(wc -l <r.err)" -eq 1 ] && grep -q -- "$pat" r.err; then ok; else bad "$name: error was: $(cat r.err)"; fi
}
mkdir notamodel && echo hello >notamodel/readme.txt
refused "not a model" "notamodel" -- "$ferry" train --init-from notamodel "${T[@]}" --steps 1 --out r1
check '[ ! -e r1/config.json ]' "a refused --init-from left r1/config.json"
refused "--init-from with --resume" "--resume" -- "$ferry" train --init-from hf32 --resume --out a
refused "--init-from with --config" "--config" -- "$ferry" train --init-from hf32 --config micro.json "${T[@]}" --steps 1 --out r2
"$ferry" tokenizer train --vocab-size 280 -o tok2.json corpus.txt >/dev/null &&
  "$ferry" data prepare corpus.txt --tokenizer tok2.json --out data2 >/dev/null && cp tok2.json data2/tokenizer.json
refused "shards of another tokenizer" "data2/tokenizer.json" -- "$ferry" train --init-from hf32 --data data2 --steps 1 --out r3

finish init_from_test
