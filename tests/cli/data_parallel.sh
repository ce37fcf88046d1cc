#!/usr/bin/env bash
# Data-parallel training as a user runs it: mpirun -np 2 with batch 64 equals one process with batch 128;
# ranks launched torchrun-style (RANK, WORLD_SIZE, MASTER_PORT) for the drills: a killed or stopped rank is
# named by the survivor within --comm-timeout, the last checkpoint survives and --resume finishes the run;
# a resume is bit-exact with the same world size and continues (saying so) with another world size or
# --grad-comm; mismatched settings are refused naming the setting and the rank. Exit 77 without the data.
set -uo pipefail
MPX=$1
. "$(dirname "$0")/data_parallel_env.sh"
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null; done; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
port=$((20000 + $$ % 20000))
next_port() { port=$((port + 1)); }
common=(--model mlp --threads 1 --no-progress --numerics-every 10 --test-subset 500)
data_sha() { "$MPX" inspect "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["mpx.data_sha256"])'; }
# ||a - b|| / ||b|| over every tensor of two model files (plain Python: no numpy on CI's image).
relative_l2() {
  python3 - "$1" "$2" << 'PY'
import array, json, math, struct, sys
def load(path):
    raw = open(path, 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]; header = json.loads(raw[8:8 + n]); out = {}
    for name, entry in header.items():
        if name == '__metadata__': continue
        begin, end = entry['data_offsets']; values = array.array('f'); values.frombytes(raw[8 + n + begin:8 + n + end]); out[name] = values
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
num = sum((x - y) ** 2 for k in b for x, y in zip(a[k], b[k])); den = sum(y * y for k in b for y in b[k])
print(math.sqrt(num / den))
PY
}
# Two ranks as torchrun starts them; $1: out dir, the rest: extra flags. Sets rank0/rank1 pids.
start_pair() {
  local out=$1; shift
  next_port
  RANK=0 WORLD_SIZE=2 MASTER_PORT=$port "$MPX" train "${common[@]}" --out "$out" "$@" > "$work/rank0.out" 2>&1 &
  rank0=$!
  RANK=1 WORLD_SIZE=2 MASTER_PORT=$port "$MPX" train "${common[@]}" --out "$out" "$@" > "$work/rank1.out" 2>&1 &
  rank1=$!
  pids+=("$rank0" "$rank1")
}

# 1. Same samples, same weights: 2 ranks x 64 with FP32 communication vs 1 process x 128, 50 steps.
steps=(--epochs 1 --max-steps 50 --train-subset 6400 --precision 32-true)
next_port
MASTER_PORT=$port mpirun -np 2 "$MPX" train "${common[@]}" "${steps[@]}" --batch-size 64 --out "$work/dp" > "$work/dp.out" 2>&1 ||
  { cat "$work/dp.out"; fail "mpirun -np 2 failed"; }
"$MPX" train "${common[@]}" "${steps[@]}" --batch-size 128 --out "$work/single" > /dev/null || fail "single process failed"
rel=$(relative_l2 "$work/dp/model.safetensors" "$work/single/model.safetensors")
python3 -c "import sys; sys.exit(0 if $rel <= 1e-6 else 1)" || fail "2 ranks x 64 differ from 1 x 128 by $rel (relative L2)"
echo "2 ranks x 64 (mpirun) vs 1 x 128 after 50 steps: relative L2 difference $rel"
[ -f "$work/dp/rank-1.log" ] || fail "rank 1 wrote no RUN/rank-1.log"
grep -q "rank 1 of 2" "$work/dp/rank-1.log" || fail "rank-1.log does not say which rank it is"
grep -q '"type":"allreduce"' "$work/dp/metrics.jsonl" || fail "no all-reduce records in metrics.jsonl"
python3 -c "import json; s = json.load(open('$work/dp/summary.json')); assert s['distributed']['world_size'] == 2, s" ||
  fail "summary.json does not record the world"

# 2. Resume with the same world size is bit-exact: 30 steps straight vs 15 + 15 (fp16+ef: the residuals resume too).
base=(--epochs 1 --train-subset 1920 --batch-size 32 --precision 16-mixed)
run=("${base[@]}" --grad-comm fp16+ef)
start_pair "$work/straight" "${run[@]}" --checkpoint-every 15; wait "$rank0" && wait "$rank1" || { cat "$work"/rank*.out; fail "straight pair failed"; }
start_pair "$work/halves" "${run[@]}" --checkpoint-every 15 --max-steps 15; wait "$rank0" && wait "$rank1" || fail "first half failed"
start_pair "$work/halves" "${run[@]}" --checkpoint-every 15 --resume "$work/halves"; wait "$rank0" && wait "$rank1" ||
  { cat "$work"/rank*.out; fail "resumed pair failed"; }
[ "$(data_sha "$work/straight/model.safetensors")" = "$(data_sha "$work/halves/model.safetensors")" ] ||
  fail "a resumed 2-rank run differs from the straight one"
[ -f "$work/halves/checkpoint-ef-rank-1.safetensors" ] || fail "rank 1's error-feedback residuals were not checkpointed"
echo "2-rank fp16+ef resume is bit-exact, residuals included"
# A damaged residual file: a clear error naming it on its rank, and that rank does not train.
cp -r "$work/halves" "$work/damaged"
head -c 100 "$work/halves/checkpoint-ef-rank-1.safetensors" > "$work/damaged/checkpoint-ef-rank-1.safetensors"
start_pair "$work/damaged" "${run[@]}" --checkpoint-every 15 --comm-timeout 5 --resume "$work/damaged"
wait "$rank1" && fail "rank 1 resumed from a damaged residual file"
wait "$rank0" && fail "rank 0 finished although rank 1 could not resume"
grep -q "checkpoint-ef-rank-1.safetensors" "$work/rank1.out" ||
  fail "the damaged residual file is not named: $(cat "$work/rank1.out")"
cmp -s "$work/halves/model.safetensors" "$work/damaged/model.safetensors" || fail "the failed resume changed the model file"
echo "damaged residual file: $(grep -m1 "checkpoint-ef-rank-1" "$work/rank1.out" | cut -c1-150)"

# 3. Another world size and another --grad-comm continue and say so.
out=$("$MPX" train "${common[@]}" "${base[@]}" --grad-comm fp32 --max-steps 20 --resume "$work/halves/checkpoint.safetensors" \
      --out "$work/one" 2>&1) || { echo "$out"; fail "resuming 2 ranks' checkpoint in one process failed"; }
echo "$out" | grep -q "written by 2 ranks" || fail "a resume with another world size does not say so: $out"
start_pair "$work/other-mode" "${base[@]}" --grad-comm bf16+ef --max-steps 20 --resume "$work/halves/checkpoint.safetensors"
wait "$rank0" && wait "$rank1" || { cat "$work"/rank*.out; fail "a resume with another --grad-comm failed"; }
grep -q "grad-comm is bf16+ef, the checkpoint's run had fp16+ef" "$work/rank0.out" ||
  fail "a resume with another --grad-comm does not say so: $(cat "$work/rank0.out")"
echo "resumes with another world size and another --grad-comm continue and say so"

# 4. Mismatched settings: refused at the start, naming the setting and the rank.
next_port
RANK=0 WORLD_SIZE=2 MASTER_PORT=$port "$MPX" train "${common[@]}" --precision 16-mixed --out "$work/mismatch" > "$work/m0.out" 2>&1 &
m0=$!
RANK=1 WORLD_SIZE=2 MASTER_PORT=$port "$MPX" train "${common[@]}" --precision bf16-mixed --out "$work/mismatch" > "$work/m1.out" 2>&1 &
m1=$!
pids+=("$m0" "$m1")
wait "$m0" && fail "rank 0 accepted a rank with another --precision"
wait "$m1" && fail "rank 1 ran with another --precision"
grep -q 'rank 1 was started with precision = "bf16-mixed", rank 0 with "16-mixed"' "$work/m0.out" ||
  fail "the refusal does not name the setting and the rank: $(cat "$work/m0.out")"
echo "mismatched --precision refused: $(tail -1 "$work/m0.out")"

# 4b. More ranks than training samples: refused on every rank.
start_pair "$work/tiny" --train-subset 1 --epochs 1
wait "$rank0" && fail "2 ranks trained on 1 sample"
grep -q "cannot be shared out among 2 ranks" "$work/rank0.out" || fail "unclear error for more ranks than samples: $(cat "$work/rank0.out")"
echo "more ranks than samples: $(tail -1 "$work/rank0.out")"

# 5. A rank that cannot reach the rendezvous: a clear error within the timeout.
next_port
start=$(date +%s)
if out=$(RANK=1 WORLD_SIZE=2 MASTER_PORT=$port "$MPX" train "${common[@]}" --comm-timeout 3 --out "$work/alone" 2>&1); then
  fail "rank 1 trained without rank 0"
fi
echo "$out" | grep -q "cannot reach the rendezvous at 127.0.0.1:$port" || fail "unclear rendezvous error: $out"
[ $(( $(date +%s) - start )) -le 10 ] || fail "the rendezvous error took more than 10 s"
echo "unreachable rendezvous: $(echo "$out" | tail -1 | cut -c1-120)..."

# 6. Drills: SIGKILL rank 1, SIGSTOP rank 1, SIGSTOP rank 0, with --comm-timeout 5. The survivor prints one
# line naming the missing rank and exits non-zero within the timeout (plus the heartbeat check); the
# checkpoint is intact and the run resumes to its end.
drill=(--epochs 3 --train-subset 12800 --batch-size 16 --precision bf16-mixed --checkpoint-every 20 --comm-timeout 5)
for case in "kill 1" "stop 1" "stop 0"; do
  read -r signal victim <<< "$case"
  out_dir="$work/drill-$signal-$victim"
  start_pair "$out_dir" "${drill[@]}"
  for _ in $(seq 1 200); do [ -f "$out_dir/checkpoint.safetensors" ] && break; sleep 0.1; done
  [ -f "$out_dir/checkpoint.safetensors" ] || { cat "$work"/rank*.out; fail "no checkpoint before the drill"; }
  victim_pid=$([ "$victim" = 0 ] && echo "$rank0" || echo "$rank1")
  survivor_pid=$([ "$victim" = 0 ] && echo "$rank1" || echo "$rank0")
  survivor=$((1 - victim))
  t0=$(date +%s.%N)
  kill -"$([ "$signal" = kill ] && echo KILL || echo STOP)" "$victim_pid"
  wait "$survivor_pid"; code=$?
  elapsed=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
  kill -9 "$victim_pid" 2> /dev/null; wait "$victim_pid" 2> /dev/null
  [ "$code" -ne 0 ] || fail "$case: the survivor exited 0"
  line=$(grep "stopped responding" "$work/rank$survivor.out")
  [ -n "$line" ] || line=$(grep "stopped responding" "$out_dir/rank-$survivor.log" 2> /dev/null)
  echo "$line" | grep -q "rank $victim stopped responding" || fail "$case: the survivor does not name rank $victim: $(cat "$work/rank$survivor.out")"
  python3 -c "import sys; sys.exit(0 if $elapsed <= 6.5 else 1)" || fail "$case: detected after $elapsed s (timeout 5 s)"
  "$MPX" inspect "$out_dir/checkpoint.safetensors" > /dev/null || fail "$case: the checkpoint does not verify"
  echo "$case: rank $survivor exited $code after $elapsed s: $(echo "$line" | head -1 | cut -c1-160)"
done
start_pair "$work/drill-kill-1" "${drill[@]}" --resume "$work/drill-kill-1"
wait "$rank0" && wait "$rank1" || { cat "$work"/rank*.out; fail "resume after the kill drill failed"; }
grep -q "resuming from" "$work/rank0.out" || fail "the resume after the drill did not resume"
echo "after the kill drill, --resume finished the run"
