#!/usr/bin/env bash
# Weights images (ckpt/checkpoint.h, docs/PERFORMANCE.md "Weights images"):
# `ferry convert --to ferry --weights FMT` of a trained micro run, for each
# of f32, bf16, f16, q8_0 and q4_0:
#   - generate from the image (no --weights: the image's own, and with
#     --weights FMT; mapped, and copied in with --no-mmap) gives the greedy
#     ids of generate --weights FMT on the f32 run, token for token;
#   - the same on an OpenCL device, where the image is copied in, and
#     with unmerged --lora adapters on the image base;
#   - the image tensor starts 64-byte aligned in the file, first;
#   - the image holds no f32 copy of the matrices it carries: the file is
#     smaller than the f32 model.safetensors (q4_0 under a quarter; f32's
#     is the params block, no larger than the checkpoint's plus 10 %);
# and what must fail does, with an error and no file changed: another
# --weights, training, export and verify on an image (inference only), a
# flipped byte and a truncated file (the manifest's checksums), --weights
# with another --to.
#   image_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=2
. "$here/micro_fixture.sh"
$ferry train -c micro.json --data data --out run --steps 20 --batch 4 --seq 32 --seed 5 --eval-every 0 \
  --ckpt-every 0 >train.log 2>&1 || { bad "train failed: $(tail -3 train.log)"; finish image_test; exit; }
prompt="the shepherd walked by the river, and the king spoke"
ids() { $ferry generate --model "$1" "${@:2}" --prompt "$prompt" -n 40 --temperature 0 --ignore-eos --print-ids 2>err.txt; }
sums() { find "$@" -type f | sort | xargs cksum; }
# fails WHAT PATTERN PATHS... -- CMD...: CMD exits 1 (an error, not a
# signal) with its last line of stderr matching PATTERN (a run directory's
# checkpoint that fails is warned about before the error), and the files
# under PATHS are unchanged.
fails() {
  local what=$1 pat=$2 paths=() before rc
  shift 2
  while [ "$1" != "--" ]; do paths+=("$1"); shift; done; shift
  before=$(sums "${paths[@]}")
  "$@" >out.txt 2>err.txt
  rc=$?
  if [ $rc -ne 1 ]; then bad "$what: exited $rc, not 1"; return; fi
  if ! tail -n 1 err.txt | grep -q -- "$pat"; then bad "$what: stderr: $(cat err.txt)"; return; fi
  if [ "$before" != "$(sums "${paths[@]}")" ]; then bad "$what: files changed"; return; fi
  ok
  echo "  ok (exit $rc): $what -> $(tail -n 1 err.txt)"
}
# first_offset FILE: where the first tensor's data starts in a safetensors file
first_offset() { python3 -c 'import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
h.pop("__metadata__", None); name, e = min(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
print(name, 8 + n + e["data_offsets"][0])' "$1"; }

f32=$(find run/checkpoints -name model.safetensors)
for t in f32 bf16 f16 q8_0 q4_0; do
  if ! $ferry convert --model run --to ferry --weights $t --out img-$t >conv.log 2>&1; then
    bad "convert --weights $t: $(tail -2 conv.log)"; continue
  fi
  file=$(find img-$t/checkpoints -name "model.$t.safetensors")
  check '[ -n "$file" ] && [ -z "$(find img-$t -name model.safetensors)" ]' "$t: no model.$t.safetensors alone in img-$t"
  want=$(ids run --weights $t)
  check '[ -n "$want" ] && [ "$(ids img-$t)" = "$want" ]' "$t: generate on the image differs from --weights $t on the f32 run"
  check '[ "$(ids img-$t --weights $t)" = "$want" ]' "$t: generate --weights $t on the image differs"
  check '[ "$(ids img-$t --no-mmap)" = "$want" ]' "$t: generate --no-mmap (the image copied in) differs"
  read -r name off < <(first_offset "$file")
  check '[ "$name" = ferry.weights_image ] && [ $((off % 64)) = 0 ]' "$t: first tensor $name at byte $off, not the image 64-byte aligned"
  size=$(stat -c %s "$file") full=$(stat -c %s "$f32")
  case $t in q4_0) lim=$((full / 4)) ;; f32) lim=$((full * 11 / 10)) ;; *) lim=$((full * 6 / 10)) ;; esac
  check '[ "$size" -lt "$lim" ]' "$t: image of $size bytes against f32 $full: holds more than its format"
done

# Unmerged LoRA adapters on an image base (the adapters swap in beside
# the adopted params and out again): the ids of the same adapters on the
# f32 run's --weights.
if $ferry train --init-from run --lora-rank 4 --data data --out lr --steps 5 --batch 4 --seq 32 --eval-every 0 \
     --ckpt-every 0 >lr.log 2>&1; then
  for t in f32 q8_0; do
    want=$(ids run --weights $t --lora lr)
    check '[ -n "$want" ] && [ "$(ids img-$t --lora lr)" = "$want" ]' "$t: --lora on the image differs"
  done
else
  bad "LoRA training failed: $(tail -3 lr.log)"
fi

# A backend that cannot read host memory in place (opencl) gets the image
# copied in (fy_be_adopt): the same ids as its own encoding of the f32 run.
ocl=$(awk '/^opencl:[0-9]+:[0-9]+[[:space:]]/ { print $1; exit }' <($ferry devices 2>/dev/null))
if [ -n "$ocl" ]; then
  want=$(ids run --weights q8_0 --backend "$ocl")
  check '[ -n "$want" ] && [ "$(ids img-q8_0 --backend "$ocl")" = "$want" ]' "$ocl: the image gives other ids than --weights q8_0"
else
  skip_part "the image on OpenCL: ferry devices lists no OpenCL device"
fi

fails "another --weights on an image" "runs only as --weights q8_0" img-q8_0 -- ids img-q8_0 --weights bf16
fails "training from an image" "for inference only" img-q8_0 -- $ferry train --init-from img-q8_0 --data data --out r2 --steps 1
fails "export of an image" "for inference only" img-q8_0 -- $ferry convert --model img-q8_0 --to gguf --out x.gguf
fails "verify on an image" "for inference only" img-q8_0 -- $ferry verify --model img-q8_0 --backends cpu,chaos:cpu
fails "--weights with --to gguf" "is for --to ferry" run -- $ferry convert --model run --to gguf --weights q8_0 --out y.gguf
fails "--weights f64" "f64" run -- $ferry convert --model run --to ferry --weights f64 --out z
check '[ ! -e x.gguf ] && [ ! -e y.gguf ] && [ ! -e z ]' "a failed convert left its output"

# Damage: a byte flipped inside the image, then the file cut short.
cp -r img-q4_0 bad
file=$(find bad/checkpoints -name model.q4_0.safetensors)
python3 -c 'import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2]) + 1000); b = f.read(1); f.seek(-1, 1); f.write(bytes([b[0] ^ 0x10]))' \
  "$file" "$(first_offset "$file" | cut -d' ' -f2)"
fails "a flipped byte in the image" "checksum mismatch" bad -- ids bad
truncate -s -4096 "$file"
fails "a truncated image" "truncated" bad -- ids bad
# Another layout (as a build that lays the copy out differently would
# write): "ferry_layout" rewritten in place, and the manifest made to vouch
# for the file again (its checksum as the refusal of the changed file
# reports it): the load refuses it, naming the layouts.
rm -rf lay && cp -r img-q8_0 lay
file=$(find lay/checkpoints -name model.q8_0.safetensors)
python3 -c 'import re, sys
b = open(sys.argv[1], "rb").read(); n = int.from_bytes(b[:8], "little")
h = re.sub(rb"(\"ferry_layout\":\")[0-9a-f]{16}", rb"\g<1>0123456789abcdef", b[8:8 + n])
assert len(h) == n and h != b[8:8 + n]; open(sys.argv[1], "wb").write(b[:8] + h + b[8 + n:])' "$file"
ids lay >/dev/null
got=$(sed -nE 's/.*checksum mismatch \(expected [0-9a-f]+, got ([0-9a-f]+)\).*/\1/p' err.txt | head -n 1)
python3 -c 'import json, sys
p = sys.argv[1]; m = json.load(open(p)); m["files"]["model.q8_0.safetensors"]["xxh64"] = sys.argv[2]
json.dump(m, open(p, "w"))' "$(dirname "$file")/MANIFEST.json" "$got"
fails "another layout" "laid out for another config or ferry version" lay -- ids lay
finish image_test
