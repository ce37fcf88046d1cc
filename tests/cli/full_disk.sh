#!/usr/bin/env bash
# A full disk while writing (simulated with a file-size limit: writes past it fail with EFBIG once SIGXFSZ
# is ignored): mpx convert and the run files fail with a clear error, and the previous file stays intact.
set -euo pipefail
MPX=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/big.safetensors" <<'PY'
import json, struct, sys
n = 300_000  # 1.2 MB of f32
header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + struct.pack("<f", 0.5) * n)
PY
"$MPX" convert "$work/big.safetensors" "$work/out.safetensors" --to bf16 > /dev/null
before=$(sha256sum "$work/out.safetensors")
# 256 KiB limit: the 600 KB conversion cannot be written.
if out=$(bash -c "trap '' XFSZ; ulimit -f 256; exec '$MPX' convert '$work/big.safetensors' '$work/out.safetensors' --to fp16" 2>&1); then
  echo "the write past the limit succeeded"; exit 1
fi
echo "$out" | grep -q "disk full" || { echo "no clear error: $out"; exit 1; }
[ "$(sha256sum "$work/out.safetensors")" = "$before" ] || { echo "the previous file changed"; exit 1; }
"$MPX" inspect "$work/out.safetensors" | grep -q "checksum: verified" || { echo "the previous file no longer verifies"; exit 1; }
ls "$work" | grep -q tmp && { echo "a temporary file was left behind"; exit 1; }
echo "full disk: clear error, previous file intact"
