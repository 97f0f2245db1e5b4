#!/usr/bin/env bash
# ferry train with paths that a shell would misread: a --data directory and
# an --out holding ' " \ ; and spaces (and a shell injection attempt) must
# train, create nothing else, land verbatim in config.json, and --resume.
#   paths_test.sh FERRY_BINARY WORK_DIR
set -u
. "$(dirname "$0")/harness.sh" "$@"
export OMP_NUM_THREADS=1

data="$work/txt'; touch PWNED; echo ' \"q\" back\\slash ;semi"
out="$work/run \"o\" \\x"
shards="$work/shards \$(touch PWNED2) 'a' \"b\" \\c; d"
mkdir -p "$data" || exit 1
awk 'BEGIN { srand(3); split("the a king river stone lamb walked wept by", w);
  for (i = 0; i < 4000; i++) printf "%s%s", w[int(rand()*9)+1], (rand() < 0.1) ? ".\n" : " " }' > "$data/corpus.txt"
T=(--steps 2 --batch 2 --seq 16 --eval-every 0 --vocab-size 300)

# config.json parses and ferry.data_dir is exactly $2.
data_dir_is() {
  python3 -c 'import json, sys; c = json.load(open(sys.argv[1] + "/config.json")); sys.exit(c["ferry"]["data_dir"] != sys.argv[2])' "$1" "$2"
}

check '"$ferry" train "${T[@]}" --data "$data" --out "$out" >train.log 2>&1' "train on '$data' (see train.log)"
check '[ -z "$(find "$work" -name "PWNED*")" ]' "an injected file was created"
check 'data_dir_is "$out" "$out/data"' "config.json: ferry.data_dir is not '$out/data'"
check '"$ferry" train --out "$out" --resume --steps 3 >resume.log 2>&1 && grep -q "done: step 3" resume.log' \
  "--resume of the run (see resume.log)"

# A prepared shard directory is used where it is, so its path is recorded.
mkdir -p "$shards" && cp "$out/data/"* "$shards/"
check '"$ferry" train "${T[@]}" --data "$shards" --out "$out 2" >shards.log 2>&1' "train on '$shards' (see shards.log)"
check 'data_dir_is "$out 2" "$shards"' "config.json: ferry.data_dir is not '$shards'"
check '[ -z "$(find "$work" -name "PWNED*")" ]' "an injected file was created"

finish paths_test
