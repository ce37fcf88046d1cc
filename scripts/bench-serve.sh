#!/usr/bin/env bash
# mpx serve on loopback (this machine): hey (Debian's load generator) sends batch-1 CNN requests (a real
# test image, UINT8 JSON) at concurrency 1 and 64, to the FP32 primary, a BF16 primary, and an FP32
# primary with a 5% BF16 canary with and without the FP32 shadow; configurations interleaved over rounds,
# one JSON line per run (requests/s, client-side P50/P99 from hey's per-request CSV, the server's mean
# batch and compute time from /metrics); the -bin configurations send binary tensor data. With a Python that has torch, PyTorch eager CPU inference of the
# same model is measured in the same call (scripts/reference/torch_cnn_inference.py).
# Usage: scripts/bench-serve.sh [--rounds 3] [--requests 20000] [--torch PYTHON] [--configs "..."]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 requests=20000 torch_python=""
configs="fp32-c1 bf16-c1 fp32-c64 bf16-c64 canary-c64 canary-shadow-c64 fp32-bin-c1 fp32-bin-c64"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --torch) torch_python=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
MPX=${MPX:-build/bin/mpx}
command -v hey >/dev/null || { echo "bench-serve: needs hey (apt-get install hey)" >&2; exit 2; }
work=$(mktemp -d)
# shellcheck source=scripts/serve-bench-common.sh
. scripts/serve-bench-common.sh
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
"$MPX" train --model cnn --epochs 1 --train-subset 6000 --test-subset 500 --out "$work/run" --no-progress > /dev/null
python3 - "$work/body.json" << 'PY'
import gzip, json, sys
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    image = list(f.read()[16:16 + 784])
json.dump({"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "UINT8", "data": image}]},
          open(sys.argv[1], "w"))
# The same request with binary tensor data (tritonclient's default): the JSON header, then the 784 bytes.
header = json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                                 "parameters": {"binary_data_size": 784}}],
                     "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
open(sys.argv[1].replace(".json", ".bin"), "wb").write(header + bytes(image))
open(sys.argv[1].replace(".json", ".bin-length"), "w").write(str(len(header)))
PY
serve_args() {  # the configuration's name: precision or canary, then -bin, -iN (instances), -cN (concurrency)
  local args=""
  case $1 in
    bf16-*) args="--precision bf16" ;;
    canary-shadow-*) args="--canary-precision bf16 --canary-share 0.05 --shadow" ;;
    canary-*) args="--canary-precision bf16 --canary-share 0.05" ;;
  esac
  case $1 in
    *-i[0-9]*) local n=${1#*-i}; args="$args --instances ${n%%-*}" ;;
  esac
  echo "$args"
}
run_one() {  # $1 config, $2 round
  local config=$1 concurrency=${1##*-c}
  # shellcheck disable=SC2046
  start_serve "$work/run" $(serve_args "$config")
  local url="http://127.0.0.1:$port/v2/models/cnn/infer"
  local body=(-T application/json -D "$work/body.json")
  case $config in
    *-bin-*) body=(-T application/octet-stream -H "Inference-Header-Content-Length: $(cat "$work/body.bin-length")"
                   -D "$work/body.bin") ;;
  esac
  # The body holds no id, so the server numbers the requests and the canary still gets its share.
  hey -n 2000 -c "$concurrency" -m POST "${body[@]}" "$url" > /dev/null
  hey -n "$requests" -c "$concurrency" -m POST "${body[@]}" -o csv "$url" > "$work/hey.csv"
  stop_serve
  summarise "$config" "$2" "$cpu"
}
for round in $(seq "$rounds"); do
  for config in $configs; do run_one "$config" "$round"; done
  if [ -n "$torch_python" ]; then
    "$torch_python" scripts/reference/torch_cnn_inference.py "$work/run/model.safetensors"
    "$torch_python" scripts/reference/torch_cnn_inference.py "$work/run/model.safetensors" --bf16
  fi
done
