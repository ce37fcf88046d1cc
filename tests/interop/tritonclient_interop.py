"""Triton's own Python HTTP client (PyPI tritonclient[http]) talks to `mpx serve` unchanged: health,
server and model metadata, readiness, and inference with binary tensor data (the client's default) and
with JSON data, UINT8 and FP32 inputs. The answers equal `mpx predict`'s logits for the same test images
under the precision of the variant that answered. Exit 77 (skipped) without tritonclient/numpy/safetensors
or the data set."""
import gzip
import os
import re
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import tritonclient.http as triton
    from safetensors.numpy import load_file
except ImportError:
    print("tritonclient, numpy or safetensors not installed")
    sys.exit(77)
from mpx_run import need_data, short_run
need_data()

mpx = sys.argv[1]
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28, 1)[:48]

with tempfile.TemporaryDirectory() as work:
    run = os.path.join(work, "run")
    short_run(mpx, run, 2000, 200, "--model", "cnn")
    offline = {}
    for variant, preset in (("fp32", "32-true"), ("bf16", "bf16-true")):
        out = os.path.join(work, f"{variant}.safetensors")
        subprocess.run([mpx, "predict", run, "--precision", preset, "--batch-size", "1", "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        offline[variant] = load_file(out)["logits"]
    server = subprocess.Popen([mpx, "serve", run, "--port", "0", "--canary-precision", "bf16", "--canary-share", "0.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = re.search(r"127\.0\.0\.1:(\d+)/", server.stdout.readline()).group(1)
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cnn")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("cnn")
        assert meta["inputs"][0]["name"] == "images" and [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
        seen = set()
        for i in range(len(images)):
            x = triton.InferInput("images", [1, 28, 28, 1], "UINT8")
            x.set_data_from_numpy(images[i:i + 1])  # binary tensor data, as the client sends by default
            result = client.infer("cnn", [x], request_id=f"img-{i}")
            variant = result.get_response()["parameters"]["variant"]
            seen.add(variant)
            logits = result.as_numpy("logits")
            assert logits.dtype == np.float32 and logits.shape == (1, 10)
            assert np.array_equal(logits[0], offline[variant][i]), (i, variant, logits[0], offline[variant][i])
            probs = result.as_numpy("probabilities")
            assert abs(float(probs.sum()) - 1) < 1e-5 and probs.argmax() == logits.argmax()
        assert seen == {"fp32", "bf16"}, seen  # a 50% canary over 48 ids answers with both
        # JSON data, FP32 intensities, a batch of 8, only the logits asked for, as JSON.
        x = triton.InferInput("images", [8, 28, 28, 1], "FP32")
        x.set_data_from_numpy(images[:8].astype(np.float32) / np.float32(255), binary_data=False)
        wanted = triton.InferRequestedOutput("logits", binary_data=False)
        result = client.infer("cnn", [x], outputs=[wanted], request_id="batch-of-8")
        variant = result.get_response()["parameters"]["variant"]
        logits = result.as_numpy("logits")
        assert result.as_numpy("probabilities") is None
        assert np.array_equal(logits.argmax(1), offline[variant][:8].argmax(1))
        assert np.allclose(logits, offline[variant][:8], rtol=1e-4, atol=1e-4 if variant == "fp32" else 2e-2)
        try:
            client.infer("nope", [x])
            raise AssertionError("an unknown model was answered")
        except triton.InferenceServerException as e:
            assert "unknown model" in str(e), e
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"tritonclient: {len(images)} binary requests equal mpx predict's logits (variants {sorted(seen)}), "
          "a JSON FP32 batch of 8 matches, errors come back as InferenceServerException")
