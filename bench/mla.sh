#!/usr/bin/env bash
# MLA attention against the latent cache: the cpu backend's tiled kernels
# (src/backend/cpu/cpu_mla.c) next to the per-pair code they replaced
# (tests/unit/mla_ref.h), alternated in one process, medians of wall and
# process CPU time (the CPU time is the steadier figure on a shared machine);
# a prefill of CTX rows, one decode row and 16 decode rows against CTX
# positions, tiny and small; the outputs are compared bit for bit.
#   bench/mla.sh [BUILD_DIR]     (THREADS, CTX, REPS env vars)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-$(nproc)} ctx=${CTX:-512} reps=${REPS:-11}
export OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
for cfg in tiny small; do
  echo "$cfg: $("$build/bench/bench_mla" --config $cfg --ctx "$ctx" --reps "$reps" | tr '\n' ' ')"
done
