#!/usr/bin/env bash
# The main job on its built-in default: installs dependencies, builds,
# fetches and prepares the demo corpus (real English text), trains
# configs/demo.json (on a GPU when the CUDA backend is built and one is
# visible, else on the CPU in about 70 seconds on 2 cores), prints the validation
# perplexity and a generated sample. Extra arguments go to `srgpt train`
# (e.g. --set precision=mixed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install_deps.sh
bash scripts/build.sh
bash scripts/get_demo_corpus.sh build/srgpt
rm -rf runs/demo
build/srgpt train --config configs/demo.json "$@"
echo
echo "== evaluation of the final checkpoint on the validation split"
build/srgpt eval --checkpoint runs/demo --data 'data/demo/val_*.bin'
echo
echo "== a sample from the trained model"
build/srgpt sample --checkpoint runs/demo --prompt "The " --tokens 120 --temperature 0.8 --top-k 40 --seed 1
