#!/usr/bin/env bash
# Command two: install test dependencies, build, run the whole test suite.
# Runs ctest twice: the normal Release build, and the unit tests again under
# AddressSanitizer + UBSan (label "unit").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
jobs=$(nproc)

# The interop checks run in a venv outside the clone (PyPI's torch and
# transformers; Debian's are too old). Without network they skip.
py=$(scripts/pyenv.sh) || { echo "test: WARNING: no interop venv; the interop tests will skip"; py=""; }

# llama.cpp's CPU library, built once into the same cache from the
# llama-cpp-python sdist, so the GGUF export is checked by llama.cpp itself
# (ctest interop_gguf_llamacpp; it skips when this could not be done).
if [ -n "$py" ]; then
  PYTHON="$py" tools/llamacpp/check.sh --build-only ||
    echo "test: WARNING: llama.cpp could not be built; interop_gguf_llamacpp will skip"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFERRY_INTEROP_PYTHON="$py" >/dev/null
cmake --build build -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

status=0
echo "== ctest: Release build =="
(cd build && ctest --output-on-failure -j"$jobs") || status=1
echo "== ctest: AddressSanitizer + UBSan build (unit tests) =="
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -L unit -j"$jobs") || status=1
exit $status
