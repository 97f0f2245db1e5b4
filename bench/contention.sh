#!/usr/bin/env bash
# ferry beside CPU-bound neighbours (docs/PERFORMANCE.md "Under contention"):
# decode tok/s of `ferry generate` (f32 and q8_0 weights) and training tok/s
# of `ferry train` (config tiny, the cpu backend) with 0, 1 and 2 busy-loop
# processes (nice 0) on the machine, for each OpenMP waiting setting in
# POLICIES. Every (repetition, neighbours, policy) cell runs in turn,
# interleaved, so the machine's own noise (other users) hits all of them
# alike; the table shows medians. Neighbours "rt" runs ferry alone at
# real-time priority (chrt -f 1; root only, skipped otherwise): on a machine
# other people share, the nearest thing to a quiet one.
#   bench/contention.sh [BUILD_DIR]
# env: THREADS (default: nproc), REPS (3), NEIGHBOURS ("rt 0 1 2"), NEW (decode
#      tokens, 256), STEPS (training steps timed, 4), TIMEOUT (s per run, 60),
#      POLICIES (space-separated; each is "ferry" = no OpenMP variable set,
#      ferry's own choice, or VAR=VALUE set for the run, e.g.
#      GOMP_SPINCOUNT=300000 (libgomp's own default, ferry before issue 19),
#      OMP_WAIT_POLICY=passive, OMP_WAIT_POLICY=active)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ferry=$PWD/$build/ferry
threads=${THREADS:-$(nproc)} reps=${REPS:-3} new=${NEW:-256} steps=${STEPS:-4} limit=${TIMEOUT:-60}
neighbours=${NEIGHBOURS:-"rt 0 1 2"}
chrt -f 1 true 2>/dev/null || neighbours=$(sed 's/rt//' <<<"$neighbours")
policies=${POLICIES:-"ferry GOMP_SPINCOUNT=300000 OMP_WAIT_POLICY=passive"}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap "exit 130" INT TERM
unset OMP_WAIT_POLICY GOMP_SPINCOUNT
export OMP_NUM_THREADS=$threads FERRY_LOG=error
cd "$tmp"

# A tiny model trained for two steps on a generated corpus (what it says
# does not matter: decode speed depends on the shapes only).
awk 'BEGIN { srand(1); for (i = 0; i < 20000; i++) printf "word%d and word%d.\n", int(rand()*500), int(rand()*500) }' > c.txt
"$ferry" tokenizer train --vocab-size 1024 -o tok.json c.txt >/dev/null
mkdir -p d && cp tok.json d/tokenizer.json
"$ferry" data prepare c.txt --tokenizer tok.json --out d >/dev/null
"$ferry" train --config tiny --data d --out model --steps 2 --batch 2 --seq 64 --eval-every 0 >/dev/null

# busy N: starts N busy loops (pure CPU, nice 0) and records their pids
# (none for rt: then ferry runs at real-time priority instead).
rt=()
busy() {
  rt=()
  [ "$1" = rt ] && { rt=(chrt -f 1); return; }
  for _ in $(seq 1 "$1"); do
    bash -c 'while :; do :; done' &
    pids+=($!)
  done
}
unbusy() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
# with POLICY CMD...: runs CMD with POLICY's variable (none for "ferry").
with() {
  local p=$1; shift
  if [ "$p" = ferry ]; then timeout "$limit" "${rt[@]}" "$@"; else env "$p" timeout "$limit" "${rt[@]}" "$@"; fi
}
decode() { # POLICY WEIGHTS: prints decode tok/s (0 when it failed or ran past TIMEOUT)
  with "$1" "$ferry" generate --model model --prompt "word1 and word2." -n "$new" --temperature 0 --ignore-eos \
    --weights "$2" --stats 2>&1 >/dev/null |
    sed -nE 's/.*decode [0-9]+ tokens: ([0-9.]+) tok\/s.*/\1/p' | tail -1 | grep . || echo 0
}
train() { # prints training tok/s over steps 2..STEPS+1 (0 when it failed)
  rm -rf tr
  with "$1" "$ferry" train --config tiny --data d --out tr --steps $((steps + 1)) --batch 2 --seq 64 \
    --eval-every 0 --ckpt-every 0 --log-every $((steps + 1)) 2>/dev/null |
    sed -nE 's/.*\| ([0-9]+) tok\/s.*/\1/p' | tail -1 | grep . || echo 0
}

echo "threads $threads, $reps repetitions interleaved, medians; decode: tiny, $new tokens greedy;"
echo "training: tiny, batch 2 x 64, $steps steps; $(nproc) CPUs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$reps"); do
  for n in $neighbours; do
    busy "$n"
    sleep 0.2
    for p in $policies; do
      echo "$n $p f32 $(decode "$p" f32)" >>results
      echo "$n $p q8_0 $(decode "$p" q8_0)" >>results
      echo "$n $p train $(train "$p")" >>results
    done
    unbusy
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# runs N POLICY WHAT: "median (all runs)"
cell() {
  local v
  v=$(awk -v n="$1" -v p="$2" -v w="$3" '$1 == n && $2 == p && $3 == w { print $4 }' results)
  printf "%.0f (%s)" "$(median <<<"$v")" "$(tr '\n' ' ' <<<"$v" | sed 's/ $//')"
}
printf "| OpenMP waiting | neighbours | decode f32 tok/s | decode q8_0 tok/s | training tok/s |\n"
printf "|---|---|---|---|---|\n"
for p in $policies; do
  for n in $neighbours; do
    name=$p; [ "$p" = ferry ] && name="ferry's choice (none set)"
    label=$n; [ "$n" = rt ] && label="0, ferry at real-time priority"
    printf "| %s | %s | %s | %s | %s |\n" "$name" "$label" "$(cell "$n" "$p" f32)" "$(cell "$n" "$p" q8_0)" \
      "$(cell "$n" "$p" train)"
  done
done
