# Shared by scripts/bench-serve.sh (the CNN) and scripts/bench-serve-gpt.sh: start `mpx serve` on a free
# port and wait for its address, stop it, and summarise one hey run (its per-request CSV) with the server's
# /metrics as one JSON line. Source it; it expects MPX and work (a scratch directory) to be set.

server="" port=""

start_serve() {  # start_serve RUN_DIR [mpx serve options...]; sets server (pid) and port
  "$MPX" serve "$@" --port 0 > "$work/serve.out" 2>&1 &
  server=$!
  port=""
  for _ in $(seq 200); do
    port=$(sed -n 's|.*http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$work/serve.out" | head -1)
    [ -n "$port" ] && return 0
    kill -0 "$server" 2>/dev/null || break
    sleep 0.05
  done
  echo "serve-bench: mpx serve did not start:" >&2
  cat "$work/serve.out" >&2
  exit 1
}

stop_serve() {  # saves /metrics to $work/metrics.txt, then SIGTERM and wait
  curl -s "http://127.0.0.1:$port/metrics" > "$work/metrics.txt"
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

# summarise CONFIG ROUND CPU [key=value ...]: the hey CSV in $work/hey.csv and $work/metrics.txt as one JSON
# line (requests/s, P50/P99 ms, and server-side figures from /metrics); extra key=value pairs are added
# (new_tokens=N: each request generated N tokens, so tokens/s is requests/s times N).
summarise() {
  python3 - "$work/hey.csv" "$work/metrics.txt" "$@" << 'PY'
import csv, json, re, sys
hey_csv, metrics, config, round_, cpu, *extra = sys.argv[1:]
rows = list(csv.DictReader(open(hey_csv)))
times = sorted(float(r["response-time"]) for r in rows)
ok = sum(1 for r in rows if r["status-code"] == "200")
span = max(float(r["offset"]) + float(r["response-time"]) for r in rows) - min(float(r["offset"]) for r in rows)
text = open(metrics).read()
def total(name):
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))
def mean(name, scale=1.0, digits=3):
    return round(scale * total(name + "_sum") / max(1, total(name + "_count")), digits)
out = {"config": config, "round": int(round_), "cpu": cpu, "requests": len(rows), "ok": ok,
       "requests_per_second": round(len(rows) / span, 1),
       "p50_ms": round(1e3 * times[len(times) // 2], 3), "p99_ms": round(1e3 * times[int(0.99 * len(times))], 3)}
if total("mpx_serve_batch_size_count"):
    out["mean_batch"] = mean("mpx_serve_batch_size", digits=2)
out["server_compute_ms_per_request"] = mean("mpx_serve_compute_duration_seconds", 1e3)
if total("mpx_serve_time_per_output_token_seconds_count"):  # warm-up requests included, as in the means above
    out["server_ms_per_token"] = mean("mpx_serve_time_per_output_token_seconds", 1e3)
out["shadow_compared"] = total("mpx_serve_shadow_comparisons_total")
if out["shadow_compared"]:
    out["shadow_agreement"] = round(total("mpx_serve_shadow_agreements_total") / out["shadow_compared"], 4)
for kv in extra:
    k, v = kv.split("=", 1)
    out[k] = v
if "new_tokens" in out:  # every request generates exactly this many (finish_reason "length")
    out["tokens_per_second"] = round(out["requests_per_second"] * int(out["new_tokens"]), 1)
print(json.dumps(out))
PY
}
