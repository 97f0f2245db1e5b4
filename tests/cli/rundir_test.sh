#!/usr/bin/env bash
# Run directories against hostile use (issue 19): two trainers on one run
# directory, a stale lock, --resume with flags that contradict the run,
# --steps at or below the run's step, an empty validation split, resuming
# from another directory, data prepare's output as --data, a checkpoint
# directory on its own, 300 input files, a full disk under metrics.jsonl.
#   rundir_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1
. "$here/micro_fixture.sh"
T=(-c micro.json --batch 2 --seq 16 --log-every 1000)
cfg() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1] + "/config.json"))["ferry"][sys.argv[2]])' "$@"; }

# 1. One trainer per run directory: a second one, new run or --resume, is
# refused naming the first; the first is unharmed.
"$ferry" train "${T[@]}" -d data -o busy --steps 1000000 --eval-every 0 --ckpt-every 50 >busy.log 2>&1 &
first=$!
for _ in $(seq 100); do grep -q "^pid $first " busy/train.lock 2>/dev/null && break; sleep 0.1; done
check 'grep -q "^pid $first host " busy/train.lock' "train.lock does not name the trainer (pid $first)"
check '! "$ferry" train "${T[@]}" -d data -o busy --steps 5 >second.log 2>&1 && grep -q "in use by ferry train pid $first" second.log' \
  "a second new run in the same --out was not refused naming pid $first (see second.log)"
check '! "$ferry" train -o busy --resume --steps 2000000 >third.log 2>&1 && grep -q "in use by ferry train pid $first" third.log' \
  "a concurrent --resume was not refused (see third.log)"
kill -INT "$first"
wait "$first"
check '[ $? -eq 130 ] && grep -q "interrupted at step" busy.log' "the first trainer did not stop cleanly (see busy.log)"
check '[ ! -s busy/train.lock ]' "a clean exit left its owner in train.lock"

# 2. A lock left by a process that is gone (killed) is taken over, saying so.
sh -c 'exit 0' &
dead=$!
wait "$dead"
echo "pid $dead host $(uname -n)" > busy/train.lock
check '"$ferry" train -o busy --resume --steps $(( $(sed "s/step-0*//" busy/checkpoints/LATEST) + 2 )) >stale.log 2>&1' \
  "resume over a stale lock failed (see stale.log)"
check 'grep -q "left by pid $dead on .*no longer running: taking it over" stale.log' "the stale lock was not reported (see stale.log)"

# 2b. Under --supervise the supervisor holds the lock and its trainer (a
# child) trains under it; should the supervisor die, the trainer keeps it.
"$ferry" train --supervise "${T[@]}" -d data -o sup --steps 1000000 --eval-every 0 --ckpt-every 50 >sup.log 2>&1 &
sup=$!
child=
for _ in $(seq 100); do
  child=$(pgrep -P "$sup")
  [ -n "$child" ] && [ -s sup/metrics.jsonl ] && break
  sleep 0.1
done
check '[ -n "$child" ] && [ -s sup/metrics.jsonl ] && grep -q "^pid $sup " sup/train.lock' \
  "the supervised trainer does not train under the supervisor's lock (see sup.log)"
kill -9 "$sup"
wait "$sup" 2>/dev/null
check '! "$ferry" train -o sup --resume --steps 2000000 >orphan.log 2>&1 && grep -q "names pid $sup, which has ended, but a process it started" orphan.log' \
  "the orphaned trainer's lock was not kept or not explained (see orphan.log)"
[ -n "$child" ] && kill -INT "$child"
for _ in $(seq 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done

# 3. --resume keeps the run's data, model and tokenizer: others are refused,
# the same ones (a supervisor's restart repeats the command line) accepted.
check '"$ferry" train "${T[@]}" -d data -o r --steps 20 --eval-every 10 >r.log 2>&1' "train r (see r.log)"
check '! "$ferry" train -o r --resume --steps 30 -d corpus.txt >e1.log 2>&1 && grep -q "keeps a run.s data" e1.log' \
  "--resume with other --data was not refused (see e1.log)"
check '! "$ferry" train -o r --resume --steps 30 -c tiny >e2.log 2>&1 && grep -q "is not the model of r" e2.log' \
  "--resume with another --config was not refused (see e2.log)"
check '! "$ferry" train -o r --resume --steps 30 --vocab-size 512 >e3.log 2>&1 && grep -q "keeps the run.s tokenizer" e3.log' \
  "--resume with another --vocab-size was not refused (see e3.log)"
# 4. --steps at or below the run's step: refused, config.json untouched; the
# run's own length when it is complete: nothing to do.
check '! "$ferry" train -o r --resume --steps 10 >e4.log 2>&1 && grep -q "already at step 20" e4.log' \
  "--steps below the current step was not refused (see e4.log)"
check '[ "$(cfg r total_steps)" = 20 ]' "a refused --steps changed total_steps in config.json"
check '"$ferry" train -o r --resume >e5.log 2>&1 && grep -q "complete at step 20: nothing to train" e5.log && ! grep -q nan e5.log' \
  "--resume of a complete run (see e5.log)"
check '"$ferry" train "${T[@]}" -o r --resume --steps 30 --stop-after 25 -d data --vocab-size 300 >r2.log 2>&1 && grep -q "done: step 25" r2.log' \
  "--resume with the run's own flags (see r2.log)"
check 'grep -q "keeping its model config, tokenizer and data" r2.log' "--resume did not say what it keeps (see r2.log)"
# The final line's validation loss says its step when the run stopped between evaluations.
check 'grep -q "done: step 25, train loss [0-9.]*, validation loss [0-9.]* at step 20;" r2.log' \
  "the done line does not say the validation loss is from step 20 (see r2.log)"

# 5. An empty validation split (long lines: few blocks of lines) is refused
# before step 1, and the same --out then trains without evaluation.
awk 'BEGIN { for (l = 0; l < 40; l++) { for (i = 0; i < 400; i++) printf "the king walked by the river "; printf "\n" } }' > long.txt
check '"$ferry" data prepare long.txt --tokenizer tok.json --out longdata >prep.log 2>&1 && grep -q "validation split is empty" prep.log' \
  "data prepare did not warn about an empty validation split (see prep.log)"
check '! "$ferry" train "${T[@]}" -d longdata -o lr --steps 5 --eval-every 2 >lr.log 2>&1 && grep -q "before step 1: validation" lr.log' \
  "an empty validation split was not refused before step 1 (see lr.log)"
check '! grep -q "^step " lr.log && [ ! -d lr/checkpoints ]' "steps ran before the empty validation split was refused"
check '"$ferry" train "${T[@]}" -d longdata -o lr --steps 3 --eval-every 0 >lr2.log 2>&1' \
  "a run refused before step 1 could not start anew in its --out (see lr2.log)"

# 6. Data paths are recorded absolute: --resume from another directory.
check 'case "$(cfg r data_dir)" in /*) true;; *) false;; esac' "ferry.data_dir is not absolute: $(cfg r data_dir)"
check '(cd / && "$ferry" train -o "$work/r" --resume --steps 27 >"$work/cwd.log" 2>&1) && grep -q "done: step 27" cwd.log' \
  "--resume from / failed (see cwd.log)"

# 7. ferry data prepare's output is a --data directory as it is (tokenizer.json included).
check '"$ferry" data prepare corpus.txt --tokenizer tok.json --out prep >/dev/null 2>&1 && [ -f prep/tokenizer.json ]' \
  "data prepare wrote no tokenizer.json"
check '"$ferry" train "${T[@]}" -d prep -o p --steps 2 --eval-every 0 >p.log 2>&1' "train --data prep/ (see p.log)"

# 8. A checkpoint directory alone (copied out of its run) is a model.
cp -r "r/checkpoints/$(cat r/checkpoints/LATEST)" lone
check '"$ferry" generate --model lone --prompt "the king" -n 4 --seed 1 >gen.log 2>&1 && [ -s gen.log ]' \
  "generate --model CKPT_DIR copied out of its run (see gen.log)"

# 9. A directory of 300 text files: every one is trained on.
mkdir many && for i in $(seq 300); do sed -n "${i}p" corpus.txt > "many/f$i.txt"; done
check '"$ferry" train "${T[@]}" -d many -o m --steps 1 --eval-every 0 --vocab-size 300 >m.log 2>&1 && grep -q "on 300 file(s)" m.log' \
  "train --data with 300 files (see m.log)"
# tokenizer train reads all 300 too: a word only files 257-300 hold is merged.
mkdir t300 && for i in $(seq -w 300); do
  if [ "$i" -gt 256 ]; then yes "zqxv" | head -50 | tr '\n' ' ' > "t300/f$i.txt"; else sed -n "${i#0}p" corpus.txt > "t300/f$i.txt"; fi
done
check '"$ferry" tokenizer train --vocab-size 300 -o t300.json t300/f*.txt >tm.log 2>&1 &&
  [ "$("$ferry" tokenizer encode --tokenizer t300.json --text zqxv | wc -w)" -lt 3 ]' \
  "tokenizer train over 300 files: the last ones not learnt (see tm.log)"
# A restart repeating the first command line (--vocab-size included: the
# tokenizer may have come out smaller) is accepted.
check '"$ferry" train "${T[@]}" -d many -o m --steps 2 --eval-every 0 --vocab-size 300 --resume >m2.log 2>&1' \
  "--resume repeating the run's own command line (see m2.log)"

# 10. A full disk under metrics.jsonl: whole lines only, a clear error, and
# the completed steps saved (the checkpoints live on another file system).
if [ "$(id -u)" = 0 ] && mkdir small && mount -t tmpfs -o size=64k tmpfs small 2>/dev/null; then
  trap 'umount "$work/small" 2>/dev/null' EXIT
  mkdir -p small/run ck && ln -s "$work/ck" small/run/checkpoints
  check '! "$ferry" train "${T[@]}" -d data -o small/run --steps 5000 --eval-every 0 --ckpt-every 0 >full.log 2>&1' \
    "training on a full disk did not fail (see full.log)"
  check 'grep -q "metrics.jsonl: the disk is full" full.log' "no clear disk-full error (see full.log)"
  check 'python3 -c "import json, sys; [json.loads(l) for l in open(sys.argv[1])]" small/run/metrics.jsonl' \
    "metrics.jsonl holds a cut line after the disk filled"
  check 'grep -q "steps up to [0-9]* are saved in a checkpoint" full.log && "$ferry" inspect "ck/$(cat ck/LATEST)" >/dev/null 2>&1' \
    "the completed steps were not saved in a checkpoint that verifies (see full.log)"
  umount small
  # A checkpoint that the disk cannot take (4 MiB: room for one) fails whole:
  # LATEST still names the one before, which verifies, and no debris is left.
  mkdir big4 && mount -t tmpfs -o size=4m tmpfs big4
  trap 'umount "$work/small" "$work/big4" 2>/dev/null' EXIT
  check '! "$ferry" train "${T[@]}" -d data -o big4/run --steps 40 --eval-every 0 --ckpt-every 5 >full2.log 2>&1' \
    "training until a checkpoint does not fit did not fail (see full2.log)"
  check 'grep -q "No space left on device; steps 6-[0-9]* are lost" full2.log' "no clear error for the checkpoint that did not fit (see full2.log)"
  check '[ "$(cat big4/run/checkpoints/LATEST)" = step-00000005 ] && "$ferry" inspect big4/run/checkpoints/step-00000005 >/dev/null 2>&1' \
    "LATEST does not name the last complete checkpoint, or it does not verify"
  check '[ -z "$(ls big4/run/checkpoints | grep -v "^LATEST$\|^step-00000005$")" ]' "debris of the failed checkpoint was left"
  umount big4
else
  echo "note: not root or no tmpfs: the full-disk checks are skipped"
fi

finish rundir_test
