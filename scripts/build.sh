#!/usr/bin/env bash
# Configures and builds mpx with a CMake preset (default: "default", into build/).
#   scripts/build.sh [preset]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-default}
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
