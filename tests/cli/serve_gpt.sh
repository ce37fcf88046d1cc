#!/usr/bin/env bash
# mpx serve on a GPT as a user runs it: train gpt-tiny briefly, serve the run, and check over HTTP (serve_gpt.py)
# that greedy generations equal mpx generate's, the canary and the shadow work, a NaN canary is rolled back
# with every request answered, and SIGTERM drains.
set -euo pipefail
MPX=$1
HERE=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null || { echo "python3 not installed"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 400); do echo "In the beginning was the word, and the word was with the light of day $i."; done > "$work/corpus.txt"
"$MPX" train --model gpt-tiny --text "$work/corpus.txt" --max-steps 30 --eval-every 0 --out "$work/run" --no-progress > /dev/null
python3 "$HERE/serve_gpt.py" "$MPX" "$work/run"
