#!/usr/bin/env bash
# One visit to the lent GPU machine (see the developers' guide): `scripts/gpu-visit.sh pack` here builds
# and packs into .gpu/ what the device needs (stripped binaries with their Debian libraries, the data set,
# the PyTorch reference); the device call then runs `bash .gpu/visit.sh` with carry [".gpu"], which runs
# the GPU tests and every GPU benchmark beside PyTorch's figures and leaves the results under $OUT.
# A call is limited to 10 minutes: `bash .gpu/visit.sh tests`, `... bench` (mpx and PyTorch benchmarks in
# the same call, as the guide asks) and `... train` (a 10-epoch run) split the visit; no argument runs all.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  pack)
    cmake --build build --target mpx mpx_gpu_tests mpx_backend_ops_tests -j "$(nproc)"
    rm -rf .gpu && mkdir -p .gpu/stage
    ../shared/tools/device-bundle .gpu/stage build/bin/mpx build/tests/mpx_gpu_tests build/tests/mpx_backend_ops_tests
    strip --strip-debug .gpu/stage/bin/* .gpu/stage/lib/*
    tar -C .gpu -cJf .gpu/bundle.tar.xz stage && rm -rf .gpu/stage
    cp ../shared/tools/torch_reference.py .gpu/
    cp -r /usr/share/datasets/fashion-mnist .gpu/fashion-mnist
    cp scripts/gpu-visit.sh .gpu/visit.sh
    mkdir -p .git/info && touch .git/info/exclude
    grep -qx '.gpu/' .git/info/exclude || echo '.gpu/' >> .git/info/exclude
    du -sh .gpu
    ;;
  ""|tests|bench|train)  # on the device machine
    : "${OUT:?run on the device machine, where OUT is set}"
    here=$(cd "$(dirname "$0")" && pwd)
    tar -C "$here" -xJf "$here/bundle.tar.xz"
    run="$here/stage/run"
    export MPX_FASHION_MNIST_DIR="$here/fashion-mnist"
    # NCCL (opened at run time by data-parallel CUDA runs): PyTorch's wheel brings one.
    if [ -z "${MPX_NCCL_LIBRARY:-}" ]; then
      nccl=$(python3 - 2>/dev/null <<'PY' || true
import glob, os
try:
    import nvidia
    hits = [f for p in nvidia.__path__ for f in glob.glob(os.path.join(p, "nccl", "lib", "libnccl.so*"))]
    print(sorted(hits)[0] if hits else "")
except Exception:
    print("")
PY
)
      [ -n "$nccl" ] && export MPX_NCCL_LIBRARY="$nccl" && echo "NCCL: $nccl" | tee "$OUT/nccl.txt"
    fi
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt" || true
    "$run" mpx info | tee "$OUT/info.txt"
    part=${1:-all}
    if [ "$part" = all ] || [ "$part" = tests ]; then
      # Every layer on the GPU against the CPU backend first: an op that is wrong shows up here by name.
      "$run" mpx_backend_ops_tests --gtest_output="xml:$OUT/backend_ops.xml" 2>&1 | tail -40 | tee "$OUT/backend_ops.txt" || true
      "$run" mpx_gpu_tests --gtest_output="xml:$OUT/gpu_tests.xml" 2>&1 | tail -60 | tee "$OUT/gpu_tests.txt" || true
    fi
    if [ "$part" = all ] || [ "$part" = bench ]; then
      for dtype in bf16 f16; do
      "$run" mpx bench matmul --device cuda --dtype "$dtype" --size 8192 --repeats 20 --json > "$OUT/matmul_$dtype.json" || true
      done
      "$run" mpx bench matmul --device cuda --dtype f32 --tf32 --size 8192 --json > "$OUT/matmul_tf32.json" || true
      "$run" mpx bench optimizer --steps 100 --json > "$OUT/optimizer.json" || true
      "$run" mpx bench train --device cuda --steps 400 --rounds 3 --data "$MPX_FASHION_MNIST_DIR" --json > "$OUT/train.json" || true
      # PyTorch's FP32 CNN runs its convolutions in TF32 (cuDNN's default): the like-for-like figure.
      "$run" mpx bench train --device cuda --precision 32-true --tf32 --steps 400 --rounds 3 --data "$MPX_FASHION_MNIST_DIR" \
      --json > "$OUT/train_tf32.json" || true
      # GPT-2 124M, batch 16 x 1024 (llm.c's H100 setting; PyTorch's "gpt2" section below is the same step).
      "$run" mpx bench gpt --device cuda --model gpt2 --batch-size 16 --precision bf16-mixed 32-true --steps 10 \
      --peak-size 8192 --json > "$OUT/gpt2.json" || true
      (cd "$OUT" && FMNIST="$MPX_FASHION_MNIST_DIR" timeout 300 python3 "$here/torch_reference.py" cast gemm gpt2 optim fmnist) \
      > "$OUT/torch.txt" 2>&1 || true
    fi
    if [ "$part" = all ] || [ "$part" = train ]; then
      "$run" mpx train --device cuda --precision bf16-mixed --epochs 10 --data "$MPX_FASHION_MNIST_DIR" --out "$OUT/run-bf16" \
      --no-progress > "$OUT/train_bf16.txt" 2>&1 || true
    fi
    tail -n 5 "$OUT"/*.txt "$OUT"/*.json 2>/dev/null || true
    ;;
  *) echo "usage: scripts/gpu-visit.sh pack (here) | .gpu/visit.sh [tests|bench|train] (on the device)" >&2; exit 2 ;;
esac
