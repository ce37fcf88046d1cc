#!/usr/bin/env bash
# Installs mpx's Debian 12 dependencies, idempotently: only what is missing, as root or through sudo.
# The CUDA toolkit is optional and not installed here; when nvcc is at /usr/local/cuda the build uses it.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libcli11-dev nlohmann-json3-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libdnnl-dev zlib1g-dev prometheus-cpp-dev libssl-dev
  dataset-fashion-mnist
)
# `--test-tools`: also what the tests check mpx against (not dependencies of mpx): the Prometheus server and
# promtool for the metrics exporter's tests, clang (libFuzzer) for the fuzz targets.
if [ "${1:-}" = "--test-tools" ]; then
  packages+=(prometheus clang)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} Debian packages already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup: missing packages (${missing[*]}) and neither root nor sudo; install them and rerun" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
