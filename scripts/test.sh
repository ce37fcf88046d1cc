#!/usr/bin/env bash
# The whole test suite: install dependencies, build, run every test (unit, exhaustive; gpu tests skip
# cleanly without a device). Extra arguments go to ctest, e.g. `scripts/test.sh -L unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-tools
# Independent Python references for the tests labelled `interop` (not dependencies of mpx itself).
python3 -m pip install --quiet --disable-pip-version-check numpy ml_dtypes safetensors 2>/dev/null ||
  echo "test: numpy/ml_dtypes not installable here; the interop tests will report themselves skipped"
scripts/build.sh default
ctest --preset default "$@"
