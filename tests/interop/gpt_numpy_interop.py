"""mpx's GPT model file means what Hugging Face GPT-2 code reads into it: an independent NumPy forward
pass of GPT-2 (float64; token + position embeddings, pre-LayerNorm blocks with causal softmax attention and
a tanh-GELU MLP, Conv1D weights as [in, out] so that y = x @ W + b, final LayerNorm, logits through the tied
token table) reads the model.safetensors of a short `mpx train --model gpt-tiny` run and reproduces the
logits `mpx generate --logits-out` computes for a 64-byte prompt (mpx's KV-cache decoding path) to a relative
error <= 1e-4. The same tensors saved under GPT2Model's names without mpx's metadata (a Hugging Face file)
give mpx the same logits. Exit 77 (skipped) without numpy/safetensors."""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file, save_file
except ImportError:
    print("safetensors or numpy not installed")
    sys.exit(77)


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gpt2_logits(w, ids, n_head):
    """w: tensors by Hugging Face name (float64); ids: [T] token ids -> logits [T, vocabulary]."""
    t = len(ids)
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:t]
    layer = 0
    while f"transformer.h.{layer}.ln_1.weight" in w:
        p = f"transformer.h.{layer}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        c = x.shape[1]
        q, k, v = (qkv[:, i * c:(i + 1) * c].reshape(t, n_head, c // n_head).transpose(1, 0, 2) for i in range(3))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(c // n_head)
        scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = scores / scores.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(t, c)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        layer += 1
    x = layer_norm(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"])
    return x @ w["transformer.wte.weight"].T


def mpx_prompt_logits(mpx, model, prompt, out, *extra):
    subprocess.run([mpx, "generate", model, "--prompt", prompt, "--max-new-tokens", "0", "--precision", "fp32",
                    "--logits-out", out, *extra], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return load_file(out)["logits"].astype(np.float64)


def main():
    mpx = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        words = ["the", "and", "of", "light", "said", "unto", "earth", "God", "waters", "day", "night", "good"]
        rng = np.random.default_rng(1)
        text = " ".join(words[i] for i in rng.integers(0, len(words), 6000)) + ".\n"
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            f.write(text)
        run = os.path.join(tmp, "run")
        subprocess.run([mpx, "train", "--model", "gpt-tiny", "--text", corpus, "--precision", "32-true", "--max-steps",
                        "30", "--eval-every", "0", "--out", run, "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        model = os.path.join(run, "model.safetensors")
        tensors = load_file(model)
        weights = {k: v.astype(np.float64) for k, v in tensors.items()}
        config = json.loads(subprocess.run([sys.executable, "-c", "import sys,json;from safetensors import safe_open;"
                                            "f=safe_open(sys.argv[1],'np');print(f.metadata()['mpx.gpt'])", model],
                                           check=True, capture_output=True, text=True).stdout)
        assert weights["transformer.h.0.attn.c_attn.weight"].shape == (128, 384), "Conv1D layout is [in, out]"
        assert "lm_head.weight" not in weights, "the head is tied to the token table"
        prompt = text[100:164]
        ids = np.frombuffer(prompt.encode(), dtype=np.uint8).astype(np.int64)
        reference = gpt2_logits(weights, ids, config["n_head"])
        got = mpx_prompt_logits(mpx, run, prompt, os.path.join(tmp, "logits.safetensors"))
        error = np.abs(got - reference).max() / np.abs(reference).max()
        print(f"mpx vs NumPy GPT-2 forward, {len(ids)} positions: max relative error {error:.2e}")
        if error > 1e-4:
            sys.exit(1)
        # A Hugging Face-style file: GPT2Model's names (no "transformer."), no metadata at all (so the head
        # count, 32-wide heads here rather than GPT-2's 64, is given).
        hf = os.path.join(tmp, "hf.safetensors")
        save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, hf)
        again = mpx_prompt_logits(mpx, hf, prompt, os.path.join(tmp, "logits_hf.safetensors"), "--n-head",
                                  str(config["n_head"]))
        if not np.array_equal(again, got):
            print("the Hugging Face-named file gave other logits")
            sys.exit(1)
        print("a Hugging Face-named file without metadata gives the same logits")


if __name__ == "__main__":
    main()
