#!/usr/bin/env bash
# `mpirun -np 2 mpx train --device cuda` as a user starts it, where it cannot run: with no GPU every rank
# says why in one line and exits 2; with one GPU the ranks are refused before training (NCCL needs one GPU
# per rank), saying how many to start. With two or more GPUs there is nothing to refuse: skipped (the gpu
# tests train there). Exit 77 without the data set or mpirun.
set -uo pipefail
MPX=$1
. "$(dirname "$0")/data_parallel_env.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
gpus=$("$MPX" info --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["cuda"]["devices"]))')
[ "$gpus" -ge 2 ] && { echo "$gpus GPUs: two CUDA ranks can run here"; exit 77; }
start=$(date +%s)
out=$(timeout 120 mpirun -np 2 --bind-to none "$MPX" train --device cuda --model mlp --max-steps 2 --train-subset 256 \
      --test-subset 64 --threads 1 --no-progress --out "$work/run" 2>&1)
code=$?
[ $code -ne 124 ] || fail "the ranks hung: $out"
[ $code -ne 0 ] || fail "two CUDA ranks on $gpus GPU(s) trained: $out"
if [ "$gpus" -eq 0 ]; then  # no device, or a build without CUDA
  expected="--device cuda: (no CUDA device|mpx was built without CUDA)"
else
  expected="2 ranks run on this host but it has 1 CUDA device: data parallel on CUDA needs one GPU per rank"
fi
[ "$(grep -cE -- "$expected" <<< "$out")" -ge 1 ] || fail "expected '$expected', got: $out"
[ ! -f "$work/run/model.safetensors" ] || fail "a refused run wrote a model"
echo "refused in $(($(date +%s) - start)) s with $gpus GPU(s): $(grep -E -m1 -- "$expected" <<< "$out")"
