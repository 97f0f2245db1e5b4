#!/usr/bin/env bash
# Command one: on a fresh Debian machine, install what ferry needs, build it,
# prepare the default corpus (the King James Bible from Debian's bible-kjv),
# train the `tiny` DeepSeek-V3-style model for about ten minutes on 2 cores,
# then generate a sample from it.
#   STEPS=N scripts/run.sh     to train longer or shorter (default 1000)
# The first run is bounded at 15 minutes (--time-limit 900: it stops with a
# checkpoint); running the script again continues it up to STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target ferry

run=runs/tiny
if [ -f "$run/checkpoints/LATEST" ]; then
  echo "== $run exists: continuing it (delete it to start over) =="
  ./build/ferry train --out "$run" --resume --steps "${STEPS:-1000}"
else
  ./build/ferry train --config tiny --out "$run" --steps "${STEPS:-1000}" --time-limit 900
fi

echo
echo "== sample (ferry generate --model $run) =="
./build/ferry generate --model "$run" --prompt "And God said" -n 200 \
  --temperature 0.8 --top-k 40 --seed 7
echo
