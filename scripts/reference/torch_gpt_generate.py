#!/usr/bin/env python3
"""PyTorch eager CPU generation with a KV cache for an mpx GPT model file (Hugging Face GPT-2 names and
Conv1D layouts): the reference `scripts/bench-serve-gpt.sh` measures beside `mpx serve`. Greedy decoding of
a byte-level prompt, batch 1, timed per generated token after warm-up, FP32 or BF16 autocast. With
--expect TEXT (what `mpx generate --temperature 0` printed after the prompt) it also reports whether the
tokens are the same. Not part of the product (torch is not a dependency of mpx). Prints one JSON object.

    python3 scripts/reference/torch_gpt_generate.py runs/tiny/model.safetensors --prompt "In the beginning" \\
        --tokens 48 [--bf16] [--threads 2] [--expect TEXT]
"""
import argparse
import json
import struct
import time

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        raw = torch.frombuffer(bytearray(data[begin:end]), dtype=DTYPES[t["dtype"]])
        tensors[name] = raw.reshape(t["shape"]).float()
    return tensors, meta


class CachedGpt:
    """GPT-2 forward one position at a time, keys and values of earlier positions kept per layer."""

    def __init__(self, w, heads):
        self.w, self.heads = w, heads
        self.layers = sum(1 for k in w if k.endswith(".ln_1.weight"))
        self.width = w["transformer.wte.weight"].shape[1]

    def reset(self):
        self.keys = [[] for _ in range(self.layers)]
        self.values = [[] for _ in range(self.layers)]

    def step(self, token, position):
        w, c, h = self.w, self.width, self.heads
        x = w["transformer.wte.weight"][token] + w["transformer.wpe.weight"][position]
        for i in range(self.layers):
            p = f"transformer.h.{i}."
            a = F.layer_norm(x, (c,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
            q, k, v = (a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(c)
            self.keys[i].append(k.view(h, c // h))
            self.values[i].append(v.view(h, c // h))
            keys, values = torch.stack(self.keys[i], 1), torch.stack(self.values[i], 1)  # [h, t, d]
            att = F.scaled_dot_product_attention(q.view(h, 1, c // h), keys, values).reshape(c)
            x = x + att @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            m = F.layer_norm(x, (c,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            m = F.gelu(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate="tanh")
            x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = F.layer_norm(x, (c,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"])
        return x @ w["transformer.wte.weight"].t()


def generate(model, prompt, tokens, bf16):
    model.reset()
    out, times = [], []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i, t in enumerate(prompt):
            logits = model.step(t, i)
        for j in range(tokens):
            start = time.perf_counter()
            nxt = int(logits.float().argmax())
            out.append(nxt)
            if j + 1 < tokens:
                logits = model.step(nxt, len(prompt) + j)
            times.append(time.perf_counter() - start)
    return out, times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--prompt", default="In the beginning")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="BF16 autocast")
    p.add_argument("--expect", help="what mpx generate --temperature 0 printed after the prompt")
    p.add_argument("--repeats", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    w, meta = read_safetensors(a.model)
    sizes = json.loads(meta.get("mpx.gpt", "{}"))
    heads = int(sizes.get("n_head", w["transformer.wte.weight"].shape[1] // 64))
    model = CachedGpt(w, heads)
    prompt = list(a.prompt.encode())
    tokens, _ = generate(model, prompt, a.tokens, a.bf16)
    result = {"torch": torch.__version__, "threads": a.threads, "precision": "bf16-autocast" if a.bf16 else "fp32",
              "prompt_tokens": len(prompt), "new_tokens": a.tokens}
    if a.expect is not None:
        text = bytes(tokens).decode("utf-8", errors="replace")
        result["same_tokens_as_mpx"] = text.rstrip("\n") == a.expect.rstrip("\n")
    for _ in range(5):
        generate(model, prompt, a.tokens, a.bf16)
    per_request, per_token = [], []
    for _ in range(a.repeats):
        start = time.perf_counter()
        _, times = generate(model, prompt, a.tokens, a.bf16)
        per_request.append(time.perf_counter() - start)
        per_token.extend(times)
    per_request.sort()
    per_token.sort()
    result.update({
        "generations_per_second": round(len(per_request) / sum(per_request), 1),
        "tokens_per_second": round(a.tokens * len(per_request) / sum(per_request), 1),
        "ms_per_token_p50": round(1e3 * per_token[len(per_token) // 2], 3),
        "ms_per_token_p99": round(1e3 * per_token[int(0.99 * len(per_token))], 3),
        "request_ms_p50": round(1e3 * per_request[len(per_request) // 2], 3),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
