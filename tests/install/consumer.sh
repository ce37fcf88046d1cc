#!/usr/bin/env bash
# A project using an installed mpx: `cmake --install` into a fresh prefix, then configure, build and run
# examples/train_cnn against it with find_package(mpx) alone (3,000 training images).
# Usage: consumer.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
build=$1 source=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
test -f "$work/prefix/lib/cmake/mpx/mpxConfig.cmake" || { echo "no mpxConfig.cmake installed"; exit 1; }
test -f "$work/prefix/include/mpx/train/trainer.h" || { echo "headers not installed"; exit 1; }
test -x "$work/prefix/bin/mpx" || { echo "the mpx command not installed"; exit 1; }
cmake -S "$source/examples/train_cnn" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_BUILD_TYPE=Release >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/example" -j2 >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
if [[ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  echo "built against the installed tree; no Fashion-MNIST to run it on (apt-get install dataset-fashion-mnist)"
  exit 77
fi
"$work/example/train_cnn" /usr/share/datasets/fashion-mnist 3000 "$work/cnn.safetensors"
test -s "$work/cnn.safetensors"
