#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) for the safetensors and IDX readers and runs each for
# SECONDS (default 30) from the seed corpus in fuzz/corpus/. Usage: fuzz/run.sh [SECONDS] [BUILD_DIR].
# Exit 77 when clang with libFuzzer is not available. Crashes are written to BUILD_DIR/crashes/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
out=${2:-build-fuzz}
command -v clang++ >/dev/null || { echo "clang++ not installed (apt-get install clang)"; exit 77; }
mkdir -p "$out/crashes"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iinclude)
common=(src/io/atomic_file.cpp src/io/regular_file.cpp src/tensor/tensor.cpp)
echo "fuzz: building targets in $out"
clang++ "${flags[@]}" fuzz/safetensors_fuzzer.cpp src/io/safetensors.cpp "${common[@]}" -lcrypto -o "$out/safetensors_fuzzer"
clang++ "${flags[@]}" fuzz/idx_fuzzer.cpp src/io/idx.cpp src/io/regular_file.cpp -lz -o "$out/idx_fuzzer"
for target in safetensors idx; do
  work="$out/corpus-$target"
  mkdir -p "$work"
  cp -n fuzz/corpus/$target/* "$work/" 2>/dev/null || true
  echo "fuzz: $target for ${seconds}s"
  # -rss_limit_mb: the readers must not allocate beyond the input; 512 MB is far above any input here.
  "$out/${target}_fuzzer" "$work" -max_total_time="$seconds" -rss_limit_mb=512 -max_len=65536 \
    -artifact_prefix="$out/crashes/$target-" -print_final_stats=1 2>&1 | tail -12
done
