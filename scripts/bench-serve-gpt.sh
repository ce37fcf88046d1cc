#!/usr/bin/env bash
# mpx serve for a GPT on loopback (this machine): hey (Debian's load generator) sends generate requests
# (a 16-byte prompt unless --prompt, greedy, --new-tokens new tokens each) to a gpt-tiny trained for a few hundred steps,
# at concurrency 1 and 4, with one or two generator instances, FP32 or BF16, and with a 5% BF16 canary
# under the FP32 shadow; configurations interleaved over rounds, one JSON line per run (requests/s,
# tokens/s, client-side P50/P99 per request, the server's mean time per token). With a Python that has
# torch, PyTorch eager generation with a KV cache of the same weights is measured in the same rounds
# (scripts/reference/torch_gpt_generate.py), and checked to give the tokens `mpx generate` gives.
# Usage: scripts/bench-serve-gpt.sh [--rounds 3] [--requests 300] [--new-tokens 48] [--prompt TEXT] [--torch PYTHON]
#        [--configs "..."]   (the prompt's bytes plus --new-tokens must fit gpt-tiny's context of 64)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 requests=300 new_tokens=48 torch_python="" prompt="In the beginning"
configs="fp32-c1 bf16-c1 fp32-c4 fp32-i2-c4 bf16-i2-c4 canary-shadow-i2-c4"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --new-tokens) new_tokens=$2; shift 2 ;;
    --torch) torch_python=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
MPX=${MPX:-build/bin/mpx}
command -v hey >/dev/null || { echo "bench-serve-gpt: needs hey (apt-get install hey)" >&2; exit 2; }
work=$(mktemp -d)
# shellcheck source=scripts/serve-bench-common.sh
. scripts/serve-bench-common.sh
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
"$MPX" train --model gpt-tiny --max-steps 300 --test-subset 24 --out "$work/run" --no-progress > /dev/null
python3 -c 'import json, sys; print(json.dumps({"text_input": sys.argv[1], "max_tokens": int(sys.argv[2]), "temperature": 0}))' \
  "$prompt" "$new_tokens" > "$work/body.json"
expected=$("$MPX" generate "$work/run" --prompt "$prompt" --max-new-tokens "$new_tokens" --temperature 0)
expected=${expected#"$prompt"}

serve_args() {  # the configuration's name: precision or canary, then -iN (instances), -cN (concurrency)
  local args=""
  case $1 in
    bf16-*) args="--precision bf16" ;;
    canary-shadow-*) args="--canary-precision bf16 --canary-share 0.05 --shadow" ;;
  esac
  case $1 in
    *-i[0-9]*) local n=${1#*-i}; args="$args --instances ${n%%-*}" ;;
  esac
  echo "$args"
}
run_one() {  # $1 config, $2 round
  local config=$1 concurrency=${1##*-c}
  # shellcheck disable=SC2046
  start_serve "$work/run" --max-tokens "$new_tokens" $(serve_args "$config")
  local url="http://127.0.0.1:$port/v2/models/gpt/generate"
  hey -n 40 -c "$concurrency" -m POST -T application/json -D "$work/body.json" "$url" > /dev/null
  hey -n "$requests" -c "$concurrency" -m POST -T application/json -D "$work/body.json" -o csv "$url" > "$work/hey.csv"
  # One answer of this server beside mpx generate's FP32 greedy text (command substitution drops trailing
  # newlines, so both are compared without them); a BF16 variant may choose other tokens.
  curl -s -XPOST "$url" -d @"$work/body.json" > "$work/answer.json"
  stop_serve
  local same
  same=$(python3 -c 'import json, sys; print(str(json.load(open(sys.argv[1]))["text_output"].rstrip("\n") == sys.argv[2]).lower())' \
    "$work/answer.json" "$expected")
  summarise "$config" "$2" "$cpu" "new_tokens=$new_tokens" "same_text_as_mpx_generate_fp32=$same"
}
for round in $(seq "$rounds"); do
  for config in $configs; do run_one "$config" "$round"; done
  if [ -n "$torch_python" ]; then
    for flag in "" --bf16; do
      # shellcheck disable=SC2086
      "$torch_python" scripts/reference/torch_gpt_generate.py "$work/run/model.safetensors" --prompt "$prompt" \
        --tokens "$new_tokens" --expect "$expected" $flag
    done
  fi
done
