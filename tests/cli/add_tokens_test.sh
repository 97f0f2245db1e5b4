#!/usr/bin/env bash
# --add-special-tokens (docs/FINETUNE.md): two special tokens added to a
# micro model. The grown model (ferry convert, the same code as ferry train
# --init-from) has vocab_size + 2, its old embedding/head rows and every
# other tensor bit-identical to the base's, and each new row the column mean
# of the old rows (tools/add_tokens_check.py); its tokenizer encodes each new token
# as one id (ferry, and Hugging Face transformers on the HF export when the
# interop venv is given). Chat data using the tokens is prepared with the
# grown tokenizer, `ferry train --init-from BASE --add-special-tokens` on it
# starts from exactly the grown model (bit-identical checkpoints to
# --init-from the grown run), trains, and generates; the refusals hold.
#   add_tokens_test.sh FERRY_BINARY WORK_DIR [INTEROP_PYTHON]
set -u
py=${3:-}
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"
ck() { echo "$1/checkpoints/step-$(printf %08d "$2")/model.safetensors"; }
NEW='<|tool|>,<|think|>'

check '"$ferry" train --config micro.json --out base --steps 20 --data data --batch 4 --seq 32 --eval-every 0 --seed 1 \
  >base.log 2>&1' "train the base model (see base.log)"

# The grown model: sizes, rows, tokenizer.
check '"$ferry" convert --model base --to ferry --add-special-tokens "$NEW" --out grown >grown.log 2>&1' \
  "convert --add-special-tokens (see grown.log)"
check 'grep -q "vocabulary 300 -> 302" grown.log' "no 'vocabulary 300 -> 302' note (see grown.log)"
check 'python3 -c "import json,sys; sys.exit(json.load(open(\"grown/config.json\"))[\"vocab_size\"] != 302)"' \
  "grown/config.json: vocab_size is not 302"
check 'python3 "$here/../../tools/add_tokens_check.py" "$(ck base 20)" "$(ck grown 0)" 2 >rows.log 2>&1' \
  "embedding/head rows are not the base's plus mean rows (see rows.log)"
check '[ "$("$ferry" tokenizer encode -t grown/tokenizer.json --special --text "<|tool|>the lamb<|think|>" | tr " " "\n" | grep -cE "^(300|301)$")" = 2 ] &&
  [ "$("$ferry" tokenizer encode -t grown/tokenizer.json --special --text "<|think|>")" = 301 ]' \
  "the grown tokenizer does not encode <|tool|>/<|think|> as ids 300/301"
check '[ "$("$ferry" tokenizer encode -t grown/tokenizer.json --text "the lamb")" = "$("$ferry" tokenizer encode -t base/tokenizer.json --text "the lamb")" ]' \
  "ordinary text encodes differently after adding tokens"
if [ -n "$py" ] && "$py" -c "import transformers" 2>/dev/null; then
  check '"$ferry" convert --model grown --to hf --dtype f32 --out grownhf >hf.log 2>&1 && "$py" -c "
import sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(\"grownhf\")
ids = t.encode(\"the lamb<|tool|> x<|think|>\", add_special_tokens=False)
sys.exit(not (len(t) == 302 and ids[-1] == 301 and 300 in ids and t.decode(ids, skip_special_tokens=True) == \"the lamb x\"))
" >tf.log 2>&1' "transformers does not see the added special tokens in the HF export (see hf.log, tf.log)"
else
  skip_part "the HF export check: no interop python with transformers"
fi

# Chat data that uses the tokens, prepared with the grown tokenizer.
for i in $(seq 1 60); do
  echo '{"messages": [{"role": "user", "content": "where is the king?"}, {"role": "assistant", "content": "<|think|>the king rested<|tool|> by the river."}]}'
done > chat.jsonl
check '"$ferry" data prepare chat.jsonl --model base --add-special-tokens "$NEW" --seq 48 --out sft >prep.log 2>&1' \
  "data prepare --add-special-tokens (see prep.log)"
check 'cmp -s sft/tokenizer.json grown/tokenizer.json' "the prepared data's tokenizer is not the grown model's"
# The shard's tokens (src/io/shard.h: token width at byte 12, tokens from byte 64).
check 'python3 -c "
import struct, sys
b = open(\"sft/train-00000.bin\", \"rb\").read()
w, n = struct.unpack_from(\"<I\", b, 12)[0], struct.unpack_from(\"<Q\", b, 24)[0]
ids = [int.from_bytes(b[64 + i * w:64 + (i + 1) * w], \"little\") for i in range(n)]
sys.exit(not (300 in ids and 301 in ids and max(ids) == 301))"' \
  "the prepared rows do not hold the new ids 300 and 301"

# Training: --init-from BASE --add-special-tokens starts from the grown model exactly.
T=(--data sft --seq 48 --batch 4 --eval-every 0 --seed 3 --steps 4 --lr 1e-3)
check '"$ferry" train --init-from base --add-special-tokens "$NEW" "${T[@]}" --out a >a.log 2>&1' "train --init-from --add-special-tokens (see a.log)"
check '"$ferry" train --init-from grown "${T[@]}" --out b >b.log 2>&1' "train --init-from the grown model (see b.log)"
check '[ -f "$(ck a 4)" ] && cmp -s "$(ck a 4)" "$(ck b 4)"' "--add-special-tokens at --init-from differs from the grown model"
check 'cmp -s a/tokenizer.json grown/tokenizer.json && python3 -c "import json,sys; sys.exit(json.load(open(\"a/config.json\"))[\"vocab_size\"] != 302)"' \
  "the run's tokenizer or config.json vocab_size is not the grown model's"
check '"$ferry" generate --model a --prompt "the king" -n 8 --temperature 0 >gen.out 2>gen.err && [ -s gen.out ]' \
  "generate from the grown run (see gen.err)"
check '"$ferry" inspect a >insp.log 2>&1' "inspect of the grown run (see insp.log)"

# Refusals and the skip.
refused() { # NAME PATTERN -- command...
  local name=$1 pat=$2; shift 3
  if "$@" >r.out 2>r.err; then bad "$name: accepted"; return; fi
  if grep -q -- "$pat" r.err; then ok; else bad "$name: error was: $(cat r.err)"; fi
}
refused "with --lora-rank" "--lora-rank" -- "$ferry" train --init-from base --add-special-tokens "$NEW" --lora-rank 4 "${T[@]}" --out r1
check '[ ! -e r1/config.json ]' "a refused run left r1/config.json"
refused "data prepared without the tokens" "ferry data prepare --model base --add-special-tokens" -- \
  "$ferry" train --init-from base --add-special-tokens "$NEW" --data data --batch 4 --seq 32 --steps 1 --out r6
refused "without --init-from" "--init-from" -- "$ferry" train --config micro.json --add-special-tokens "$NEW" "${T[@]}" --out r2
refused "an ordinary token" "ordinary token" -- "$ferry" convert --model base --to ferry --add-special-tokens "<|x|>,he" --out r3
refused "a token twice" "twice" -- "$ferry" convert --model base --to ferry --add-special-tokens "<|x|>,<|x|>" --out r4
refused "an empty token" "empty" -- "$ferry" convert --model base --to ferry --add-special-tokens "<|x|>,,<|y|>" --out r5
check '"$ferry" convert --model grown --to ferry --add-special-tokens "<|eos|>,<|tool|>,<|new|>" --out g3 >g3.log 2>&1 &&
  grep -q "\"<|eos|>\" is already an added token" g3.log && grep -q "vocabulary 302 -> 303" g3.log' \
  "present added tokens are not skipped with a note (see g3.log)"

finish add_tokens_test
