#!/usr/bin/env bash
# Checkpoints and resume as a user runs them: N steps straight and N/2 + resume in a new process give
# byte-identical weights, optimizer and loss-scaler state (the checkpoint's data SHA-256); a resume with
# other settings is refused naming the setting; SIGKILL at random moments during checkpoint writes always
# leaves a checkpoint that loads and verifies. Exit 77 without the data set.
set -euo pipefail
MPX=$1
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data_sha() { "$MPX" inspect "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["mpx.data_sha256"])'; }

for precision in bf16-mixed 16-mixed; do
  common=(--epochs 2 --train-subset 1280 --test-subset 128 --numerics-every 0 --no-progress --precision "$precision")
  "$MPX" train "${common[@]}" --checkpoint-every 5 --out "$work/straight-$precision" > /dev/null
  # Stop mid-epoch (7 of 10 steps), resume in a new process.
  "$MPX" train "${common[@]}" --checkpoint-every 7 --max-steps 7 --out "$work/resumed-$precision" > /dev/null
  "$MPX" train "${common[@]}" --checkpoint-every 5 --resume "$work/resumed-$precision" > /dev/null
  a=$(data_sha "$work/straight-$precision/checkpoint.safetensors")
  b=$(data_sha "$work/resumed-$precision/checkpoint.safetensors")
  [ "$a" = "$b" ] || { echo "$precision: resumed checkpoint differs: $a vs $b"; exit 1; }
  [ "$(data_sha "$work/straight-$precision/model.safetensors")" = "$(data_sha "$work/resumed-$precision/model.safetensors")" ] ||
    { echo "$precision: resumed model differs"; exit 1; }
  echo "$precision: straight and resumed runs are byte-identical ($a)"
done

# Other settings: refused, naming the setting.
if out=$("$MPX" train --epochs 2 --train-subset 1280 --test-subset 128 --precision bf16-mixed --lr 0.001 \
           --resume "$work/resumed-bf16-mixed" --no-progress 2>&1); then
  echo "a resume with another --lr was accepted"; exit 1
fi
echo "$out" | grep -q "lr = " || { echo "the refusal does not name the setting: $out"; exit 1; }

# SIGKILL while checkpoints are being written (every step): the checkpoint on disk always verifies. Each
# attempt waits until the run is writing checkpoints, then kills it a random moment later.
run="$work/killed"
for attempt in 1 2 3 4 5 6 7 8; do
  rm -f "$run/checkpoint.safetensors"
  "$MPX" train --epochs 1 --train-subset 6400 --test-subset 128 --numerics-every 0 --no-progress \
    --checkpoint-every 1 --out "$run" > /dev/null 2>&1 &
  pid=$!
  for _ in $(seq 600); do [ -f "$run/checkpoint.safetensors" ] && break; sleep 0.1; done
  sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -f "$run/checkpoint.safetensors" ] || { echo "attempt $attempt: no checkpoint was written"; exit 1; }
  "$MPX" inspect "$run/checkpoint.safetensors" | grep -q "checksum: verified" ||
    { echo "attempt $attempt: the checkpoint left by SIGKILL does not verify"; exit 1; }
done
# The next writer removes what killed writers left behind.
"$MPX" train --epochs 1 --train-subset 640 --test-subset 64 --numerics-every 0 --no-progress --checkpoint-every 5 \
  --out "$run" > /dev/null
if ls "$run" | grep -q '\.tmp\.'; then echo "stale temporaries remain: $(ls "$run")"; exit 1; fi
echo "SIGKILL x8: the checkpoint always verified"
