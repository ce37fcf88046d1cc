#!/usr/bin/env bash
# The main job: install dependencies (Fashion-MNIST included), build, and train the CNN on Fashion-MNIST
# in mixed precision on the CPU (bf16-mixed where the CPU has AVX512_BF16, else 16-mixed), writing
# runs/<time>-cnn-<precision>/ with config.json, metrics.jsonl and summary.json.
# Extra arguments go to `mpx train`, e.g. `scripts/run.sh --precision 32-true --epochs 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
bin=build-release/bin/mpx
"$bin" info
"$bin" train "$@"
