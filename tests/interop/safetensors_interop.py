"""The reference safetensors implementation (the `safetensors` Python package) and mpx read each other's
files: mpx's trained model and its FP16 conversion load in Python with the right names, dtypes and
shapes; a file Python wrote is read by `mpx inspect` with the right values. Exit 77 (skipped) without
safetensors/numpy or the data set."""
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
from mpx_run import need_data, short_run
need_data()

mpx = sys.argv[1]
with tempfile.TemporaryDirectory() as work:
    run = os.path.join(work, "run")
    short_run(mpx, run, 640, 128)
    model = load_file(os.path.join(run, "model.safetensors"))
    assert model["conv1.weight"].shape == (32, 1, 3, 3) and model["conv1.weight"].dtype == np.float32
    assert model["fc1.weight"].shape == (256, 3136), model["fc1.weight"].shape
    assert model["bn2.running_var"].shape == (64,)
    half = os.path.join(work, "model-f16.safetensors")
    subprocess.run([mpx, "convert", os.path.join(run, "model.safetensors"), half, "--to", "fp16"], check=True,
                   stdout=subprocess.DEVNULL)
    converted = load_file(half)
    assert converted["fc1.weight"].dtype == np.float16
    assert converted["bn1.weight"].dtype == np.float32  # normalisation kept
    assert np.array_equal(converted["fc1.weight"], model["fc1.weight"].astype(np.float16))  # same rounding

    theirs = os.path.join(work, "python.safetensors")
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, "b": np.array([1, -7], dtype=np.int64),
               "c": np.array([0.5, 65504.0], dtype=np.float16), "d": np.array([True, False]),
               "e": np.array([1e300], dtype=np.float64), "f": np.array([255], dtype=np.uint8)}
    save_file(tensors, theirs, metadata={"origin": "python"})
    report = json.loads(subprocess.run([mpx, "inspect", theirs, "--json"], check=True, capture_output=True,
                                       text=True).stdout)
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name["a"]["dtype"] == "f32" and by_name["a"]["shape"] == [2, 3], by_name["a"]
    assert by_name["a"]["min"] == -2.5 and by_name["a"]["max"] == 2.5
    assert by_name["b"]["min"] == -7 and by_name["c"]["max"] == 65504.0
    assert by_name["d"]["dtype"] == "bool" and by_name["e"]["max"] == 1e300 and by_name["f"]["max"] == 255
    assert report["metadata"]["origin"] == "python" and report["checksum"] == "not recorded"
    print("safetensors: python and mpx read each other's files")
