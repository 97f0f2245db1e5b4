#!/usr/bin/env bash
# ferry next to llama.cpp per weight format, in one run (docs/PERFORMANCE.md,
# "ferry vs llama.cpp per weight format"). For each config (CONFIGS, default
# "tiny small": `ferry train -c CFG --vocab-size VOCAB --steps 2`, the
# default KJV corpus, near-random weights, which is all a speed test needs)
# and type (TYPES, default "f32 bf16 f16 q8_0 q4_0"), ferry runs with
# --weights TYPE and llama.cpp on `ferry convert --to gguf --type TYPE` of
# the same run. Each round (ROUNDS, default 3) runs ferry, then llama.cpp:
#   warm   bench/bench_generate (one process: prefill PROMPT random tokens,
#          decode NEW, twice, best kept) | llama-bench pp PROMPT, and tg NEW
#          at depth PROMPT (-d: decoding after the prompt, as ferry does),
#          -r 2 --no-warmup, best sample kept: both sides pay one cold pass
#   cold   one fresh process each: `ferry generate --stats --temperature 0
#          --ignore-eos` on a weights image of the type (`ferry convert --to
#          ferry --weights TYPE`, mapped as llama.cpp maps its GGUF;
#          IMAGE=0: the f32 run for every type, encoded at load)
#          | tools/llamacpp/llama_cold.c, same prompt text
#          (PROMPT tokens with ferry's tokenizer and llama.cpp's, checked),
#          NEW new tokens; under /usr/bin/time -v for the wall time and the
#          peak RSS. The page cache is warm (the files were read just before:
#          "cold" is a new process, not a cold disk).
# THREADS (default 2) threads on both sides (OMP_NUM_THREADS, -t); llama.cpp
# at its defaults otherwise (KV cache f16, flash attention auto, repacked
# weights; REPACK=0 passes --repack 0, for AMX machines, see llama_ids.c).
# Prints a markdown table of medians over the rounds: ferry, llama.cpp and
# the ratio in ferry's favour (tok/s: ferry / llama.cpp; seconds and MiB:
# llama.cpp / ferry), so >= 1.00x means ferry is as good or better.
# Every measured process runs under `timeout LIMIT` (default 120 s): one
# that runs past it is shown as such, without a ratio, and the run goes on
# (on a loaded machine llama.cpp's spinning thread barriers can turn a
# seconds-long run into minutes).
# llama-bench and llama_cold come from tools/llamacpp/check.sh --build-only
# --bench (built once, cached; its first run fetches the llama-cpp-python
# sdist with pip); exits 77 when that build cannot be had.
#   bench/llamacpp.sh [BUILD_DIR]   (CONFIGS, TYPES, ROUNDS, THREADS, PROMPT, NEW, VOCAB, REPACK, LIMIT env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
ferry=$build/ferry bgen=$build/bench/bench_generate
threads=${THREADS:-2} rounds=${ROUNDS:-3} plen=${PROMPT:-512} new=${NEW:-128} vocab=${VOCAB:-8192}
configs=${CONFIGS:-"tiny small"} types=${TYPES:-"f32 bf16 f16 q8_0 q4_0"} repack=${REPACK:-1} limit=${LIMIT:-120}
image=${IMAGE:-1}
export OMP_NUM_THREADS=$threads
# bench_generate is not the CLI: unless the user chose a wait policy, it
# gets the OpenMP spin that `ferry generate` would pick for itself at that
# moment (src/cli/env.c: long on a quiet machine, short beside busy
# neighbours), read from libgomp's own report of a `ferry generate --help`
ferry_spin() {
  OMP_DISPLAY_ENV=verbose "$ferry" generate --help 2>&1 >/dev/null |
    sed -nE "s/^ *GOMP_SPINCOUNT = '([0-9]+)'.*/\1/p" | tail -1
}
bgen_env=()
start=$(date +%s)
for x in "$ferry" "$bgen"; do
  [ -x "$x" ] || { echo "bench/llamacpp.sh: $x not built (cmake --build $build)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench/llamacpp.sh: skipped: needs GNU time (/usr/bin/time -v) for the peak RSS" >&2; exit 77; }

cache=${FERRY_LLAMACPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/llama.cpp}
JOBS=${JOBS:-2} tools/llamacpp/check.sh --build-only --bench "$ferry" >&2 || {
  echo "bench/llamacpp.sh: skipped: no llama.cpp build (tools/llamacpp/check.sh --build-only --bench failed, see above)" >&2
  exit 77
}
lbench=$cache/build/bin/llama-bench lcold=$cache/build/bin/llama_cold
llver=$(cat "$cache/build/source.txt")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-llamacpp-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
res=$tmp/results.txt # lines: CFG TYPE METRIC SIDE VALUE
: >"$res"

# field JSON NAME: a number from a one-line JSON object
field() { sed -nE "s/.*\"$2\": \[?([0-9.e+-]+).*/\1/p" <<<"$1"; }
# best_sample JSONL_LINE: the largest of llama-bench's samples_ts
best_sample() {
  sed -nE 's/.*"samples_ts": \[([^]]*)\].*/\1/p' <<<"$1" | tr ',' '\n' | sort -g | tail -n 1 | tr -d ' '
}
# timev FILE KEY: a value from /usr/bin/time -v's report
timev() { sed -nE "s/^[[:space:]]*$2[^:]*: (.*)$/\1/p" "$1" | tail -n 1; }
# wall FILE: the elapsed time of a /usr/bin/time -v report, in seconds
wall() { timev "$1" 'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)' | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }'; }
rss_mib() { awk -v k="$(timev "$1" 'Maximum resident set size')" 'BEGIN { printf "%.1f", k / 1024 }'; }
put() { echo "$1 $2 $3 $4 $5" >>"$res"; }
need() { # need WHAT VALUE: a measurement that must be a positive number
  awk -v v="$2" 'BEGIN { exit !(v + 0 > 0) }' || { echo "bench/llamacpp.sh: no $1 measured (got '$2')" >&2; exit 1; }
}

# prompt_text TOKENIZER: words of Genesis 1, cycled, as many as make exactly
# $plen tokens with the run's tokenizer (the word count is corrected until
# the count matches; both sides check the count they prefill)
prompt_text() {
  local words verse="In the beginning God created the heaven and the earth. And the earth was without form, and void;"
  verse+=" and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters."
  read -ra words <<<"$verse"
  local n=$plen text i c
  for _ in $(seq 30); do
    text=
    for ((i = 0; i < n; i++)); do text+="${text:+ }${words[i % ${#words[@]}]}"; done
    c=$("$ferry" tokenizer encode --tokenizer "$1" --text "$text" | wc -w)
    [ "$c" = "$plen" ] && { printf '%s' "$text"; return 0; }
    n=$((n + plen - c))
  done
  echo "bench/llamacpp.sh: no prompt of exactly $plen tokens found" >&2
  return 1
}

# limited ERRFILE CMD...: CMD under `timeout LIMIT`, stdout into $out,
# stderr to ERRFILE; returns 124 when it ran out of time, and exits the
# script, showing ERRFILE, when it failed otherwise
limited() {
  local err=$1 rc=0
  shift
  timeout "$limit" "$@" >"$tmp/out" 2>"$err" || rc=$?
  out=$(cat "$tmp/out")
  [ $rc = 0 ] || [ $rc = 124 ] || { echo "bench/llamacpp.sh: $* failed ($rc):" >&2; tail -n 20 "$err" >&2; exit 1; }
  return $rc
}
# over CFG TYPE SIDE METRIC...: the process measuring METRICs ran past LIMIT
over() {
  local m
  for m in "${@:4}"; do put "$1" "$2" "$m" "$3" over; done
  echo "  $3 ran past $limit s (${*:4})" >&2
}

# cell CFG TYPE RUN GGUF PROMPT_TEXT COLD_MODEL: ROUNDS rounds, ferry then
# llama.cpp (COLD_MODEL: what the cold ferry process loads, RUN or its image)
cell() {
  local cfg=$1 t=$2 run=$3 gguf=$4 text=$5 cold=$6 r out fp fd lp ld np nd
  cat "$gguf" "$run"/config.json "$run"/tokenizer.json >/dev/null
  find "$run/checkpoints" "$cold/checkpoints" -type f -exec cat {} + >/dev/null # the page cache warm for the cold runs
  for r in $(seq "$rounds"); do
    echo "  $cfg $t round $r/$rounds" >&2
    # warm: ferry
    [ -n "${OMP_WAIT_POLICY:-}${GOMP_SPINCOUNT:-}" ] || bgen_env=(env GOMP_SPINCOUNT="$(ferry_spin)")
    if limited "$tmp/err" "${bgen_env[@]}" "$bgen" --config "$cfg" --vocab "$vocab" --prompt "$plen" --new "$new" --weights "$t" --reps 2; then
      fp=$(field "$out" prefill_tok_s) fd=$(field "$out" decode_tok_s)
      need "ferry warm prefill" "$fp"; need "ferry warm decode" "$fd"
      put "$cfg" "$t" prefill_warm ferry "$fp"; put "$cfg" "$t" decode_warm ferry "$fd"
    else over "$cfg" "$t" ferry prefill_warm decode_warm; fi
    # warm: llama.cpp, a process for pp and one for tg at depth
    if limited "$tmp/err" "$lbench" -m "$gguf" -p "$plen" -n 0 -t "$threads" -r 2 --no-warmup --repack "$repack" -o jsonl; then
      lp=$(best_sample "$out")
      need "llama-bench prefill" "$lp"
      put "$cfg" "$t" prefill_warm llama "$lp"
    else over "$cfg" "$t" llama prefill_warm; fi
    if limited "$tmp/err" "$lbench" -m "$gguf" -p 0 -n "$new" -d "$plen" -t "$threads" -r 2 --no-warmup --repack "$repack" -o jsonl; then
      ld=$(best_sample "$out")
      need "llama-bench decode" "$ld"
      put "$cfg" "$t" decode_warm llama "$ld"
    else over "$cfg" "$t" llama decode_warm; fi
    # cold: ferry generate, one fresh process
    if limited "$tmp/gen.err" /usr/bin/time -v -o "$tmp/time.txt" "$ferry" generate --model "$cold" --weights "$t" \
         --prompt "$text" --n "$new" --temperature 0 --ignore-eos --stats; then
      # "prefill N tokens: X tok/s; decode M tokens: Y tok/s" (later fields, if any, are not read)
      np='' nd=''
      read -r np fp nd fd < <(sed -nE 's/.*prefill ([0-9]+) tokens: ([0-9.]+) tok\/s; decode ([0-9]+) tokens: ([0-9.]+) tok\/s.*/\1 \2 \3 \4/p' \
        "$tmp/gen.err" | head -n 1) || true
      if [ "$np" != "$plen" ] || [ "$nd" != "$new" ]; then
        echo "ferry generate prefilled '$np' tokens and decoded '$nd', not $plen and $new:" >&2
        cat "$tmp/gen.err" >&2
        exit 1
      fi
      put "$cfg" "$t" prefill_cold ferry "$fp"; put "$cfg" "$t" decode_cold ferry "$fd"
      put "$cfg" "$t" wall_cold ferry "$(wall "$tmp/time.txt")"; put "$cfg" "$t" rss ferry "$(rss_mib "$tmp/time.txt")"
    else over "$cfg" "$t" ferry prefill_cold decode_cold wall_cold rss; fi
    # cold: llama_cold, one fresh process
    if limited "$tmp/err" /usr/bin/time -v -o "$tmp/time.txt" "$lcold" "$gguf" "$text" "$new" "$threads" "$repack"; then
      [ "$(field "$out" prompt_tokens)" = "$plen" ] ||
        { echo "llama_cold prefilled $(field "$out" prompt_tokens) tokens, not $plen: $out" >&2; exit 1; }
      put "$cfg" "$t" prefill_cold llama "$(field "$out" prefill_tok_s)"; put "$cfg" "$t" decode_cold llama "$(field "$out" decode_tok_s)"
      put "$cfg" "$t" wall_cold llama "$(wall "$tmp/time.txt")"; put "$cfg" "$t" rss llama "$(rss_mib "$tmp/time.txt")"
    else over "$cfg" "$t" llama prefill_cold decode_cold wall_cold rss; fi
  done
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
for cfg in $configs; do
  echo "== $cfg: training 2 steps (vocab $vocab), exporting GGUFs" >&2
  (cd "$tmp" && "$ferry" train -c "$cfg" --steps 2 --vocab-size "$vocab" -o "$tmp/$cfg" --backend cpu --eval-every 0 \
     --log-every 1000 >"$tmp/train-$cfg.log" 2>&1) || { tail -n 20 "$tmp/train-$cfg.log" >&2; exit 1; }
  text=$(prompt_text "$tmp/$cfg/tokenizer.json")
  for t in $types; do
    "$ferry" convert -m "$tmp/$cfg" --to gguf --type "$t" -o "$tmp/$cfg-$t.gguf" >"$tmp/convert.log" 2>&1 ||
      { cat "$tmp/convert.log" >&2; exit 1; }
    cold=$tmp/$cfg
    if [ "$image" = 1 ]; then
      cold=$tmp/$cfg-$t.image
      "$ferry" convert -m "$tmp/$cfg" --to ferry --weights "$t" -o "$cold" >"$tmp/convert.log" 2>&1 ||
        { cat "$tmp/convert.log" >&2; exit 1; }
    fi
    cell "$cfg" "$t" "$tmp/$cfg" "$tmp/$cfg-$t.gguf" "$text" "$cold"
    rm -rf "$tmp/$cfg-$t.gguf" "$tmp/$cfg-$t.image"
  done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

echo "$(nproc --all) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), threads $threads, $rounds rounds (medians),"
echo "ferry $(git rev-parse --short HEAD 2>/dev/null || echo '?') vs llama.cpp from $llver; prompt $plen tokens, $new new tokens (greedy);"
echo "load average $load0 at the start, $load1 at the end; $(($(date +%s) - start)) s in all"
[ "$image" = 1 ] && echo "ferry's cold process loads a weights image of each type (ferry convert --to ferry --weights TYPE)" ||
  echo "ferry's cold process loads the f32 run and encodes each type at load (IMAGE=0)"
echo
echo "| config | type | metric | ferry | llama.cpp | ratio |"
echo "|---|---|---|---|---|---|"
for cfg in $configs; do
  for t in $types; do
    for m in decode_warm prefill_warm prefill_cold decode_cold wall_cold rss; do
      awk -v c="$cfg" -v t="$t" -v m="$m" -v p="$plen" -v n="$new" -v lim="$limit" '
        function median(a, k,   i, j, x) { # insertion sort, then the middle
          for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
          return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
        }
        $1 == c && $2 == t && $3 == m && $5 == "over" { if ($4 == "ferry") of++; else ol++; next }
        $1 == c && $2 == t && $3 == m { if ($4 == "ferry") f[++nf] = $5; else l[++nl] = $5 }
        END {
          if (!nf && !of || !nl && !ol) exit
          name["decode_warm"] = "decode " n " (warm, after " p ") tok/s"
          name["prefill_warm"] = "prefill " p " warm tok/s"
          name["prefill_cold"] = "prefill " p " cold tok/s"
          name["decode_cold"] = "decode " n " cold tok/s"
          name["wall_cold"] = "cold process s"
          name["rss"] = "cold peak RSS MiB"
          fmt = (m == "wall_cold") ? "%.2f" : (m == "rss" ? "%.1f" : "%.0f")
          if (of || ol) { # a side ran past LIMIT in some round: no median, no ratio
            fa = of ? "over " lim " s (" of "/" of + nf ")" : sprintf(fmt, median(f, nf))
            fb = ol ? "over " lim " s (" ol "/" ol + nl ")" : sprintf(fmt, median(l, nl))
            printf "| %s | %s | %s | %s | %s | n/a |\n", c, t, name[m], fa, fb
            exit
          }
          a = median(f, nf); b = median(l, nl)
          lower = (m == "wall_cold" || m == "rss") # lower is better: the ratio is llama.cpp / ferry
          r = lower ? (a > 0 ? b / a : 0) : (b > 0 ? a / b : 0)
          printf "| %s | %s | %s | " fmt " | " fmt " | %.2fx |\n", c, t, name[m], a, b, r
        }' "$res"
    done
  done
done
