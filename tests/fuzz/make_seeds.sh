#!/usr/bin/env bash
# Seed corpora of the fuzz targets, made from files ferry itself writes
# (nothing committed from elsewhere): the micro fixture's corpus, tokenizer
# and shards (tests/cli/micro_fixture.sh), a nano model trained 2 steps
# (small files fuzz faster) and the micro model trained 2 steps, their
# checkpoints, config.json, a GGUF export, chat JSONL from `ferry data
# chat-kjv` prepared into row shards, request bodies of `ferry serve`'s
# endpoints and command lines. Writes WORK_DIR/seeds/TARGET/.
#   make_seeds.sh FERRY_BINARY WORK_DIR
set -u
fz=$(cd "$(dirname "$0")" && pwd)
. "$fz/../cli/harness.sh" "$@"
# The fuzz build's ferry runs under ASan: leak reports of the CLI are not
# what this script checks.
export ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1
here=$fz/../cli
. "$here/micro_fixture.sh"
. "$here/verses_fixture.sh"
S=$work/seeds
for t in safetensors checkpoint config tokenizer shard gguf sft api args; do mkdir -p "$S/$t"; done

# A nano DeepSeek-V3 beside the micro one: the same keys, tiny sizes.
sed -e 's/"hidden_size": 64/"hidden_size": 16/; s/"intermediate_size": 128/"intermediate_size": 32/' \
    -e 's/"moe_intermediate_size": 32/"moe_intermediate_size": 8/; s/"num_hidden_layers": 3/"num_hidden_layers": 2/' \
    -e 's/"q_lora_rank": 32/"q_lora_rank": 8/; s/"kv_lora_rank": 16/"kv_lora_rank": 8/' \
    -e 's/"qk_nope_head_dim": 16/"qk_nope_head_dim": 8/; s/"qk_rope_head_dim": 16/"qk_rope_head_dim": 8/' \
    -e 's/"v_head_dim": 16/"v_head_dim": 8/' micro.json > nano.json
T=(--data data --batch 2 --seq 16 --eval-every 0 --seed 1 --steps 2)
check '"$ferry" train --config nano.json --out nano "${T[@]}" >nano.log 2>&1' "train nano (see nano.log)"
check '"$ferry" train --config micro.json --out micro "${T[@]}" >micro.log 2>&1' "train micro (see micro.log)"
check '"$ferry" convert --model nano --to gguf --out nano.gguf >gguf.log 2>&1' "convert nano to gguf (see gguf.log)"
check '"$ferry" convert --model nano --to gguf --type q8_0 --out nano-q8.gguf >>gguf.log 2>&1' "convert nano to q8_0 gguf"
check '"$ferry" convert --model nano --to hf --dtype f32 --out nano-hf >hf.log 2>&1' "convert nano to hf (see hf.log)"
check '"$ferry" data chat-kjv --from verses.txt --out chat.jsonl --n 40 --seed 1 >kjv.log 2>&1' "chat-kjv (see kjv.log)"
check '"$ferry" data prepare chat.jsonl --model nano --seq 96 --out sft >sft.log 2>&1' "prepare chat rows (see sft.log)"
head -40 corpus.txt > small.txt
check '"$ferry" data prepare small.txt --tokenizer tok.json --out small >small.log 2>&1' "prepare small shards"

ck() { echo "$1/checkpoints/step-00000002"; }
# safetensors: the nano checkpoint's files and its HF export
cp "$(ck nano)/model.safetensors" "$S/safetensors/nano-model"
cp "$(ck nano)/optimizer.safetensors" "$S/safetensors/nano-optimizer"
cp nano-hf/model.safetensors "$S/safetensors/nano-hf" 2>/dev/null
# checkpoint: MANIFEST, trainer_state, model, LATEST, config (checkpoint.c's sections)
for run in nano micro; do
  c=$(ck $run) sep=$'\n#NEXT#\n'
  { cat "$c/MANIFEST.json"; printf '%s' "$sep"; cat "$c/trainer_state.json"; printf '%s' "$sep"
    printf '%s' "$sep"; cat $run/checkpoints/LATEST; printf '%s' "$sep"; cat $run/config.json; } > "$S/checkpoint/$run-nomodel"
done
c=$(ck nano)
{ cat "$c/MANIFEST.json"; printf '%s' "$sep"; cat "$c/trainer_state.json"; printf '%s' "$sep"; cat "$c/model.safetensors"
  printf '%s' "$sep"; cat nano/checkpoints/LATEST; printf '%s' "$sep"; cat nano/config.json; } > "$S/checkpoint/nano-model"
# config.json: as given, as ferry writes it into a run, as the HF export writes it
cp micro.json "$S/config/micro"; cp nano.json "$S/config/nano"
cp micro/config.json "$S/config/micro-run"; cp nano-hf/config.json "$S/config/nano-hf"
# tokenizer.json, with a text to encode
cp tok.json "$S/tokenizer/tok"
{ cat nano-hf/tokenizer.json; printf '\n#TEXT#\n'; head -5 corpus.txt; printf '<|eos|> caf\xc3\xa9 \xff\n'; } > "$S/tokenizer/hf-text"
# shards: text shards (version 1) and chat rows with a mask (version 2)
cp small/train-00000.bin "$S/shard/text-train"; cp small/val-00000.bin "$S/shard/text-val"
cp sft/val-00000.bin "$S/shard/rows-val"
cp sft/train-00000.bin "$S/shard/rows-train"
# GGUF
cp nano.gguf "$S/gguf/nano-f32"; cp nano-q8.gguf "$S/gguf/nano-q8_0"
# chat / SFT JSONL: the first byte picks the template (0 deepseek3, 1 chatml, 2 ferry) and bit 2 train_on_prompt
for k in 0 1 2 4; do { printf "\\x0$k"; head -6 chat.jsonl; } > "$S/sft/kjv-$k"; done
{ printf '\x02'; cat <<'JSONL'
{"prompt": "the king walked", "completion": " near the river."}
{"text": "the shepherd spoke."}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Who"}, {"type": "text", "text": "spoke?"}]}, {"role": "assistant", "content": "The king."}]}
{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}
JSONL
} > "$S/sft/formats"
# serve request bodies: the first byte picks the endpoint (0 completions,
# 1 chat, 2 tokenize, 3 detokenize, 4 apply-template) and, bits 3-4, the template
body() { printf "\\x0$1"; printf '%s' "$2"; }
body 0 '{"model": "micro", "prompt": "the king", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "stop": ["."], "logprobs": 2, "seed": 3}' > "$S/api/completion"
body 0 '{"prompt": [5, 6, 7], "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}' > "$S/api/completion-ids"
body 1 '{"model": "micro", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who spoke?"}], "max_tokens": 16, "stream": true, "logprobs": true, "top_logprobs": 2}' > "$S/api/chat"
body 9 '{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "n": 1, "stop": "x", "frequency_penalty": 0}' > "$S/api/chat-chatml"
body 2 '{"content": "the king <|eos|>", "add_special": true, "parse_special": true}' > "$S/api/tokenize"
body 3 '{"tokens": [1, 2, 300, 299, 0]}' > "$S/api/detokenize"
body 4 '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}' > "$S/api/apply-template"
# command lines (NUL-separated words)
printf '%s\0' --out run --steps 40 --seed 1 --lr 3e-3 --resume corpus.txt > "$S/args/train"
printf '%s\0' -o x -n 5 --lr=0.5 -t 0.7 -v --port 0 -- a b > "$S/args/short"
printf '%s\0' --model base --temperature nan --help > "$S/args/help"

n=$(find "$S" -type f | wc -l)
check '[ "$n" -ge 30 ]' "only $n seed files made"
echo "fuzz seeds: $n files in $S"
finish fuzz_seeds
