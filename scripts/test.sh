#!/usr/bin/env bash
# The whole test suite: install dependencies, build, run every test (unit, exhaustive; gpu tests skip
# cleanly without a device). Extra arguments go to ctest, e.g. `scripts/test.sh -L unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test-tools
# Independent Python references for the tests labelled `interop` (not dependencies of mpx itself), in a
# virtual environment of their own (Debian's Python refuses system-wide pip installs). Without a network
# the interop tests report themselves skipped.
venv=build/interop-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "test: python3 -m venv failed"; exit 1; }
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" numpy ml_dtypes safetensors ||
  echo "test: numpy/ml_dtypes/safetensors not installable here; the interop tests will report themselves skipped"
"${pip[@]}" tensorboard || echo "test: tensorboard not installable here; its interop test will report itself skipped"
"${pip[@]}" "tritonclient[http]" || echo "test: tritonclient not installable here; its interop test will report itself skipped"
cmake --preset default -DPython3_EXECUTABLE="$PWD/$venv/bin/python"
cmake --build --preset default -j "$(nproc)"
ctest --preset default "$@"
