#!/usr/bin/env bash
# The test command (README, .ci/run): installs dependencies, builds into
# build/ (incrementally: a fresh clone builds everything), fetches the GPT-2 tokenizer files the tokenizer tests
# need, and runs every test that needs no GPU (unit tests and the multi-rank
# tests under mpirun).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install_deps.sh
bash scripts/get_tokenizer.sh
bash scripts/build.sh
# mpirun refuses to run as root unless told it is intended (CI runs as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure -j"$(nproc)" -LE gpu
