"""Shared by the interop scripts: skip (exit 77) when the data set is absent, and train a short run."""
import os
import subprocess
import sys


def need_data():
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        print("Fashion-MNIST not installed")
        sys.exit(77)


def short_run(mpx, out, train_subset, test_subset, *extra):
    subprocess.run([mpx, "train", "--epochs", "1", "--train-subset", str(train_subset), "--test-subset",
                    str(test_subset), "--out", out, "--no-progress", *extra], check=True, stdout=subprocess.DEVNULL)
