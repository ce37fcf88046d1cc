#!/usr/bin/env bash
# Installs mpx's Debian 12 dependencies, idempotently: only what is missing, as root or through sudo.
# The CUDA toolkit is optional and not installed here; when nvcc is at /usr/local/cuda the build uses it.
# Packages are installed without their recommendations, so everything the build and the tests use is named
# here (a fresh Debian 12 root has nothing else: scripts/fresh-check.sh proves it).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ca-certificates
  libcli11-dev nlohmann-json3-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # Debian's dnnl-config.cmake calls find_package(OpenCL): its recommended OpenCL package is required.
  libdnnl-dev ocl-icd-opencl-dev zlib1g-dev prometheus-cpp-dev libssl-dev
  dataset-fashion-mnist
  # Data parallel: Gloo's collectives (TCP, timeouts), and OpenMPI's mpirun to launch the ranks.
  libgloo-dev openmpi-bin
  # mpx serve: the HTTP server library.
  libcpp-httplib-dev
  # The default text corpus of the GPT models: the King James Bible, written out by its `bible` reader.
  bible-kjv
)
# `--test-tools`: also what the tests check mpx against (not dependencies of mpx): the Prometheus server and
# promtool for the metrics exporter's tests, clang with its libFuzzer/ASan runtimes for the fuzz targets,
# Python (with venv and pip) for the CLI tests' helpers and the interop references, GNU time for the memory checks.
if [ "${1:-}" = "--test-tools" ]; then
  packages+=(prometheus clang libclang-rt-14-dev python3 python3-venv python3-pip time)
fi

# data/bible-kjv.txt (mpx train --model gpt-tiny's default --text): every verse, one per line, without the
# verse references. Written once, atomically.
write_default_corpus() {
  local root corpus
  root="$(cd "$(dirname "$0")/.." && pwd)"
  corpus="$root/data/bible-kjv.txt"
  [ -s "$corpus" ] && return 0
  mkdir -p "$root/data"
  bible -f "Gen1:1-Rev22:21" | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$corpus.tmp"
  mv "$corpus.tmp" "$corpus"
  echo "setup: wrote the default text corpus $corpus ($(wc -c < "$corpus") bytes)"
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} Debian packages already installed"
  write_default_corpus
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
# Exit 75 (EX_TEMPFAIL) when apt could not download: a network problem, not a defect (fresh-check.sh retries).
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
run_apt() {
  if ! "$@" 2>&1 | tee -a "$apt_log"; then
    if grep -qE "Failed to fetch|Temporary failure resolving|Could not resolve|Could not connect|Connection failed|Unable to fetch" "$apt_log"; then
      echo "setup: apt could not download packages (network); try again" >&2
      exit 75
    fi
    echo "setup: '$*' failed" >&2
    exit 1
  fi
}
run_apt "${sudo[@]}" apt-get update -qq
run_apt "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
write_default_corpus
