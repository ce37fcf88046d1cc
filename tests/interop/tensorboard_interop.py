"""TensorBoard's own reader (the `tensorboard` Python package) loads the scalars and exponent histograms of
a short `mpx train` run. Exit 77 (skipped) without tensorboard or the data set."""
import os
import sys
import tempfile

try:
    from tensorboard.backend.event_processing import event_accumulator
except ImportError:
    print("tensorboard not installed")
    sys.exit(77)
from mpx_run import need_data, short_run
need_data()

mpx = sys.argv[1]
with tempfile.TemporaryDirectory() as work:
    run = os.path.join(work, "run")
    short_run(mpx, run, 1280, 256, "--numerics-every", "5")
    ea = event_accumulator.EventAccumulator(os.path.join(run, "tensorboard"),
                                            size_guidance={"histograms": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    losses = ea.Scalars("train/loss")
    assert losses and all(e.value > 0 for e in losses), losses
    assert ea.Scalars("test/accuracy")[-1].value > 0.1
    histogram = ea.Histograms("log2_abs/conv2.output")
    assert len(histogram) == 2, histogram  # steps 5 and 10
    h = histogram[0].histogram_value
    assert h.num == 128 * 14 * 14 * 64, h.num  # every element of the batch's conv2 output
    assert sum(h.bucket) == h.num
    print(f"tensorboard read {len(tags['scalars'])} scalar and {len(tags['histograms'])} histogram tags")
