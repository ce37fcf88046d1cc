"""mpx's model file means what PyTorch reads into it: an independent NumPy forward pass of the CNN in
PyTorch's NCHW convention (conv with OIHW weights, batch norm from running statistics, ReLU, 2x2 max
pooling, flatten in (C, H, W) order, linear as x @ W.T + b), in float64, loads model.safetensors and
reproduces `mpx predict`'s test-set predictions (>= 99.9% agreement, logits within 1e-3 of each row's
scale). A file PyTorch would save (no mpx metadata) and a file in the old NHWC column order both load into
mpx with the same predictions (the old one with a notice); an unknown layout is refused. Exit 77 (skipped)
without numpy/safetensors or the data set."""
import gzip
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
except ImportError:
    print("safetensors or numpy not installed")
    sys.exit(77)
from mpx_run import need_data, short_run

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)


def conv3x3(x, weight, bias):
    """NCHW input, OIHW weight, stride 1, padding 1, as torch.nn.Conv2d(c_in, c_out, 3, padding=1)."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, weight.shape[0], h, w))
    for kh in range(3):
        for kw in range(3):
            window = padded[:, :, kh:kh + h, kw:kw + w]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, kh, kw], optimize=True)
    return out + bias[None, :, None, None]


def batch_norm_eval(x, p, name, eps=1e-5):
    mean, var = p[name + ".running_mean"], p[name + ".running_var"]
    scale = p[name + ".weight"] / np.sqrt(var + eps)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + p[name + ".bias"][None, :, None, None]


def max_pool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def cnn_logits(p, images):
    x = images[:, None, :, :]  # NCHW
    x = max_pool2(np.maximum(batch_norm_eval(conv3x3(x, p["conv1.weight"], p["conv1.bias"]), p, "bn1"), 0))
    x = max_pool2(np.maximum(batch_norm_eval(conv3x3(x, p["conv2.weight"], p["conv2.bias"]), p, "bn2"), 0))
    x = x.reshape(x.shape[0], -1)  # nn.Flatten of NCHW: (C, H, W) order
    x = np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0)  # dropout is the identity in eval
    return x @ p["fc2.weight"].T + p["fc2.bias"]


def mpx_predict(mpx, model_file, out, expect_ok=True):
    r = subprocess.run([mpx, "predict", model_file, "--out", out], capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"mpx predict {model_file} exited {r.returncode}: {r.stderr}")
    return r


def main():
    need_data()
    mpx = sys.argv[1]
    with tempfile.TemporaryDirectory() as work:
        run = os.path.join(work, "run")
        short_run(mpx, run, 6000, 1000)
        model_file = os.path.join(run, "model.safetensors")
        with safe_open(model_file, framework="np") as f:
            metadata = f.metadata()
        assert metadata.get("mpx.layout") == "pytorch", metadata
        params = {k: v.astype(np.float64) for k, v in load_file(model_file).items()}

        # Inputs normalised as mpx trains: the training set's own mean and std, computed here independently.
        train = read_idx_images(os.path.join(DATA, "train-images-idx3-ubyte.gz")).astype(np.float64) / 255.0
        mean, std = train.mean(), train.std()
        assert abs(mean - float(metadata["mpx.input_mean"])) < 1e-6, (mean, metadata["mpx.input_mean"])
        assert abs(std - float(metadata["mpx.input_std"])) < 1e-6, (std, metadata["mpx.input_std"])
        test = (read_idx_images(os.path.join(DATA, "t10k-images-idx3-ubyte.gz")).astype(np.float64) / 255.0 - mean) / std
        labels = read_idx_labels(os.path.join(DATA, "t10k-labels-idx1-ubyte.gz"))
        reference = np.concatenate([cnn_logits(params, test[i:i + 500]) for i in range(0, len(test), 500)])

        ours = os.path.join(work, "predictions.safetensors")
        mpx_predict(mpx, model_file, ours)
        predicted = load_file(ours)
        logits, classes = predicted["logits"].astype(np.float64), predicted["predictions"]
        agreement = np.mean(classes == reference.argmax(axis=1))
        row_error = np.abs(logits - reference).max(axis=1) / np.abs(reference).max(axis=1)
        accuracy = np.mean(reference.argmax(axis=1) == labels)
        print(f"numpy NCHW reference: accuracy {accuracy:.4f}, agreement {agreement:.5f}, "
              f"max logit error {row_error.max():.2e} of the row's scale")
        assert accuracy > 0.75, f"the reference classifies at {accuracy:.3f}: the model file is misread"
        assert agreement >= 0.999, agreement
        assert row_error.max() <= 1e-3, row_error.max()

        # A file PyTorch saves (safetensors.torch.save_file of a state dict): the tensors, no mpx metadata.
        torch_style = os.path.join(work, "torch.safetensors")
        save_file({k: v.astype(np.float32) for k, v in params.items()}, torch_style, metadata={"format": "pt"})
        mpx_predict(mpx, torch_style, os.path.join(work, "torch-pred.safetensors"))
        assert np.array_equal(load_file(os.path.join(work, "torch-pred.safetensors"))["predictions"], classes)

        # A file of an earlier mpx: fc1.weight's columns in NHWC (H, W, C) order, no "mpx.layout".
        old = {k: v.astype(np.float32) for k, v in params.items()}
        old["fc1.weight"] = old["fc1.weight"].reshape(256, 64, 7, 7).transpose(0, 2, 3, 1).reshape(256, 3136).copy()
        old_file = os.path.join(work, "old.safetensors")
        save_file(old, old_file, metadata={"format": "pt", "mpx.model": "cnn", "mpx.version": "0.1.0"})
        r = mpx_predict(mpx, old_file, os.path.join(work, "old-pred.safetensors"))
        assert "NHWC" in r.stderr, r.stderr
        assert np.array_equal(load_file(os.path.join(work, "old-pred.safetensors"))["predictions"], classes)

        # A layout this mpx does not know is refused, never guessed.
        future = os.path.join(work, "future.safetensors")
        save_file(old, future, metadata={"mpx.model": "cnn", "mpx.layout": "something-newer"})
        r = mpx_predict(mpx, future, os.path.join(work, "future-pred.safetensors"), expect_ok=False)
        assert r.returncode == 2 and "layout" in r.stderr, (r.returncode, r.stderr)

        # --resume from the PyTorch-style file starts from its weights: one step at a negligible learning rate
        # keeps its accuracy (a fresh model after one step is near chance).
        resumed = os.path.join(work, "resumed")
        r = subprocess.run([mpx, "train", "--resume", torch_style, "--max-steps", "1", "--lr", "1e-7", "--out", resumed,
                            "--no-progress", "--precision", "32-true"], check=True, capture_output=True, text=True)
        assert "starting from the weights in" in r.stdout, r.stdout
        with open(os.path.join(resumed, "summary.json")) as f:
            resumed_accuracy = json.load(f)["test_accuracy"]
        assert resumed_accuracy > accuracy - 0.03, (resumed_accuracy, accuracy)
    print("ok")


main()
