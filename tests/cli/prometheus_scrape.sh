#!/usr/bin/env bash
# A real Prometheus server on loopback scrapes a short `mpx train --metrics-port` run; its query API must
# then return the run's step counter and the exporter's target must have been up. Exit 77 (skipped)
# without the prometheus server, python3 or the data set.
set -euo pipefail
MPX=$1
command -v prometheus >/dev/null && command -v python3 >/dev/null || { echo "prometheus or python3 not installed"; exit 77; }
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed"; exit 77; }
work=$(mktemp -d)
# Both ports from one process, with both sockets open at once: two separate picks can return the same port.
read -r mpx_port prom_port < <(python3 -c 'import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
cat > "$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: mpx
    static_configs: [{targets: ['127.0.0.1:${mpx_port}']}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:${prom_port}" > "$work/prometheus.log" 2>&1 &
prom=$!
trap 'kill $prom 2>/dev/null; wait $prom 2>/dev/null; rm -rf "$work"' EXIT
"$MPX" train --epochs 1 --train-subset 2560 --test-subset 256 --batch-size 64 --numerics-every 5 \
  --metrics-port "$mpx_port" --metrics-linger 5 --out "$work/run" --no-progress
python3 - "$prom_port" <<'PY'
import json, sys, time, urllib.parse, urllib.request
port = sys.argv[1]
def query(q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    return [float(r["value"][1]) for r in result]
steps = query("max_over_time(mpx_train_steps_total[5m])")
up = query('max_over_time(up{job="mpx"}[5m])')
headroom = query("count(max_over_time(mpx_fp16_headroom_binades[5m]))")
print("steps", steps, "up", up, "headroom series", headroom)
assert steps and steps[0] == 40, steps
assert up and up[0] == 1, up
assert headroom and headroom[0] > 0, headroom
PY
echo "prometheus scraped the run"
