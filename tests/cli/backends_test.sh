#!/usr/bin/env bash
# Backends as a run-time choice, end to end:
#   (a) ferry devices lists cpu;
#   (b) ferry verify --backends cpu,chaos:cpu passes on a freshly trained run;
#   (c) with FERRY_PERTURB (a deliberately wrong kernel in chaos) it fails,
#       non-zero, naming a tensor;
#   (d) bad flags, a missing model, an unknown backend: one-line errors,
#       non-zero, checkpoint files byte-identical; train/generate/resume
#       across cpu and chaos:cpu work;
#   (e) when ferry devices lists an OpenCL device: train on one backend and
#       generate greedily on both (identical text), resume across backends,
#       verify cpu,opencl. When there is none, (a)-(d) still run and the
#       test exits 77 (skipped, naming the part) unless one of them failed.
#   backends_test.sh FERRY_BINARY WORK_DIR
# FERRY_TEST_PEER=SPEC runs (e) against SPEC instead of the listed OpenCL
# device (e.g. chaos:cpu, to exercise this script where there is no OpenCL).
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=2
unset FERRY_PERTURB
# CRC and size of every file under the paths: a checkpoint is ~100 MB, and
# sha256 of it before and after each of ~20 commands would dominate the test.
sums() { [ $# -eq 0 ] || find "$@" -type f | sort | xargs cksum; }
# runs CMD with its output in LOG; on failure shows LOG's last lines.
run_log() {
  local log=$1 what=$2; shift 2
  if "$@" >"$log" 2>&1; then ok; else bad "$what (exit $?): $(tail -3 "$log")"; fi
}

# Runs a command that must fail: non-zero exit, one line on stderr, and the
# files under the listed paths unchanged.
expect_fail() {
  local what=$1; shift
  local paths=() before after
  while [ "$1" != "--" ]; do paths+=("$1"); shift; done; shift
  before=$(sums "${paths[@]}" 2>&1)
  "$@" >out.txt 2>err.txt
  local rc=$?
  after=$(sums "${paths[@]}" 2>&1)
  if [ $rc -eq 0 ]; then bad "$what: exited 0"; return; fi
  if [ "$(wc -l <err.txt)" -ne 1 ]; then bad "$what: stderr is not one line: $(cat err.txt)"; return; fi
  if [ "$before" != "$after" ]; then bad "$what: files changed"; return; fi
  ok
  echo "  ok (exit $rc): $what -> $(cat err.txt)"
}

# The tiny corpus of cli_test.sh: sentences from a small grammar.
awk 'BEGIN { srand(7);
  split("the a one every that", det); split("shepherd king river city servant stone lamb", noun);
  split("walked spoke rested waited sang wept", verb); split("by near beyond under before", prep);
  for (i = 0; i < 6000; i++) {
    printf "%s %s %s %s the %s", det[int(rand()*5)+1], noun[int(rand()*7)+1], verb[int(rand()*6)+1],
           prep[int(rand()*5)+1], noun[int(rand()*7)+1];
    printf (rand() < 0.3) ? ".\n" : ", and ";
  } }' > corpus.txt
$ferry tokenizer train --vocab-size 300 -o tok.json corpus.txt >/dev/null &&
  $ferry data prepare corpus.txt --tokenizer tok.json --out data >/dev/null && cp tok.json data/tokenizer.json ||
  { echo "FAIL: could not make the corpus"; exit 1; }
T="--data data --steps 20 --batch 4 --seq 32 --eval-every 0 --ckpt-every 10 --log-every 10 --lr 0.003"
last_loss() { tail -1 "$1/metrics.jsonl" | sed -E 's/.*"loss": ([-0-9.e+naif]+).*/\1/'; }
finite_close() { awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN { d = a - b; if (d < 0) d = -d;
  exit !(a == a + 0 && b == b + 0 && a < 1e30 && b < 1e30 && d <= r * (b < 0 ? -b : b)) }'; }

echo "== (a) ferry devices"
run_log devices.txt "ferry devices" $ferry devices
check "grep -q '^cpu ' devices.txt" "ferry devices does not list cpu"
check "$ferry devices --help | grep -q 'usage: ferry devices'" "ferry devices --help"
sed 's/^/  /' devices.txt

echo "== (b) verify cpu,chaos:cpu on a fresh run"
run_log train.log "train on cpu" $ferry train $T --ckpt-every 0 --out run
ck=run/checkpoints
before=$(sums $ck run/config.json)
run_log verify.txt "verify cpu,chaos:cpu" $ferry verify --model run --backends cpu,chaos:cpu
check "grep -q '^PASS' verify.txt" "verify printed no PASS"
check "grep -q 'validation batch 0 of .*data$' verify.txt" "verify did not use the run's validation data"
check "grep -q 'greedy     32 of 32 tokens identical' verify.txt" "verify greedy line"
run_log v2.txt "verify on a checkpoint dir with --prompt" \
  $ferry verify --model run/checkpoints/step-00000020 --backends chaos:cpu,cpu --prompt 'the king' -n 8 --batch 2 --seq 16
# Random tokens when the run's data directory is gone.
cp -r run nodata && sed -i 's|"data_dir":[^,]*,|"data_dir": "gone/nowhere",|' nodata/config.json
run_log v3.txt "verify without data" $ferry verify --model nodata --backends cpu,chaos:cpu
check "grep -q 'seeded random tokens' v3.txt" "verify without data does not say it used random tokens"
sed -n '/vs cpu/,$p' verify.txt | sed 's/^/  /'

echo "== (c) a perturbed kernel fails verify, naming a tensor"
for p in rmsnorm:1e-3 swiglu:1e-2 attn:1e-3; do
  FERRY_PERTURB=$p $ferry verify --model run --backends cpu,chaos:cpu >perturb.txt 2>perturb.err
  rc=$?
  check "[ $rc -eq 3 ]" "FERRY_PERTURB=$p: exit $rc, expected 3"
  check "[ \$(wc -l <perturb.err) -eq 1 ]" "FERRY_PERTURB=$p: stderr not one line: $(cat perturb.err)"
  check "grep -Eq 'gradient of (model\.|lm_head)[a-z0-9_.]+ rel err' perturb.err" \
    "FERRY_PERTURB=$p: reason names no tensor: $(cat perturb.err)"
  echo "  ok (exit $rc): FERRY_PERTURB=$p -> $(cut -c1-160 perturb.err)..."
done
# The same perturbation on both sides agrees with itself: the check is relative.
check "FERRY_PERTURB=rmsnorm:1e-3 $ferry verify --model run --backends chaos:cpu,chaos:cpu >/dev/null 2>&1" \
  "chaos:cpu perturbed the same way on both sides disagrees"
check "[ \"\$(sums $ck run/config.json)\" = \"\$before\" ]" "verify changed the checkpoint"

echo "== (d) error paths: non-zero, one line, checkpoint unchanged"
expect_fail "verify: no flags" $ck -- $ferry verify
expect_fail "verify: unknown flag" $ck -- $ferry verify --model run --backends cpu,cpu --bogus
expect_fail "verify: one backend" $ck -- $ferry verify --model run --backends cpu
expect_fail "verify: empty backend entry" $ck -- $ferry verify --model run --backends cpu,,chaos:cpu
expect_fail "verify: unknown backend" $ck -- $ferry verify --model run --backends cpu,nope
expect_fail "verify: missing model" $ck -- $ferry verify --model nowhere --backends cpu,chaos:cpu
expect_fail "verify: bad tolerance" $ck -- $ferry verify --model run --backends cpu,cpu --tol-grad abc
expect_fail "verify: negative tolerance" $ck -- $ferry verify --model run --backends cpu,cpu --tol-logits -1
expect_fail "verify: seq over max_position_embeddings" $ck -- \
  $ferry verify --model run --backends cpu,cpu --seq 1000000
expect_fail "verify: malformed FERRY_PERTURB" $ck -- env FERRY_PERTURB=rmsnorm $ferry verify --model run --backends cpu,chaos:cpu
expect_fail "devices: stray argument" -- $ferry devices extra
expect_fail "generate: unknown backend" $ck -- $ferry generate --model run --prompt hi --backend nope
expect_fail "train --resume: unknown backend" run -- $ferry train --out run --resume --backend nope
expect_fail "train: unknown backend makes no run" -- $ferry train $T --out never --backend nope
check "[ ! -e never ]" "train with an unknown backend created its run directory"
if ! grep -q '^opencl:' devices.txt; then
  expect_fail "train: opencl when none is available" -- $ferry train $T --out never --backend opencl
fi

echo "== (d) cross-backend runs on cpu and chaos:cpu"
G="--prompt 'the king' -n 64 --temperature 0"
check "$ferry generate --model run $G --backend cpu >g_cpu.txt 2>&1" "generate on cpu"
check "$ferry generate --model run $G --backend chaos:cpu >g_chaos.txt 2>&1" "generate on chaos:cpu"
check "[ -s g_cpu.txt ] && cmp -s g_cpu.txt g_chaos.txt" "greedy text differs between cpu and chaos:cpu"
check "$ferry train $T --out half --stop-after 10 >/dev/null 2>&1" "train --stop-after 10"
cp -r half half2
run_log resume.log "resume a cpu run on chaos:cpu" $ferry train --out half --resume --backend chaos:cpu
check "grep -q 'note: half was last trained on backend cpu; resuming it on chaos:cpu' resume.log" "no note on a backend change"
check "grep -q '\"backend\":[[:space:]]*\"chaos:cpu\"' half/config.json" "config.json does not record the new backend"
check "[ \"\$(cat half/checkpoints/LATEST)\" = step-00000020 ]" "resume on chaos:cpu did not reach step 20"
# chaos without faults computes exactly what cpu does: bit-identical weights.
check "cmp -s run/checkpoints/step-00000020/model.safetensors half/checkpoints/step-00000020/model.safetensors" \
  "cpu -> chaos:cpu resume is not bit-identical to an all-cpu run"
check "$ferry train --out half --resume --steps 22 >resume2.log 2>&1 && grep -q 'backend chaos:cpu' resume2.log" \
  "--resume without --backend does not default to the run's last backend"

echo "== (e) OpenCL"
ocl=${FERRY_TEST_PEER:-$(awk '/^opencl:[0-9]+:[0-9]+[[:space:]]/ { print $1; exit }' devices.txt)}
if [ -z "$ocl" ]; then
  skip_part "(e) OpenCL: ferry devices lists no OpenCL device ($(grep '^opencl' devices.txt | head -1 | tr -s ' '))"
else
  echo "  using $ocl"
  # OpenCL on PoCL trains at ~100 tok/s on 2 cores: its runs are 8 steps of 2 x 32,
  # each compared with the same 8 steps on cpu.
  E="--data data --steps 8 --batch 2 --seq 32 --eval-every 0 --ckpt-every 4 --log-every 4 --lr 0.003"
  G="--prompt 'the king' -n 256 --temperature 0"
  check "$ferry generate --model run $G --backend cpu >e_cpu.txt 2>&1" "generate 256 on cpu"
  check "$ferry generate --model run $G --backend $ocl >e_ocl.txt 2>&1" "generate 256 on $ocl (see e_ocl.txt)"
  check "[ -s e_cpu.txt ] && cmp -s e_cpu.txt e_ocl.txt" "cpu-trained run: greedy text differs between cpu and $ocl"
  # Q8_0 decode weights serve on OpenCL too (its linear_q8 has the cpu's bits).
  check "$ferry generate --model run $G --weights q8_0 --backend cpu >q_cpu.txt 2>&1" "generate q8_0 on cpu"
  check "$ferry generate --model run $G --weights q8_0 --backend $ocl >q_ocl.txt 2>&1" "generate q8_0 on $ocl (see q_ocl.txt)"
  check "[ -s q_cpu.txt ] && cmp -s q_cpu.txt q_ocl.txt" "q8_0 greedy text differs between cpu and $ocl"
  # And Q4_0 (its linear_q4 has the cpu's bits too), over 128 tokens: the
  # other ops agree within tolerance, not bit for bit, and the input rows'
  # 8-bit rounding can turn an ulp into 1e-4 of a logit; this run's Q4_0
  # greedy path meets a near tie at token 231 (top-2 gap 2e-4) where the
  # backends part (2026-12-06). A wrong kernel parts at the first tokens.
  Q4="--prompt 'the king' -n 128 --temperature 0 --weights q4_0"
  check "$ferry generate --model run $Q4 --backend cpu >q4_cpu.txt 2>&1" "generate q4_0 on cpu"
  check "$ferry generate --model run $Q4 --backend $ocl >q4_ocl.txt 2>&1" "generate q4_0 on $ocl (see q4_ocl.txt)"
  check "[ -s q4_cpu.txt ] && cmp -s q4_cpu.txt q4_ocl.txt" "q4_0 greedy text differs between cpu and $ocl"
  run_log e_train_cpu.log "train 8 steps on cpu" $ferry train $E --out e_cpu
  run_log e_train_ocl.log "train 8 steps on $ocl" $ferry train $E --out e_ocl --backend $ocl
  check "$ferry generate --model e_ocl $G --backend cpu >f_cpu.txt 2>&1" "generate from the $ocl run on cpu"
  check "$ferry generate --model e_ocl $G --backend $ocl >f_ocl.txt 2>&1" "generate from the $ocl run on $ocl"
  check "[ -s f_cpu.txt ] && cmp -s f_cpu.txt f_ocl.txt" "$ocl-trained run: greedy text differs between cpu and $ocl"
  check "finite_close \$(last_loss e_ocl) \$(last_loss e_cpu) 0.02" \
    "8 steps on $ocl end far from cpu: $(last_loss e_ocl 2>/dev/null) vs $(last_loss e_cpu 2>/dev/null)"
  # A cpu run stopped at step 4 and continued on OpenCL, against all-cpu.
  check "$ferry train $E --out e_half --stop-after 4 >/dev/null 2>&1" "train 4 steps on cpu"
  run_log e_resume.log "resume a cpu run on $ocl" $ferry train --out e_half --resume --backend $ocl
  check "grep -q 'resuming it on $ocl' e_resume.log" "no note when resuming a cpu run on $ocl"
  check "[ \"\$(cat e_half/checkpoints/LATEST)\" = step-00000008 ]" "resume on $ocl did not reach step 8"
  check "finite_close \$(last_loss e_half) \$(last_loss e_cpu) 0.02" \
    "cpu->$ocl continuation loss $(last_loss e_half 2>/dev/null) not close to cpu's $(last_loss e_cpu 2>/dev/null)"
  # An OpenCL run stopped at step 4 and continued on cpu, against all-OpenCL.
  check "$ferry train $E --out e_ohalf --backend $ocl --stop-after 4 >/dev/null 2>&1" "train 4 steps on $ocl"
  run_log e_resume2.log "resume an $ocl run on cpu" $ferry train --out e_ohalf --resume --backend cpu
  check "grep -q 'resuming it on cpu' e_resume2.log" "no note when resuming an $ocl run on cpu"
  check "[ \"\$(cat e_ohalf/checkpoints/LATEST)\" = step-00000008 ]" "resume on cpu did not reach step 8"
  check "finite_close \$(last_loss e_ohalf) \$(last_loss e_ocl) 0.02" \
    "$ocl->cpu continuation loss $(last_loss e_ohalf 2>/dev/null) not close to $ocl's $(last_loss e_ocl 2>/dev/null)"
  echo "  last losses: cpu $(last_loss e_cpu), $ocl $(last_loss e_ocl), cpu->$ocl $(last_loss e_half), $ocl->cpu $(last_loss e_ohalf)"
  run_log e_verify.txt "verify cpu,$ocl" $ferry verify --model run --backends cpu,$ocl
  sed -n '/vs cpu/,$p' e_verify.txt | sed 's/^/  /'
fi

finish backends_test
