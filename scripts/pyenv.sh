#!/usr/bin/env bash
# Makes (or reuses) the Python venv for the interop checks and prints the
# path of its python. It lives outside the clone (PyPI's torch brings ~5 GB of
# CUDA libraries) under ${XDG_CACHE_HOME:-$HOME/.cache}/ferry/, named by the
# hash of tools/requirements.txt, so a changed requirement makes a new one
# and an unchanged one is reused as it is.
#   scripts/pyenv.sh      prints the venv's python (creating it first)
# Exits non-zero, with a line on stderr, when it cannot be made (no network).
set -euo pipefail
cd "$(dirname "$0")/.."
req=tools/requirements.txt
hash=$(sha256sum "$req" | cut -c1-12)
root="${XDG_CACHE_HOME:-$HOME/.cache}/ferry"
venv="$root/venv-$hash"
mkdir -p "$root"
# One creator at a time; a half-made venv (no .complete) is made again.
exec 9>"$root/.lock-$hash"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  echo "pyenv: creating $venv from $req (a few minutes)" >&2
  /usr/bin/python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
