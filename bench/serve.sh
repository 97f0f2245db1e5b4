#!/usr/bin/env bash
# Serving throughput and latency: `ferry serve` next to llama-server on the
# same model, same prompts, same machine, in the same run (docs/PERFORMANCE.md,
# "Serving"). For each config (tiny, small: `ferry train -c CFG`, the default
# KJV corpus and its 4096-token vocabulary, 2 steps: near-random weights, which
# is all a speed test needs) and weights (f32, q8_0), it starts
#   ferry serve --weights W --slots 64 --ctx CTX --kv-tokens 64 x CTX
#   llama-server on `ferry convert --to gguf --type W` of the same run,
#       -np 64 -c 64 x CTX (CTX per slot), -t/-tb THREADS, flash attention off,
#       --no-repack (ggml's AMX repacked buffers abort on the small models'
#       shapes, see tools/llamacpp/llama_ids.c; ferry uses no AMX either),
#       --cache-ram 0 (its host-memory prompt cache, 8 GiB by default, stalled
#       streams here for ~2.5 s at a time with the Q8_0 GGUF once a slot had
#       been reused: 10-30 tok/s instead of ~1700; ferry keeps no prompt
#       cache either; in-slot prefix reuse stays on, llama-server's default)
# and drives each with tools/serve/load.py at every STREAMS level (streamed
# /v1/completions, temperature 0, ignore_eos, TOKENS tokens per request,
# 2 x streams requests, at least 4). llama-server comes from
# tools/llamacpp/check.sh --build-only --server (built once, cached).
#   bench/serve.sh [BUILD_DIR]   (STREAMS, TOKENS, CONFIGS, WEIGHTS, THREADS, CTX, LOAD_TIMEOUT env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=$(cd "${1:-build}" && pwd)
threads=${THREADS:-$(nproc)} tokens=${TOKENS:-64} streams=${STREAMS:-"1 4 16 64"}
configs=${CONFIGS:-"tiny small"} weights=${WEIGHTS:-"f32 q8_0"} ctx=${CTX:-256}
py=${PYTHON:-python3}
load_timeout=${LOAD_TIMEOUT:-240}
slots=64
export OMP_NUM_THREADS=$threads
# Not OMP_WAIT_POLICY=PASSIVE (bench/batch.sh sets it): sleeping OpenMP
# workers slow the one-stream case most (each token is many short parallel
# regions), which would inflate the 16-vs-1 ratio. Unset, ferry serve picks
# its own spin at start-up (GOMP_SPINCOUNT 30000 on a quiet machine, 300
# beside busy neighbours, src/cli/env.c; docs/PERFORMANCE.md "Under
# contention"): what a server runs with.
unset OMP_WAIT_POLICY GOMP_SPINCOUNT

cache=${FERRY_LLAMACPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/llama.cpp}
JOBS=${JOBS:-2} tools/llamacpp/check.sh --build-only --server "$build/ferry" >&2
llama=$cache/build/bin/llama-server

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-serve-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_health URL PID LOG: until GET URL/health answers 200 (120 s at most)
wait_health() {
  for _ in $(seq 1200); do
    kill -0 "$2" 2>/dev/null || { echo "server died:" >&2; tail -n 20 "$3" >&2; return 1; }
    curl -sf -o /dev/null "$1/health" && return 0
    sleep 0.1
  done
  echo "server not healthy after 120 s:" >&2; tail -n 20 "$3" >&2; return 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
field() { sed -E "s/.*\"$2\": ([0-9.e+-]+).*/\1/" <<<"$1"; }

echo "$(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), threads $threads,"
echo "$tokens tokens per request (ignore_eos, greedy), 2 x streams requests (at least 4), $slots slots, context $ctx per slot"
echo
echo "| config | weights | server | streams | tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |"
echo "|---|---|---|---|---|---|---|"
res=$tmp/results.txt
: >"$res"
for cfg in $configs; do
  (cd "$tmp" && "$build/ferry" train -c "$cfg" --steps 2 -o "$tmp/$cfg" --backend cpu --eval-every 0 \
     --log-every 1000 >"$tmp/train-$cfg.log" 2>&1) || { tail -n 20 "$tmp/train-$cfg.log" >&2; exit 1; }
  for w in $weights; do
    "$build/ferry" convert -m "$tmp/$cfg" --to gguf --type "$w" -o "$tmp/$cfg-$w.gguf" >"$tmp/convert.log" 2>&1 ||
      { cat "$tmp/convert.log" >&2; exit 1; }
    for server in ferry llama-server; do
      log=$tmp/$cfg-$w-$server.log
      if [ $server = ferry ]; then
        "$build/ferry" serve --model "$tmp/$cfg" --backend cpu --weights "$w" --slots $slots --ctx "$ctx" \
          --kv-tokens $((slots * ctx)) --port 0 >"$log" 2>&1 &
        pid=$!
        pids+=("$pid")
        port=
        for _ in $(seq 600); do
          port=$(sed -nE 's|.*listening on http://[^ ]*:([0-9]+).*|\1|p' "$log" | head -n 1)
          [ -n "$port" ] && break
          kill -0 "$pid" 2>/dev/null || break
          sleep 0.1
        done
        [ -n "$port" ] || { echo "ferry serve did not start:" >&2; tail -n 20 "$log" >&2; exit 1; }
      else
        port=$(free_port)
        "$llama" -m "$tmp/$cfg-$w.gguf" --host 127.0.0.1 --port "$port" -np $slots -c $((slots * ctx)) \
          -t "$threads" -tb "$threads" -fa off --no-repack --cache-ram 0 >"$log" 2>&1 &
        pid=$!
        pids+=("$pid")
      fi
      url=http://127.0.0.1:$port
      wait_health "$url" "$pid" "$log"
      for s in $streams; do
        # bounded: a level that takes longer than LOAD_TIMEOUT s is shown as such, not waited out
        rc=0
        out=$(timeout "$load_timeout" "$py" tools/serve/load.py --url "$url" --streams "$s" --tokens "$tokens") || rc=$?
        if [ $rc = 124 ]; then
          printf "| %s | %s | %s | %d | over %d s | - | - |\n" "$cfg" "$w" "$server" "$s" "$load_timeout"
          echo "$cfg $w $server $s {\"tok_s\": 0}" >>"$res"
          continue
        fi
        [ $rc = 0 ] || { echo "load.py failed against $server ($cfg $w, $s streams)" >&2; exit 1; }
        echo "$cfg $w $server $s $out" >>"$res"
        printf "| %s | %s | %s | %d | %.0f | %.1f / %.1f | %.1f / %.1f |\n" "$cfg" "$w" "$server" "$s" \
          "$(field "$out" tok_s)" "$(field "$out" ttft_p50_ms)" "$(field "$out" ttft_p99_ms)" \
          "$(field "$out" itl_p50_ms)" "$(field "$out" itl_p99_ms)"
      done
      stop "$pid"
    done
  done
done

# Ratios: each server's aggregate tok/s at 16 streams over 1 stream (target
# >= 4x), and ferry over llama-server at every level (target >= 1).
echo
printf "| config | weights | ferry 16 vs 1 | llama-server 16 vs 1 |"
for s in $streams; do printf " ferry / llama-server, %s |" "$s"; done
printf "\n|---|---|---|---|"
for s in $streams; do printf -- "---|"; done
echo
for cfg in $configs; do
  for w in $weights; do
    awk -v c="$cfg" -v w="$w" -v levels="$streams" '
      $1 == c && $2 == w { match($0, /"tok_s": [0-9.]+/); t[$3, $4] = substr($0, RSTART + 9, RLENGTH - 9) + 0 }
      function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2fx", a / b) : "n/a" }
      END {
        printf "| %s | %s | %s | %s |", c, w, ratio(t["ferry", 16], t["ferry", 1]),
               ratio(t["llama-server", 16], t["llama-server", 1])
        n = split(levels, L, " ")
        for (i = 1; i <= n; i++) printf " %s |", ratio(t["ferry", L[i]], t["llama-server", L[i]])
        printf "\n"
      }' "$res"
  done
done
