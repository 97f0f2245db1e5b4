#!/usr/bin/env bash
# Installs ferry's dependencies from Debian's packages (and, for the test
# oracles only, PyPI). Idempotent: installs only what is missing.
#   scripts/deps.sh          what building and running ferry needs
#   scripts/deps.sh --test   plus what the test suite needs
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

pkgs=(cmake build-essential pkg-config libopenblas-openmp-dev libcjson-dev
      libpcre2-dev libxxhash-dev libutf8proc-dev zlib1g-dev libmicrohttpd-dev bible-kjv)
if [ "${1:-}" = "--test" ]; then
  pkgs+=(python3 python3-torch python3-numpy python3-pip
         ocl-icd-opencl-dev opencl-headers pocl-opencl-icd
         libopenmpi-dev openmpi-bin iproute2
         chromium chromium-driver   # serve_page: the chat page in headless Chromium
         clang libclang-rt-14-dev libomp-14-dev)  # tests/fuzz: libFuzzer (clang's), OpenMP for clang
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
  # The interop oracles use Debian's python3 (where python3-torch lives).
  if ! /usr/bin/python3 -c "import tokenizers" 2>/dev/null; then
    echo "deps: pip installing tokenizers for /usr/bin/python3"
    $SUDO /usr/bin/python3 -m pip install -q --break-system-packages "tokenizers>=0.15" \
      || echo "deps: WARNING: could not install tokenizers; the HF agreement test will skip"
  fi
fi
