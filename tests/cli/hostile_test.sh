#!/usr/bin/env bash
# Hostile input (docs/RELIABILITY.md, "Hostile input"): files that are not
# files, a tokenizer of DeepSeek-V3's size, NaN weights behind valid
# checksums, sizes whose products overflow, and generated text full of
# control bytes and invalid UTF-8. Every ferry command runs under a timeout
# (SIGKILL 2 s after SIGTERM), and running into it is a failure: the point
# is that nothing hangs.
#   hostile_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"

# run SECONDS CMD...: runs CMD with stdout in out.txt and stderr in err.txt;
# its status in $rc (124/137: it hung).
run() { local t=$1; shift; timeout -k 2 "$t" "$@" >out.txt 2>err.txt; rc=$?; }
# fails_clearly WHAT PATTERN: the last run failed (not by the timeout) with
# a one-line message matching PATTERN.
fails_clearly() {
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then bad "$1: hung (killed by the timeout)"; return; fi
  if [ "$rc" -eq 0 ]; then bad "$1: succeeded"; return; fi
  if ! grep -Eq "$2" err.txt; then bad "$1: no message matching '$2': $(head -c 300 err.txt)"; return; fi
  ok
}

"$ferry" train --config micro.json --data data --out run --steps 2 --batch 2 --seq 16 --eval-every 0 >train.log 2>&1 ||
  { echo "training the micro model failed (see $work/train.log)"; exit 1; }

# ---- 1. A tokenizer of DeepSeek-V3's size (~128k entries) loads in well
# under a second; 130k vocab + 130k merges is bounded at 3 s here, a
# generous bound that tells linear from quadratic (which took 14 s), not a
# speed measurement.
python3 - <<'PY' || { echo "could not write the big tokenizer"; exit 1; }
import itertools, json
N = 130000
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs, k = bs[:], 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + k); k += 1
alpha = [chr(c) for c in cs]
vocab = {a: i for i, a in enumerate(alpha)}
merges = []
for a, b in itertools.product(alpha, alpha):
    vocab[a + b] = len(vocab); merges.append(a + " " + b)
for a, b, c in itertools.product(alpha, alpha, alpha):
    if len(merges) >= N: break
    vocab[a + b + c] = len(vocab); merges.append(a + b + " " + c)
doc = {"version": "1.0", "added_tokens": [], "normalizer": None,
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": None, "decoder": {"type": "ByteLevel"},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 "vocab": vocab, "merges": merges}}
json.dump(doc, open("big_tok.json", "w"), ensure_ascii=False)
PY
t0=$(date +%s%N)
run 60 "$ferry" tokenizer encode --tokenizer big_tok.json --text "hello world"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check '[ "$rc" -eq 0 ] && [ -s out.txt ]' "the 130k tokenizer did not load: $(head -c 300 err.txt)"
check '[ "$ms" -lt 3000 ]' "loading a tokenizer of 130k tokens + 130k merges took $ms ms (bound 3000: quadratic?)"
echo "130k vocab + 130k merges: loaded and encoded in $ms ms"

# ---- 2. Files that are not regular files, wherever ferry reads a file.
mkfifo fifo
mkdir adir
ln -s loop_b loop_a && ln -s loop_a loop_b
ln -s /dev/zero zero
declare -A why=([fifo]="FIFO" [zero]="character device" [adir]="directory" [loop_a]="symbolic links")
for f in fifo zero adir loop_a; do
  w=${why[$f]}
  run 10 "$ferry" tokenizer encode --tokenizer "$f" --text hi
  fails_clearly "tokenizer encode --tokenizer $f" "$f.*$w"
  run 10 "$ferry" tokenizer encode --tokenizer tok.json "$f"
  fails_clearly "tokenizer encode TEXT_FILE=$f" "$f.*$w"
  run 10 "$ferry" tokenizer train --vocab-size 300 -o t.json "$f"
  fails_clearly "tokenizer train $f" "$f.*$w"
  run 10 "$ferry" data prepare "$f" --tokenizer tok.json --out "d_$f"
  fails_clearly "data prepare $f" "$f.*$w"
  ln -sfn "$f" "chat_$f.jsonl"
  run 10 "$ferry" data prepare "chat_$f.jsonl" --seq 16 --tokenizer tok.json --out "dj_$f"
  fails_clearly "data prepare JSONL -> $f" "chat_$f.jsonl.*$w"
  run 20 "$ferry" train --config micro.json --data "$f" --out "rd_$f" --steps 1 --batch 2 --seq 16
  fails_clearly "train --data $f" "$f"
  ln -sfn "$f" "cfg_$f.json"
  run 10 "$ferry" train --config "cfg_$f.json" --data data --out "r_$f" --steps 1
  fails_clearly "train --config -> $f" "cfg_$f.json.*$w"
  run 10 "$ferry" serve -m run --port 0 --api-key-file "$f"
  fails_clearly "serve --api-key-file $f" "api-key-file.*$f.*$w"
  run 10 "$ferry" serve -m run --port 0 --chat-template "$f"
  # (chat.c looks for a file with stat: a loop reads as "not a file")
  fails_clearly "serve --chat-template $f" "chat-template.*$f.*($w|nor a file)"
  # A run directory whose config.json or tokenizer.json is one.
  for victim in config.json tokenizer.json; do
    rm -rf m && cp -r run m && rm m/$victim && ln -s "../$f" m/$victim
    [ "$f" = loop_a ] && ln -sfn $victim m/$victim   # a loop of its own
    run 10 "$ferry" generate -m m -p hi -n 2
    if [ "$f" = loop_a ] && [ $victim = config.json ]; then fails_clearly "generate, $victim a loop" "config.json"
    else fails_clearly "generate, $victim -> $f" "$victim.*$w"; fi
  done
done
# A FIFO among the token shards, and as a Hugging Face directory's weights
# (both mmap'd, not read through fy_read_file).
rm -rf dd && cp -r data dd && rm dd/val-00000.bin && mkfifo dd/val-00000.bin
run 10 "$ferry" train --config micro.json --data dd --out r_shard --steps 1 --batch 2 --seq 16
fails_clearly "train --data with a FIFO shard" "val-00000.bin.*not a regular file"
"$ferry" convert -m run --to hf --dtype f32 --out hf >/dev/null 2>&1 || bad "convert --to hf failed"
rm -rf hfifo && cp -r hf hfifo && rm hfifo/model.safetensors && mkfifo hfifo/model.safetensors
run 10 "$ferry" generate -m hfifo -p hi -n 2
fails_clearly "generate -m HF_DIR with a FIFO model.safetensors" "model.safetensors.*not a regular file"

# ---- 3. NaN weights with valid checksums: ferry's own writer (convert
# --from hf) checksums whatever it is given, so its manifest matches.
python3 - hf/model.safetensors <<'PY' || bad "could not write NaNs into hf/model.safetensors"
import json, struct, sys
with open(sys.argv[1], "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    for name, t in json.loads(f.read(n)).items():
        if name != "__metadata__" and t["dtype"] == "F32":
            a, b = t["data_offsets"]
            f.seek(8 + n + a)
            f.write(struct.pack("<f", float("nan")) * ((b - a) // 4))
PY
"$ferry" convert --from hf hf --out nanrun >/dev/null 2>&1 || bad "convert --from hf of the NaN model failed"
for m in nanrun hf; do
  run 30 "$ferry" generate -m $m -p "the king" -n 4
  fails_clearly "generate -m $m (NaN weights)" "non-finite"
  check '[ ! -s out.txt ]' "generate -m $m (NaN weights) wrote to stdout: $(od -c out.txt | head -2)"
  run 30 "$ferry" generate -m $m -p "the king" -n 4 --print-ids
  fails_clearly "generate --print-ids -m $m (NaN weights)" "non-finite"
done
run 30 "$ferry" serve -m nanrun --port 0
fails_clearly "serve -m nanrun (NaN weights)" "non-finite"
# Finite weights whose products overflow: the logits are checked each step.
"$ferry" convert -m run --to hf --dtype f32 --out hfbig >/dev/null 2>&1 || bad "convert --to hf failed"
python3 - hfbig/model.safetensors <<'PY' || bad "could not write huge weights into hfbig/model.safetensors"
import json, struct, sys
with open(sys.argv[1], "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    for name, t in json.loads(f.read(n)).items():
        if name.endswith("head.weight"):   # lm_head and the MTP's copy of it
            a, b = t["data_offsets"]
            f.seek(8 + n + a)
            f.write(struct.pack("<f", 3e38) * ((b - a) // 4))
PY
run 30 "$ferry" generate -m hfbig -p "the king" -n 4
fails_clearly "generate -m hfbig (finite weights, overflowing logits)" "logits are not finite"
check '[ ! -s out.txt ]' "generate -m hfbig (overflowing logits) wrote to stdout: $(od -c out.txt | head -2)"

# ---- 4. Sizes whose products overflow (or make an absurd model): refused
# at once with the sizes named, never a huge allocation or a wrapped int.
big() { sed "s/\"$1\": [0-9]*/\"$1\": $2/" micro.json > "big_$1.json"; }
big hidden_size 2147483647
big num_attention_heads 100000000
big n_routed_experts 2000000000
sed -i 's/"num_hidden_layers": [0-9]*/"num_hidden_layers": 2000000/' big_n_routed_experts.json
for k in hidden_size num_attention_heads n_routed_experts; do
  run 20 "$ferry" train --config "big_$k.json" --data data --out "r_big_$k" --steps 1 --batch 2 --seq 16
  fails_clearly "train with a huge $k" "not supported"
done

# ---- 5. generate's text: valid UTF-8 whatever the model emits, and on a
# terminal (or with --escape-controls) no control bytes but \n and \t. A
# model trained on text full of escape sequences, BELs, CRs and invalid
# bytes reproduces them (greedy).
mkdir -p ctl && cd ctl || exit 1
printf 'the king \033[2J wept \377\376 by \a the river \303 stone\r\n%.0s' $(seq 400) > corpus.txt
"$ferry" tokenizer train --vocab-size 300 -o tok.json corpus.txt >/dev/null 2>&1 &&
  "$ferry" data prepare corpus.txt --tokenizer tok.json --out data >/dev/null 2>&1 && cp tok.json data/tokenizer.json ||
  bad "preparing the control-byte corpus failed"
v=$(python3 -c 'import json; print(len(json.load(open("tok.json"))["model"]["vocab"]))')
sed "s/\"vocab_size\": 300/\"vocab_size\": $v/" ../micro.json > micro.json
"$ferry" train --config micro.json --data data --out run --steps 40 --batch 4 --seq 32 --eval-every 0 >train.log 2>&1 ||
  bad "training on the control-byte corpus failed"
valid_utf8() { python3 -c 'import sys; sys.stdin.buffer.read().decode("utf-8")' < "$1"; }
no_controls() { ! LC_ALL=C grep -q "[[:cntrl:]]" <(tr -d '\n\t' < "$1"); }
fffd=$(printf '\357\277\275')
run 30 "$ferry" generate -m run -p "the king" -n 40 --temperature 0 --escape-controls
check '[ "$rc" -eq 0 ]' "generate --escape-controls on the control-byte model failed: $(head -c 300 err.txt)"
check 'valid_utf8 out.txt' "generate --escape-controls wrote invalid UTF-8"
check 'no_controls out.txt' "generate --escape-controls wrote control bytes: $(od -c out.txt | head -3)"
# Not vacuous: the model did emit ESC (escaped as text) and invalid bytes.
check 'grep -qF "\\x1b[2J" out.txt && grep -qF "\\x07" out.txt && grep -q "$fffd" out.txt' \
  "the model did not emit the escape, BEL and invalid bytes: $(head -c 200 out.txt)"
# Into a file: the text's own control bytes (as the server sends them), still valid UTF-8.
run 30 "$ferry" generate -m run -p "the king" -n 40 --temperature 0
check '[ "$rc" -eq 0 ] && valid_utf8 out.txt' "generate into a file wrote invalid UTF-8"
check 'grep -q "$(printf "\033")\[2J" out.txt && grep -q "$fffd" out.txt' "generate into a file changed the text's control bytes"
# On a terminal (script(1) gives one): escaped without being asked.
if command -v script >/dev/null; then
  timeout -k 2 30 script -qc "'$ferry' generate -m run -p 'the king' -n 40 --temperature 0" /dev/null >tty.txt 2>&1
  check 'tr -d "\r" < tty.txt > tty2.txt && no_controls tty2.txt && grep -qF "\\x1b[2J" tty2.txt' \
    "generate on a terminal wrote control bytes: $(od -c tty.txt | head -3)"
else
  echo "SKIP (5, terminal): no script(1) here; --escape-controls was checked above"
fi
cd ..

# ---- 6. The prompt is echoed only when generation happens; -n past the
# context says so.
run 30 "$ferry" generate -m run -p "$(printf 'the king %.0s' $(seq 300))" -n 4
fails_clearly "generate with a prompt over the context" "max_position_embeddings"
check '[ ! -s out.txt ]' "a failed generate echoed the prompt: $(head -c 100 out.txt)"
run 60 "$ferry" generate -m run -p "the king" -n 300 --temperature 0
check '[ "$rc" -eq 0 ] && grep -q "^the king" out.txt' "generate -n 300 failed: $(head -c 300 err.txt)"
check 'grep -q "fill the model.s context (max_position_embeddings 256)" err.txt' \
  "generate -n past the context said nothing: $(head -c 300 err.txt)"

finish hostile_test
