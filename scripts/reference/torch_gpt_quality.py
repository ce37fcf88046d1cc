#!/usr/bin/env python3
"""Quality check for mpx's GPT training against PyTorch FP32 on the same weights, data and token order.

Writes one set of initial weights (GPT-2 initialisation, Hugging Face names and Conv1D layouts), trains
mpx from them in each precision asked for with `--record-samples`, then trains the PyTorch model of
torch_gpt.py in FP32 on exactly the windows mpx drew at each step, with mpx's recipe (AdamW betas 0.9/0.999,
eps 1e-8, weight decay on the Linear weights and biases only, cosine schedule with linear warm-up, no
clipping), and evaluates both on every validation window (mpx's runs evaluate 240 unless told). Prints one JSON object. Not part of the product
(torch is not a dependency of mpx).

    python3 scripts/reference/torch_gpt_quality.py build/bin/mpx data/bible-kjv.txt --steps 2000 \\
        --precision 32-true bf16-mixed 16-mixed
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import Gpt  # noqa: E402

VALIDATION_FRACTION = 0.1  # mpx's --text split: the last 10% of the bytes


def hf_weights(model, layers):
    """The model's tensors under Hugging Face GPT-2 names (Linear [out, in] -> Conv1D [in, out])."""
    out = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
           "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias}
    for i in range(layers):
        b, p = model.blocks[i], f"transformer.h.{i}."
        for name, module in (("ln_1", b.ln_1), ("ln_2", b.ln_2)):
            out[p + name + ".weight"], out[p + name + ".bias"] = module.weight, module.bias
        for name, linear in (("attn.c_attn", b.c_attn), ("attn.c_proj", b.attn_proj), ("mlp.c_fc", b.c_fc),
                             ("mlp.c_proj", b.mlp_proj)):
            out[p + name + ".weight"], out[p + name + ".bias"] = linear.weight.t(), linear.bias
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = tensors[name].numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def gpt2_init(model, layers):
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif "ln" in name:
            torch.nn.init.ones_(p)
        elif name.endswith("proj.weight"):  # residual projections, as GPT-2
            torch.nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
        else:
            torch.nn.init.normal_(p, 0.0, 0.02)


def lr_at(step, base, minimum, warmup, total):
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    pct = min(max((step - warmup) / max(1, total - warmup), 0.0), 1.0)
    return minimum + (base - minimum) / 2 * (1 + math.cos(math.pi * pct))


def windows(tokens, block, indices):
    x = torch.stack([tokens[i * block:i * block + block] for i in indices])
    y = torch.stack([tokens[i * block + 1:i * block + block + 1] for i in indices])
    return x, y


@torch.no_grad()
def validation_loss(model, val, block, batch):
    count = (len(val) - 1) // block
    total = 0.0
    for first in range(0, count, batch):
        x, y = windows(val, block, range(first, min(count, first + batch)))
        total += model(x, y).item() * y.numel()
    return total / (count * block)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mpx")
    p.add_argument("corpus")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--work", default="", help="keep the runs here (default: a temporary directory)")
    a = p.parse_args()
    layers, heads, width, block, vocab, batch = 4, 4, 128, 64, 256, 12  # gpt-tiny and its recipe
    lr, min_lr, warmup, decay = 1e-3, 1e-4, min(100, a.steps // 10), 0.1
    if a.threads:
        torch.set_num_threads(a.threads)
    model = Gpt(vocab, block, layers, heads, width)
    gpt2_init(model, layers)
    work = a.work or tempfile.mkdtemp(prefix="mpx-gpt-quality-")
    os.makedirs(work, exist_ok=True)
    init = os.path.join(work, "init.safetensors")
    write_safetensors(init, hf_weights(model, layers))

    data = open(a.corpus, "rb").read()
    tokens = torch.tensor(list(data), dtype=torch.long)
    held_out = int(len(tokens) * VALIDATION_FRACTION)
    train, val = tokens[:len(tokens) - held_out], tokens[len(tokens) - held_out:]
    validation_windows = (len(val) - 1) // block  # every one of them, in mpx as here

    result = {"reference": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "steps": a.steps, "batch": batch, "block": block, "mpx": {}}
    orders = {}
    for precision in a.precision:
        out = os.path.join(work, precision)
        start = time.perf_counter()
        subprocess.run([a.mpx, "train", "--model", "gpt-tiny", "--text", a.corpus, "--resume", init, "--precision",
                        precision, "--max-steps", str(a.steps), "--eval-every", str(a.steps), "--numerics-every", "0",
                        "--test-subset", str(validation_windows), "--record-samples", "--out", out, "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        summary = json.load(open(os.path.join(out, "summary.json")))
        records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        orders[precision] = [r["indices"] for r in records if r.get("type") == "samples"]
        result["mpx"][precision] = {"val_loss": summary["val_loss"], "seconds": seconds,
                                    "tokens_per_second": summary.get("tokens_per_second")}
    order = orders[a.precision[0]]
    if len(order) != a.steps or any(o != order for o in orders.values()):
        sys.exit("the mpx runs did not record the same samples for every step")

    decayed = [p for n, p in model.named_parameters() if n.startswith("blocks.") and ".ln_" not in n]
    others = [p for n, p in model.named_parameters() if not (n.startswith("blocks.") and ".ln_" not in n)]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    start = time.perf_counter()
    for step, indices in enumerate(order):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, min_lr, warmup, a.steps)
        x, y = windows(train, block, indices)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    result["pytorch_fp32"] = {"val_loss": validation_loss(model, val, block, batch),
                              "seconds": time.perf_counter() - start}
    for r in result["mpx"].values():
        r["minus_pytorch_fp32"] = r["val_loss"] - result["pytorch_fp32"]["val_loss"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
