#!/usr/bin/env bash
# Command two: install test dependencies, build, run the whole test suite.
# Runs ctest three times: the normal Release build, the unit tests again
# under AddressSanitizer + UBSan (label "unit"), and the fuzz targets for a
# short budget each (clang build, label "fuzz").
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

# The fuzz targets (tests/fuzz, docs/RELIABILITY.md "Fuzzing") need clang's
# libFuzzer: their own build directory, compiled with clang. Without clang
# the fuzz step is skipped with a line saying so (ctest -L fuzz skips too
# when clang cannot link -fsanitize=fuzzer). With clang there, a build that
# fails is ferry's code not compiling under clang: the run fails.
fuzz=0 fuzz_broken=0
if command -v clang >/dev/null; then
  if CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DFERRY_FUZZ=ON >/dev/null &&
     cmake --build build-fuzz -j"$jobs" --target fuzz_all; then fuzz=1
  else fuzz_broken=1; echo "test: ERROR: the fuzz build (clang, build-fuzz) failed; the fuzz step is skipped"; fi
else
  echo "test: WARNING: no clang; the fuzz step is skipped (apt-get install clang libclang-rt-14-dev)"
fi

status=$fuzz_broken
echo "== ctest: Release build =="
(cd build && ctest --output-on-failure -j"$jobs") || status=1
echo "== ctest: AddressSanitizer + UBSan build (unit tests) =="
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -L unit -j"$jobs") || status=1
# Seeds from a micro run, then each target ~25 s, two at a time (about
# 2-3 minutes on two cores).
if [ $fuzz -eq 1 ]; then
  echo "== ctest: fuzz targets (libFuzzer, ASan + UBSan, label fuzz) =="
  (cd build-fuzz && ctest --output-on-failure -L fuzz -j2) || status=1
fi
exit $status
