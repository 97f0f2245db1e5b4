#!/bin/sh
# ferry's GGUF export checked by llama.cpp itself (docs/INTEROP.md, "Out:
# GGUF for llama.cpp").
#
#   tools/llamacpp/check.sh [--build-only] [--server] [--bench] [FERRY_BINARY]
#
# 1. Gets llama.cpp's source as the llama-cpp-python sdist vendors it
#    (pip download --no-deps --no-binary llama-cpp-python llama-cpp-python;
#    `--no-binary :all:` would also build pip's build backends (scikit-build-core,
#    hatchling, setuptools, ...) from source, minutes for nothing; no other
#    network) into the cache directory $FERRY_LLAMACPP_DIR, default
#    ${XDG_CACHE_HOME:-$HOME/.cache}/ferry/llama.cpp, outside the clone.
# 2. Builds only libllama and ggml's CPU backend there (reused when present;
#    the build time is printed and kept in build-seconds.txt); the
#    comparison compiles llama_ids (tools/llamacpp/llama_ids.c) against it.
# 3. Unless --build-only: runs tools/interop/gguf_llamacpp.py, which trains
#    a tiny model, exports f32/f16/bf16/q8_0/q4_0 and compares llama.cpp's
#    greedy ids (64 tokens, f32 KV cache, flash attention off) with
#    `ferry generate --temperature 0 --print-ids`.
# --server also builds llama-server (bench/serve.sh runs it next to `ferry
# serve`): the same build directory reconfigured with common, tools and
# server on (no curl, no OpenSSL, no web UI), building only the
# llama-server target. Its options do not change libllama's compile flags,
# so libllama and llama_ids are not rebuilt and interop_gguf_llamacpp keeps
# using them; the test command (scripts/test.sh) never asks for the server
# (minutes of C++ on CI for a benchmark).
# --bench likewise builds llama-bench (common and tools on, the same
# configuration as --server's) and compiles tools/llamacpp/llama_cold.c
# against libllama into the build's bin/ (bench/llamacpp.sh runs both next
# to ferry).
# $PYTHON (default python3) runs pip and the comparison; $JOBS (default 2)
# is the build's parallelism. ctest's interop_gguf_llamacpp runs step 3 once
# step 2 has been done.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
cache=${FERRY_LLAMACPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/llama.cpp}
py=${PYTHON:-python3}
jobs=${JOBS:-2}
build_only=0
server=0
bench=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1; shift ;;
    --server) server=1; shift ;;
    --bench) bench=1; shift ;;
    *) break ;;
  esac
done
ferry=${1:-$here/build/ferry}
mkdir -p "$cache/sdist"

sdist=$(ls "$cache"/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$sdist" ]; then
  echo "== downloading the llama-cpp-python sdist (vendors llama.cpp) into $cache/sdist"
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python -d "$cache/sdist"
  sdist=$(ls "$cache"/sdist/llama_cpp_python-*.tar.gz | sort -V | tail -n 1)
fi
name=$(basename "$sdist" .tar.gz)
src=$cache/$name/vendor/llama.cpp
if [ ! -f "$src/include/llama.h" ]; then
  echo "== unpacking $name"
  tar -xzf "$sdist" -C "$cache"
fi

build=$cache/build
if [ ! -f "$build/bin/libllama.so" ] || [ "$(cat "$build/source.txt" 2>/dev/null)" != "$name" ]; then
  echo "== building libllama (CPU only, -j$jobs) from $name"
  rm -rf "$build"
  start=$(date +%s)
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_COMMON=OFF -DBUILD_SHARED_LIBS=ON -DGGML_OPENMP=OFF >"$cache/configure.log" 2>&1 ||
    { tail -n 20 "$cache/configure.log"; exit 1; }
  cmake --build "$build" --target llama -j "$jobs" >"$cache/build.log" 2>&1 || { tail -n 30 "$cache/build.log"; exit 1; }
  echo "$name" >"$build/source.txt"
  echo $(($(date +%s) - start)) >"$cache/build-seconds.txt"
fi
echo "llama.cpp: $name, built in $(cat "$cache/build-seconds.txt" 2>/dev/null || echo '?') s (configure + libllama, -j$jobs)"

# tools_target TARGET: configures the build with common and the tools (no
# curl, OpenSSL, web UI, app or mtmd) and builds TARGET, once per source;
# the time is kept in TARGET-build-seconds.txt
tools_target() {
  if [ ! -x "$build/bin/$1" ] || [ "$(cat "$build/$1-source.txt" 2>/dev/null)" != "$name" ]; then
    echo "== building $1 (CPU only, -j$jobs) from $name"
    start=$(date +%s)
    cmake -S "$src" -B "$build" -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON "$@" \
      -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_MTMD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
      >"$cache/configure-$1.log" 2>&1 || { tail -n 20 "$cache/configure-$1.log"; exit 1; }
    cmake --build "$build" --target "$1" -j "$jobs" >"$cache/build-$1.log" 2>&1 ||
      { tail -n 30 "$cache/build-$1.log"; exit 1; }
    echo "$name" >"$build/$1-source.txt"
    echo $(($(date +%s) - start)) >"$cache/$1-build-seconds.txt"
  fi
  echo "$1: $build/bin/$1, built in $(cat "$cache/$1-build-seconds.txt" 2>/dev/null || echo '?') s (-j$jobs)"
}

if [ $server = 1 ]; then tools_target llama-server -DLLAMA_BUILD_SERVER=ON; fi

if [ $bench = 1 ]; then
  tools_target llama-bench
  cold=$build/bin/llama_cold
  if [ ! -x "$cold" ] || [ "$here/tools/llamacpp/llama_cold.c" -nt "$cold" ] || [ "$build/bin/libllama.so" -nt "$cold" ]; then
    "${CC:-cc}" -O2 -std=c11 -o "$cold" "$here/tools/llamacpp/llama_cold.c" -I"$src/include" -I"$src/ggml/include" \
      -L"$build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$build/bin"
  fi
  echo "llama_cold: $cold"
fi

[ $build_only = 1 ] && exit 0

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-llamacpp.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$py" "$here/tools/interop/gguf_llamacpp.py" --llamacpp "$cache" --ferry "$ferry" --work "$work"
