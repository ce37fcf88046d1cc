#!/usr/bin/env bash
# Data parallel on one machine: 2 ranks x 1 thread (mpirun, batch B each) against 1 process x 2 threads
# (batch 2B), the same global batch and steps, interleaved so that both see the same machine; one JSON
# line per run: images/s, and for the ranks communication seconds and bytes per step (from metrics.jsonl).
# Usage: scripts/bench-data-parallel.sh [--model cnn] [--rounds 2] [--steps 200] [--batch 64] [--bucket-mb 25]
#        [--modes "fp32 bf16 fp16 bf16+ef fp16+ef"]
set -euo pipefail
cd "$(dirname "$0")/.."
model=cnn rounds=2 steps=200 batch=64 bucket=25 modes="fp32 bf16 fp16 bf16+ef fp16+ef"
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --bucket-mb) bucket=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
MPX=${MPX:-build/bin/mpx}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
common=(--model "$model" --epochs 1 --max-steps "$steps" --train-subset $((steps * batch * 2)) --test-subset 500
        --precision bf16-mixed --numerics-every 20 --log-every 1 --no-progress)
report() {  # $1 label, $2 run dir, $3 mode
  python3 - "$1" "$2" "$3" "$cpu" "$steps" << 'PY'
import json, sys
label, run, mode, cpu, steps = sys.argv[1:6]
summary = json.load(open(run + '/summary.json'))
out = {'run': label, 'mode': mode, 'images_per_second': round(summary['images_per_second'], 1), 'steps': int(steps), 'cpu': cpu}
comm = [json.loads(l)['comm'] for l in open(run + '/metrics.jsonl') if '"comm"' in l and '"type":"step"' in l]
if comm:
    out['comm_seconds_per_step'] = round(sum(c['seconds'] for c in comm) / len(comm), 6)
    out['exposed_wait_seconds_per_step'] = round(sum(c['wait_seconds'] for c in comm) / len(comm), 6)
    out['bytes_sent_per_step'] = comm[-1]['bytes_sent']
    out['buckets'] = comm[-1]['buckets']
errors = [json.loads(l)['relative_error'] for l in open(run + '/metrics.jsonl') if '"type":"allreduce"' in l]
if errors: out['allreduce_relative_error_mean'] = sum(errors) / len(errors)
print(json.dumps(out))
PY
}
for round in $(seq 1 "$rounds"); do
  for mode in $modes; do
    "$MPX" train "${common[@]}" --threads 2 --batch-size $((batch * 2)) --out "$work/one-$round-$mode" > /dev/null
    report "1 process x 2 threads, batch $((batch * 2))" "$work/one-$round-$mode" "-"
    mpirun -np 2 --bind-to none "$MPX" train "${common[@]}" --threads 1 --batch-size "$batch" --grad-comm "$mode" \
      --bucket-mb "$bucket" --out "$work/dp-$round-$mode" > /dev/null
    report "2 ranks x 1 thread, batch $batch each" "$work/dp-$round-$mode" "$mode"
  done
done
