#!/usr/bin/env bash
# Bad runs and damaged files lose nothing (issue 17's cases, each as a user meets it):
#   - a refused --resume, a bad --data, a port in use leave the run's metrics.jsonl as it was; a run that
#     fails before its first step leaves no directory behind; a resume keeps the history and appends;
#   - resuming a run that is already at its last step reports the model's accuracy and loss, not zeros;
#   - a checkpoint whose training state was edited (one byte, or consistently with a fresh checksum) is
#     refused naming the field; NaN master weights are refused;
#   - a FIFO given as a file is refused at once (no hang);
#   - /metrics still answers with 200 idle connections open;
#   - --epochs 2147483647 does not allocate a schedule; a directory as a safetensors file names itself;
#   - a large file is mapped: a damaged 2 GB one is refused at once, a valid one inspected in little memory;
#   - mpx convert refuses NaN weights by default; mpx parity warns on a non-FP32 baseline and gates on the
#     logit error;
#   - drills that cannot fire are said before training.
# Exit 77 without the data set.
set -euo pipefail
MPX=$1
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed"; exit 77; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
any_epochs=(--model cnn --precision 16-mixed --train-subset 256 --test-subset 100 --batch-size 32 --numerics-every 0
            --no-progress)
small=("${any_epochs[@]}" --epochs 1 --threads 2)
expect_exit() {  # expect_exit CODE MESSAGE-FRAGMENT COMMAND...: the exit code and a fragment of the output
  local code=$1 fragment=$2 out rc=0
  shift 2
  out=$(timeout 60 "$@" 2>&1) || rc=$?
  [ "$rc" -eq "$code" ] || fail "expected exit $code, got $rc from: $* -> $out"
  grep -qF -- "$fragment" <<< "$out" || fail "expected '$fragment' from: $* -> $out"
}
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# --- 2. Run files survive refused runs; a resume appends -------------------------------------------------
run="$work/a"
"$MPX" train "${small[@]}" --max-steps 4 --checkpoint-every 2 --log-every 1 --out "$run" > /dev/null
cp "$run/metrics.jsonl" "$work/metrics.before"
[ -s "$work/metrics.before" ] || fail "the first run wrote no metrics"
expect_exit 2 "lr = " "$MPX" train "${small[@]}" --lr 0.123 --resume "$run"
cmp -s "$run/metrics.jsonl" "$work/metrics.before" || fail "a refused --resume changed metrics.jsonl"
expect_exit 2 "does not exist" "$MPX" train "${small[@]}" --data "$work/no-such-data" --out "$run"
cmp -s "$run/metrics.jsonl" "$work/metrics.before" || fail "a bad --data changed metrics.jsonl"
python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)' > "$work/port" &
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
expect_exit 2 "cannot serve metrics" "$MPX" train "${small[@]}" --metrics-port "$(cat "$work/port")" --out "$run"
cmp -s "$run/metrics.jsonl" "$work/metrics.before" || fail "a port in use changed metrics.jsonl"
kill %1 2>/dev/null || true
expect_exit 2 "does not exist" "$MPX" train "${small[@]}" --data "$work/no-such-data" --out "$work/never"
[ ! -e "$work/never" ] || fail "a run that failed before its first step left $work/never behind"
# A resume keeps the 4 steps of history and appends the rest (no record twice, none lost).
"$MPX" train "${small[@]}" --checkpoint-every 2 --log-every 1 --resume "$run" > /dev/null
python3 - "$run/metrics.jsonl" <<'EOF' || fail "metrics.jsonl after a resume"
import json, sys
steps = [r["step"] for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "step"]
assert steps == list(range(1, 9)), steps
EOF
echo "run files: kept through a refused resume, a bad --data and a port in use; a resume appends"

# --- 3. Resuming a finished run reports the model, not zeros ----------------------------------------------
accuracy=$(json "$run/summary.json" 'd["test_accuracy"]')
expect_exit 0 "test accuracy" "$MPX" train "${small[@]}" --checkpoint-every 2 --resume "$run"
again=$(json "$run/summary.json" 'd["test_accuracy"]')
[ "$again" = "$accuracy" ] || fail "resumed at the end: test accuracy $again, the run had $accuracy"
python3 - "$run/summary.json" <<'EOF' || fail "resumed at the end: final_loss"
import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d["final_loss"], float) and d["final_loss"] > 0, d["final_loss"]
EOF
"$MPX" inspect "$run/model.safetensors" | grep -q "mpx.test_accuracy = 0.000000" && fail "the model file says 0 accuracy"
echo "resume at the last step: accuracy $again kept"

# --- 4. Tampered checkpoints --------------------------------------------------------------------------------
ckpt="$run/checkpoint.safetensors"
edit() {  # edit SRC DST PYTHON: rewrites the checkpoint state with PYTHON (s: the state dict); --resign fixes its checksum
  python3 - "$@" <<'EOF'
import hashlib, json, struct, sys
src, dst, code = sys.argv[1:4]
resign = "--resign" in sys.argv
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
meta = header["__metadata__"]
s = json.loads(meta["mpx.checkpoint"])
exec(code)
text = json.dumps(s, separators=(",", ":"))
meta["mpx.checkpoint"] = text
if resign:
    meta["mpx.checkpoint_sha256"] = hashlib.sha256(text.encode()).hexdigest()
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(dst, "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
EOF
}
cp -r "$run" "$work/t"
for change in 's["global_step"] += 1' 's["optimizer_steps"] += 1' 's["loss_scaler"]["scale"] = 65537.0'; do
  edit "$ckpt" "$work/t/checkpoint.safetensors" "$change"
  expect_exit 1 "checkpoint state checksum: mismatch" "$MPX" inspect "$work/t/checkpoint.safetensors"
  expect_exit 2 "training state differs" "$MPX" train "${small[@]}" --resume "$work/t/checkpoint.safetensors" --out "$work/t2"
done
for case in 'global_step|s["global_step"] = -5' 'global_step|s["global_step"] = 10**15' 'epoch|s["epoch"] = 999' \
            'images_seen|s["images_seen"] = 10**12' 'optimizer_steps|s["optimizer_steps"] = 7'; do
  field=${case%%|*}
  edit "$ckpt" "$work/t/checkpoint.safetensors" "${case#*|}" --resign
  expect_exit 2 "$field = " "$MPX" train "${small[@]}" --resume "$work/t/checkpoint.safetensors" --out "$work/t2"
done
python3 - "$ckpt" "$work/t/checkpoint.safetensors" <<'EOF'
import json, struct, sys, hashlib
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
name = next(k for k in header if k != "__metadata__" and not k.startswith("optimizer."))
begin = 8 + n + header[name]["data_offsets"][0]
raw[begin:begin + 4] = struct.pack("<f", float("nan"))
meta = header["__metadata__"]
meta["mpx.data_sha256"] = hashlib.sha256(bytes(raw[8 + n:])).hexdigest()
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + bytes(raw[8 + n:]))
EOF
expect_exit 2 "holds a non-finite value" "$MPX" train "${small[@]}" --resume "$work/t/checkpoint.safetensors" --out "$work/t2"
echo "tampered checkpoints: refused, naming the field"

# --- 5. FIFOs ---------------------------------------------------------------------------------------------
mkfifo "$work/pipe.safetensors"
expect_exit 2 "is a FIFO" "$MPX" inspect "$work/pipe.safetensors"
expect_exit 2 "is a FIFO" "$MPX" convert "$work/pipe.safetensors" "$work/out.safetensors" --to fp16
expect_exit 2 "is a FIFO" "$MPX" parity "$run" --against "$work/pipe.safetensors"
expect_exit 2 "is a FIFO" "$MPX" train "${small[@]}" --resume "$work/pipe.safetensors" --out "$work/t3"
mkdir "$work/fifo-data"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  mkfifo "$work/fifo-data/$f"
done
expect_exit 2 "is a FIFO" "$MPX" train "${small[@]}" --data "$work/fifo-data" --out "$work/t4"
echo "FIFOs: refused at once"

# --- 6. /metrics under 200 idle connections ---------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MPX" train "${small[@]}" --metrics-port "$port" --metrics-linger 30 --out "$work/scraped" > /dev/null &
server=$!
python3 - "$port" <<'EOF' || fail "/metrics did not answer under 200 idle connections"
import socket, sys, time, urllib.request
port = int(sys.argv[1])
for _ in range(300):
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2).read(); break
    except OSError:
        time.sleep(0.1)
idle = []
for i in range(200):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2: s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a request, never finished
    idle.append(s)
start = time.time()
body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
assert "mpx_train_steps_total" in body
print("scrape with 200 idle connections: %.1f s" % (time.time() - start))
EOF
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true

# --- 9. Huge --epochs, a directory as a file ---------------------------------------------------------------
/usr/bin/time -f "%M" -o "$work/rss" "$MPX" train "${any_epochs[@]}" --epochs 2147483647 --max-steps 2 --out "$work/long" > /dev/null
[ "$(cat "$work/rss")" -lt 1000000 ] || fail "--epochs 2147483647 used $(cat "$work/rss") kB"
mkdir "$work/dir.safetensors"
expect_exit 2 "$work/dir.safetensors: is a directory" "$MPX" inspect "$work/dir.safetensors"
expect_exit 0 "warning: --threads 64 is more than" "$MPX" train "${any_epochs[@]}" --epochs 1 --max-steps 1 --threads 64 --out "$work/threads"
echo "--epochs 2147483647: $(cat "$work/rss") kB peak"

# --- 8. Large files are mapped, not loaded -------------------------------------------------------------------
# A 2 GB sparse file with a damaged header is refused at once; a valid 512 MB one (4 tensors of 128 MB) is
# inspected with about three times one tensor resident, not the file plus its widened copy.
python3 - "$work" <<'EOF'
import json, struct, sys
work = sys.argv[1]
with open(work + "/sparse-bad.safetensors", "wb") as f:
    f.write(struct.pack("<Q", 40) + b"[" + b" " * 39); f.truncate(2 << 30)
per = 128 << 20
h = {"t%d" % i: {"dtype": "F32", "shape": [per // 4], "data_offsets": [i * per, (i + 1) * per]} for i in range(4)}
t = json.dumps(h).encode(); t += b" " * ((8 - len(t) % 8) % 8)
with open(work + "/sparse-good.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(t)) + t); f.truncate(8 + len(t) + 4 * per)
EOF
/usr/bin/time -f "%M %e" -o "$work/bad.rss" "$MPX" inspect "$work/sparse-bad.safetensors" > /dev/null 2>&1 || true
read -r kb seconds < <(tail -1 "$work/bad.rss")
[ "$kb" -lt 200000 ] || fail "a damaged 2 GB header was refused at $kb kB"
/usr/bin/time -f "%M" -o "$work/good.rss" "$MPX" inspect "$work/sparse-good.safetensors" > /dev/null
[ "$(cat "$work/good.rss")" -lt 600000 ] || fail "inspecting a 512 MB file took $(cat "$work/good.rss") kB"
rm -f "$work"/sparse-*.safetensors
echo "large files: a damaged 2 GB header refused at $kb kB in $seconds s; 512 MB inspected at $(cat "$work/good.rss") kB"

# --- 12. NaN weights in convert; parity's baseline and logit gate ------------------------------------------
python3 - "$run/model.safetensors" "$work/nan.safetensors" <<'EOF'
import json, struct, sys
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
header["__metadata__"].pop("mpx.data_sha256", None)
begin = 8 + n + header["conv1.weight"]["data_offsets"][0]
raw[begin:begin + 8] = struct.pack("<ff", float("nan"), float("inf"))
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + bytes(raw[8 + n:]))
EOF
expect_exit 1 "holds 2 non-finite values" "$MPX" convert "$work/nan.safetensors" "$work/nan16.safetensors" --to fp16
[ ! -e "$work/nan16.safetensors" ] || fail "convert wrote a file from NaN weights"
expect_exit 0 "wrote" "$MPX" convert "$work/nan.safetensors" "$work/nan16.safetensors" --to fp16 --allow-nonfinite
"$MPX" convert "$run/model.safetensors" "$work/fp16.safetensors" --to fp16 > /dev/null
expect_exit 0 "warning: the baseline" "$MPX" parity "$work/fp16.safetensors" --precision 32-true --max-accuracy-drop 100 --max-class-drop 100
expect_exit 1 "parity: FAIL" "$MPX" parity "$run" --against "$work/fp16.safetensors" --max-logit-error 0 --max-accuracy-drop 100 --max-class-drop 100
expect_exit 0 "parity: PASS" "$MPX" parity "$run" --against "$work/fp16.safetensors" --max-logit-error 1 --max-accuracy-drop 100 --max-class-drop 100
echo "convert refuses NaN weights; parity warns on an FP16 baseline and gates on the logit error"

# --- 10/14. Empty flags; drills that cannot fire ----------------------------------------------------------
expect_exit 2 "--precision: must not be empty" "$MPX" train "${small[@]}" --precision "" --out "$work/e1"
expect_exit 2 "--inject-nonfinite: must not be empty" "$MPX" train "${small[@]}" --inject-nonfinite "" --out "$work/e2"
expect_exit 0 "warning: --inject-nonfinite conv1:forward:50 can have no effect: the run has 8 steps" \
  "$MPX" train "${small[@]}" --inject-nonfinite conv1:forward:50 --out "$work/d1"
expect_exit 0 "warning: --inject-nonfinite conv1:backward:2 can have no effect: conv1 is the first layer" \
  "$MPX" train "${small[@]}" --inject-nonfinite conv1:backward:2 --out "$work/d2"
echo "empty flags refused; drills without effect said before training"
echo "PASS"
