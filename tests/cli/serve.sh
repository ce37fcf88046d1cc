#!/usr/bin/env bash
# mpx serve as a user runs it: a model that cannot be loaded stops the server before it listens, with the
# reason; then the HTTP checks of serve_http.py on a freshly trained CNN. Exit 77 without the data set.
set -euo pipefail
MPX=$1
HERE=$(cd "$(dirname "$0")" && pwd)
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed"; exit 77; }
command -v python3 >/dev/null || { echo "python3 not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

expect_refusal() {  # expected words, then the serve arguments
  local words=$1
  shift
  local rc=0
  timeout 60 "$MPX" serve "$@" --port 0 > "$work/out" 2> "$work/err" || rc=$?
  [ "$rc" -eq 2 ] || { echo "serve $* exited $rc, not 2"; cat "$work/out" "$work/err"; exit 1; }
  grep -q "$words" "$work/err" || { echo "serve $*: no '$words' in:"; cat "$work/err"; exit 1; }
  ! grep -q "http://" "$work/out" || { echo "serve $* listened before failing"; exit 1; }
}
expect_refusal "does not exist" "$work/missing.safetensors"
printf 'not a safetensors file' > "$work/garbage.safetensors"
expect_refusal "garbage.safetensors" "$work/garbage.safetensors"

"$MPX" train --model cnn --epochs 1 --train-subset 4000 --test-subset 500 --out "$work/run" --no-progress > /dev/null
expect_refusal "cannot listen" "$work/run" --bind 192.0.2.1
expect_refusal "canary-precision" "$work/run" --canary-precision fp32
expect_refusal "agreement is a fraction" "$work/run" --slo agreement=2
echo "short" > "$work/short-token"
expect_refusal "shorter than 16" "$work/run" --admin-token-file "$work/short-token"
mkfifo "$work/token-fifo"
expect_refusal "is a FIFO (named pipe), not a regular file (admin token file expected)" "$work/run" \
  --admin-token-file "$work/token-fifo"
python3 "$HERE/serve_http.py" "$MPX" "$work/run" "$work"
