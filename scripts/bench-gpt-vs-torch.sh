#!/usr/bin/env bash
# mpx bench gpt beside the PyTorch reference (scripts/reference/torch_gpt.py) in the same run, interleaved
# round by round (mpx, torch fp32, torch bf16, ...), medians of the per-step times printed as JSON lines.
#   scripts/bench-gpt-vs-torch.sh PYTHON [gpt-tiny|gpt2-shape] [ROUNDS]
# PYTHON: an interpreter with torch (not a dependency of mpx). gpt2-shape: GPT-2 124M, batch 4 x 64 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1
shape=${2:-gpt-tiny}
rounds=${3:-5}
if [ "$shape" = gpt2-shape ]; then
  mpx_args=(--model gpt2 --batch-size 4 --block-size 64 --steps 5)
  torch_args=(--layers 12 --heads 12 --width 768 --block 64 --vocab 50304 --batch 4 --steps 5)
else
  mpx_args=(--model gpt-tiny --batch-size 12 --steps 30)
  torch_args=(--layers 4 --heads 4 --width 128 --block 64 --vocab 256 --batch 12 --steps 30)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for _ in $(seq 1 "$rounds"); do
  build/bin/mpx bench gpt "${mpx_args[@]}" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> "$log"
  for p in fp32 bf16; do "$python" scripts/reference/torch_gpt.py "${torch_args[@]}" --precision "$p" >> "$log"; done
done
python3 - "$log" "$shape" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mpx = [r for r in rows if "results" in r]
torch = [r for r in rows if r.get("reference") == "pytorch"]
out = {"shape": sys.argv[2], "rounds": len(mpx)}
for p in ("fp32", "bf16"):
    out[f"torch_{p}_ms"] = statistics.median(r["ms_per_step"] for r in torch if r["precision"] == p)
for p in sorted({x["precision"] for r in mpx for x in r["results"]}):
    ms = statistics.median(x["ms_per_step"] for r in mpx for x in r["results"] if x["precision"] == p)
    floor = statistics.median(x["gemm_floor_ms"] for r in mpx for x in r["results"] if x["precision"] == p)
    out[f"mpx_{p}_ms"] = ms
    out[f"mpx_{p}_vs_torch_fp32"] = ms / out["torch_fp32_ms"]
    out[f"mpx_{p}_gemm_floor_ms"] = floor
    out[f"mpx_{p}_peak_mib"] = statistics.median(x["peak_bytes"] for r in mpx for x in r["results"] if x["precision"] == p) / 2**20
out["matmul_gflops"] = mpx[-1]["matmul_gflops"]
print(json.dumps(out, indent=1))
PY
