#!/usr/bin/env bash
# mpx train --model gpt-tiny on a small text, then mpx generate from the run: the summary carries the
# language-model fields, the model file its GPT metadata, generation prints the prompt and its continuation,
# and a prompt longer than the context is cut to the last block with a note.
set -euo pipefail
mpx=$1
out=$2
rm -rf "$out"
mkdir -p "$out"
text="$out/corpus.txt"
for i in $(seq 1 400); do echo "In the beginning was the word, and the word was with the light of day $i."; done > "$text"
"$mpx" train --model gpt-tiny --text "$text" --max-steps 20 --eval-every 10 --record-samples --out "$out/run" --no-progress > "$out/train.log"
grep -q "step 10: val loss" "$out/train.log" || { echo "no validation loss every 10 steps"; cat "$out/train.log"; exit 1; }
python3 - "$out/run/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for key in ("val_loss", "tokens_per_second", "peak_bytes", "block_size"):
    assert key in s, f"summary.json lacks {key}: {sorted(s)}"
assert s["status"] == "completed" and s["steps"] == 20, s
assert 0 < s["val_loss"] < 5.6, s["val_loss"]  # below ln 256 = 5.55 (uniform over bytes) after 20 steps
assert s["tokens_per_second"] > 0
PY
python3 - "$out/run/metrics.jsonl" <<'PY'
import json, sys
samples = [r for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "samples"]
assert [r["step"] for r in samples] == list(range(1, 21)), "one samples record per step"
assert all(len(r["indices"]) == 12 for r in samples)  # batch 12
PY
"$mpx" inspect "$out/run/model.safetensors" > "$out/inspect.log"
grep -q "transformer.h.3.attn.c_attn.weight" "$out/inspect.log" || { echo "no GPT-2 names in the model file"; exit 1; }
"$mpx" generate "$out/run" --prompt "In the beginning" --max-new-tokens 40 --seed 3 > "$out/gen.txt" 2> "$out/gen.err"
head -c 16 "$out/gen.txt" | grep -q "^In the beginning$" || { echo "the output does not start with the prompt"; cat "$out/gen.txt"; exit 1; }
[ "$(wc -c < "$out/gen.txt")" -eq 57 ] || { echo "expected 16 + 40 bytes and a newline"; wc -c "$out/gen.txt"; exit 1; }
long=$(printf 'a%.0s' $(seq 1 100))
"$mpx" generate "$out/run" --prompt "$long" --max-new-tokens 5 > /dev/null 2> "$out/long.err"
grep -q "the prompt's 100 tokens exceed the model's context of 64: the last 64 are kept" "$out/long.err" ||
  { echo "no note about the cut prompt"; cat "$out/long.err"; exit 1; }
# --init-from: a new run from the model file's weights; a run directory is refused (that is --resume's job).
"$mpx" train --model gpt-tiny --text "$text" --init-from "$out/run/model.safetensors" --max-steps 2 --eval-every 0 \
  --out "$out/warm" --no-progress > "$out/warm.log"
python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); assert s["steps"] == 2 and s["status"] == "completed", s' \
  "$out/warm/summary.json"
if "$mpx" train --model gpt-tiny --text "$text" --init-from "$out/run" --max-steps 2 --out "$out/bad" --no-progress \
    > /dev/null 2> "$out/bad.err"; then
  echo "--init-from a run directory was accepted"; exit 1
fi
grep -q "continue it with --resume" "$out/bad.err" || { echo "no --resume hint"; cat "$out/bad.err"; exit 1; }
[ ! -e "$out/bad" ] || { echo "a refused run left a directory"; exit 1; }
echo "gpt run and generation: ok"
