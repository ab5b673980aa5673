#!/usr/bin/env bash
# Configures and builds srgpt into build/ (CUDA backend when nvcc exists,
# MPI when found). Extra arguments go to cmake's configure step.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$root/build" -j"$(nproc)"
