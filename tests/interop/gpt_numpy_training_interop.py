"""Ten training steps of mpx's gpt-tiny (32-true, AdamW, constant learning rate) from weights written here
follow an independent NumPy GPT-2 with its own backward pass and AdamW (float64): the loss of every step
within 1e-4 relative. The text is cut so that the training split is exactly one batch of windows, so that
both sides see the same tokens at every step whatever order mpx shuffles them in. Exit 77 (skipped)
without numpy/safetensors."""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import save_file
except ImportError:
    print("safetensors or numpy not installed")
    sys.exit(77)

LAYERS, HEADS, WIDTH, BLOCK, VOCAB = 4, 4, 128, 64, 256
LR, WEIGHT_DECAY, BETA1, BETA2, EPS = 1e-3, 0.1, 0.9, 0.999, 1e-8
K = np.sqrt(2.0 / np.pi)


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    xhat = (x - mean) * rstd
    return xhat * w + b, (xhat, rstd)


def layer_norm_backward(dy, cache, w):
    xhat, rstd = cache
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    axes = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(axes), dy.sum(axes)


def gelu(x):
    return 0.5 * x * (1 + np.tanh(K * (x + 0.044715 * x ** 3)))


def gelu_grad(x):
    t = np.tanh(K * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * K * (1 + 3 * 0.044715 * x * x)


def loss_and_grads(w, ids, targets):
    """Mean cross-entropy of next-token prediction and the gradient of every tensor (Hugging Face names)."""
    n, t = ids.shape
    c, h, d = WIDTH, HEADS, WIDTH // HEADS
    g = {k: np.zeros_like(v) for k, v in w.items()}
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:t]
    caches = []
    mask = np.tril(np.ones((t, t), dtype=bool))
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        h1, ln1 = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h1 @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (qkv[..., j * c:(j + 1) * c].reshape(n, t, h, d).transpose(0, 2, 1, 3) for j in range(3))
        s = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        att = e / e.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(n, t, c)
        x2 = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h2, ln2 = layer_norm(x2, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        f = h2 @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        x3 = x2 + gelu(f) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        caches.append((h1, ln1, q, k, v, att, y, h2, ln2, f))
        x = x3
    hf, lnf = layer_norm(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"])
    logits = hf @ w["transformer.wte.weight"].T
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    rows = n * t
    loss = -np.take_along_axis(logp, targets[..., None], -1).mean()
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
    dlogits /= rows
    g["transformer.wte.weight"] += dlogits.reshape(rows, -1).T @ hf.reshape(rows, -1)
    dx, g["transformer.ln_f.weight"], g["transformer.ln_f.bias"] = layer_norm_backward(
        dlogits @ w["transformer.wte.weight"], lnf, w["transformer.ln_f.weight"])
    for i in reversed(range(LAYERS)):
        p = f"transformer.h.{i}."
        h1, ln1, q, k, v, att, y, h2, ln2, f = caches[i]
        flat = lambda a: a.reshape(-1, a.shape[-1])
        g[p + "mlp.c_proj.weight"] = flat(gelu(f)).T @ flat(dx)
        g[p + "mlp.c_proj.bias"] = flat(dx).sum(0)
        df = (dx @ w[p + "mlp.c_proj.weight"].T) * gelu_grad(f)
        g[p + "mlp.c_fc.weight"] = flat(h2).T @ flat(df)
        g[p + "mlp.c_fc.bias"] = flat(df).sum(0)
        dh2, g[p + "ln_2.weight"], g[p + "ln_2.bias"] = layer_norm_backward(df @ w[p + "mlp.c_fc.weight"].T, ln2,
                                                                             w[p + "ln_2.weight"])
        dx2 = dx + dh2
        g[p + "attn.c_proj.weight"] = flat(y).T @ flat(dx2)
        g[p + "attn.c_proj.bias"] = flat(dx2).sum(0)
        dy = (dx2 @ w[p + "attn.c_proj.weight"].T).reshape(n, t, h, d).transpose(0, 2, 1, 3)
        datt = dy @ v.transpose(0, 1, 3, 2)
        dv = att.transpose(0, 1, 3, 2) @ dy
        ds = att * (datt - (att * datt).sum(-1, keepdims=True)) / np.sqrt(d)
        dq, dk = ds @ k, ds.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([a.transpose(0, 2, 1, 3).reshape(n, t, c) for a in (dq, dk, dv)], -1)
        g[p + "attn.c_attn.weight"] = flat(h1).T @ flat(dqkv)
        g[p + "attn.c_attn.bias"] = flat(dqkv).sum(0)
        dh1, g[p + "ln_1.weight"], g[p + "ln_1.bias"] = layer_norm_backward(dqkv @ w[p + "attn.c_attn.weight"].T, ln1,
                                                                             w[p + "ln_1.weight"])
        dx = dx2 + dh1
    np.add.at(g["transformer.wte.weight"], ids, dx)
    g["transformer.wpe.weight"][:t] += dx.sum(0)
    return loss, g


def decays(name):  # mpx decays Linear weights and biases, not embeddings or LayerNorm parameters
    return ".attn.c_" in name or ".mlp.c_" in name


def main():
    mpx = sys.argv[1]
    rng = np.random.default_rng(7)
    weights = {"transformer.wte.weight": rng.normal(0, 0.02, (VOCAB, WIDTH)),
               "transformer.wpe.weight": rng.normal(0, 0.01, (BLOCK, WIDTH)),
               "transformer.ln_f.weight": np.ones(WIDTH), "transformer.ln_f.bias": np.zeros(WIDTH)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        for name, shape in (("attn.c_attn", (WIDTH, 3 * WIDTH)), ("attn.c_proj", (WIDTH, WIDTH)),
                            ("mlp.c_fc", (WIDTH, 4 * WIDTH)), ("mlp.c_proj", (4 * WIDTH, WIDTH))):
            weights[p + name + ".weight"] = rng.normal(0, 0.02, shape)
            weights[p + name + ".bias"] = rng.normal(0, 0.01, shape[1])
        for ln in ("ln_1", "ln_2"):
            weights[p + ln + ".weight"] = 1 + rng.normal(0, 0.1, WIDTH)
            weights[p + ln + ".bias"] = rng.normal(0, 0.01, WIDTH)
    weights = {k: v.astype(np.float32).astype(np.float64) for k, v in weights.items()}  # what mpx reads
    # 700 bytes: the training split holds 630 (9 windows of 64 and the token after them), validation 70.
    text = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
            "and darkness was upon the face of the deep. ") * 5
    text = text[:700]
    tokens = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)
    windows = 9
    ids = tokens[:windows * BLOCK].reshape(windows, BLOCK)
    targets = tokens[1:windows * BLOCK + 1].reshape(windows, BLOCK)
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init.safetensors")
        save_file({k: v.astype(np.float32) for k, v in weights.items()}, init)
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            f.write(text)
        run = os.path.join(tmp, "run")
        subprocess.run([mpx, "train", "--model", "gpt-tiny", "--text", corpus, "--resume", init, "--precision", "32-true",
                        "--batch-size", str(windows), "--max-steps", "10", "--schedule", "constant", "--lr", str(LR),
                        "--weight-decay", str(WEIGHT_DECAY), "--log-every", "1", "--eval-every", "0",
                        "--numerics-every", "0", "--out", run, "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        mpx_losses = [r["loss"] for r in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if r.get("type") == "step"]
    m1 = {k: np.zeros_like(v) for k, v in weights.items()}
    m2 = {k: np.zeros_like(v) for k, v in weights.items()}
    worst = 0.0
    for step in range(1, 11):
        loss, grads = loss_and_grads(weights, ids, targets)
        error = abs(mpx_losses[step - 1] - loss) / loss
        worst = max(worst, error)
        print(f"step {step}: NumPy {loss:.7f}  mpx {mpx_losses[step - 1]:.7f}  relative {error:.1e}")
        for k in weights:
            m1[k] = BETA1 * m1[k] + (1 - BETA1) * grads[k]
            m2[k] = BETA2 * m2[k] + (1 - BETA2) * grads[k] ** 2
            update = (LR / (1 - BETA1 ** step)) * m1[k] / (np.sqrt(m2[k]) / np.sqrt(1 - BETA2 ** step) + EPS)
            weights[k] = weights[k] * (1 - (LR * WEIGHT_DECAY if decays(k) else 0)) - update
    if len(mpx_losses) != 10 or worst > 1e-4:
        print(f"mpx's losses leave NumPy's by {worst:.1e} (at most 1e-4)")
        sys.exit(1)
    print(f"10 steps: mpx follows the NumPy reference within {worst:.1e}")


if __name__ == "__main__":
    main()
