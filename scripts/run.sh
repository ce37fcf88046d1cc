#!/usr/bin/env bash
# The main job: install dependencies, build, then show what this machine offers and how fast mpx
# converts between formats here. (Training lands with the engine; this becomes `mpx train` then.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
bin=build-release/bin/mpx
"$bin" info
"$bin" bench convert --elements $((1 << 26))
if "$bin" info --json | grep -q '"compute_capability"'; then
  "$bin" bench convert --device cuda --elements $((1 << 28))
fi
