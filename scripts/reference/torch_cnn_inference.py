"""PyTorch eager CPU inference of mpx's Fashion-MNIST CNN, the reference `scripts/bench-serve.sh` measures
beside `mpx serve`: the same architecture (conv-BN-ReLU-pool twice, fc-ReLU-fc, dropout off in eval) loaded
from mpx's model.safetensors (PyTorch names and layouts), the same input normalisation, timed at batch 1
(per-call latency, P50/P99) and batch 64 (images/s) under torch.inference_mode. Also checks that its logits
match `mpx predict --out` for the first images when that file is given.
Usage: torch_cnn_inference.py MODEL.safetensors [PREDICT_OUT.safetensors] [--threads N] [--bf16]"""
import argparse
import gzip
import json
import time

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("predictions", nargs="?")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--bf16", action="store_true", help="BF16 autocast")
a = p.parse_args()
torch.set_num_threads(a.threads)

net = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Dropout(0.25), nn.Linear(256, 10))
names = {"0": "conv1", "1": "bn1", "4": "conv2", "5": "bn2", "9": "fc1", "12": "fc2"}
state = load_file(a.model)
from safetensors import safe_open
with safe_open(a.model, "pt") as f:
    meta = f.metadata() or {}
ours = {k: state[names[k.split(".")[0]] + "." + k.split(".", 1)[1]] for k in net.state_dict()
        if not k.endswith("num_batches_tracked")}
net.load_state_dict(ours, strict=False)
net.eval()
mean, std = float(meta.get("mpx.input_mean", 0.2860)), float(meta.get("mpx.input_std", 0.3530))
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    pixels = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:1024]
x = (torch.from_numpy(pixels.astype(np.float32)) / 255.0 - mean) / std


def forward(batch):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        return net(batch).float()


result = {"torch": torch.__version__, "threads": a.threads, "precision": "bf16-autocast" if a.bf16 else "fp32"}
if a.predictions:
    theirs = load_file(a.predictions)["logits"][:1024]
    result["max_abs_logit_difference_vs_mpx"] = float((forward(x) - theirs).abs().max())
for _ in range(200):
    forward(x[:1])
latencies = []
for i in range(3000):
    t = time.perf_counter()
    forward(x[i % 1024:i % 1024 + 1])
    latencies.append(time.perf_counter() - t)
latencies.sort()
result["batch1_p50_ms"] = 1e3 * latencies[len(latencies) // 2]
result["batch1_p99_ms"] = 1e3 * latencies[int(0.99 * len(latencies))]
result["batch1_images_per_second"] = len(latencies) / sum(latencies)
for _ in range(10):
    forward(x[:64])
t = time.perf_counter()
for i in range(100):
    forward(x[(i * 64) % 960:(i * 64) % 960 + 64])
result["batch64_images_per_second"] = 100 * 64 / (time.perf_counter() - t)
print(json.dumps(result))
