#!/usr/bin/env bash
# The whole test suite: install dependencies, build, run every test (unit, exhaustive; gpu tests skip
# cleanly without a device). Extra arguments go to ctest, e.g. `scripts/test.sh -L unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh default
ctest --preset default "$@"
