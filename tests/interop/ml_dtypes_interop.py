"""mpx's conversions against independent implementations: numpy's float16 and ml_dtypes' bfloat16,
float8_e4m3fn and float8_e5m2, on 2^22 random bit patterns plus the boundary values.
Exit code 77 (ctest: skipped) when numpy or ml_dtypes is not installed."""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import ml_dtypes
except ImportError as error:
    print(f"skipped: {error}")
    sys.exit(77)

tool = sys.argv[1]
rng = np.random.default_rng(2026)
bits = rng.integers(0, 2**32, size=1 << 22, dtype=np.uint64).astype(np.uint32)
specials = np.array([0.0, -0.0, 65504, 65519.99, 65520, 448, 464, 465, 57344, 61440, 2**-24, 2**-25, 2**-9,
                     2**-10, 2**-16, 2**-17, 1e-45, np.inf, -np.inf, 3.4e38], dtype=np.float32)
values = np.concatenate([bits.view(np.float32), specials])

# (mpx dtype, numpy dtype, overflow mode). ml_dtypes' float8_e4m3fn gives NaN beyond its range, which is
# mpx's non-saturating mode.
cases = [("f16", np.float16, ""), ("bf16", ml_dtypes.bfloat16, ""),
         ("f8_e4m3", ml_dtypes.float8_e4m3fn, "nan"), ("f8_e5m2", ml_dtypes.float8_e5m2, "")]
failures = 0
with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "in.f32")
    values.tofile(src)
    for name, dtype, mode in cases:
        dst = os.path.join(tmp, name)
        subprocess.run([tool, src, dst, name] + ([mode] if mode else []), check=True)
        ours = np.fromfile(dst, dtype=dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            theirs = values.astype(dtype)
        ours_f = ours.astype(np.float32)
        theirs_f = theirs.astype(np.float32)
        both_nan = np.isnan(ours_f) & np.isnan(theirs_f)
        same = both_nan | (ours.view(np.uint16 if ours.itemsize == 2 else np.uint8) ==
                           theirs.view(np.uint16 if theirs.itemsize == 2 else np.uint8))
        bad = np.flatnonzero(~same)
        print(f"{name}: {len(values)} values, {len(bad)} mismatches")
        if len(bad):
            i = bad[0]
            print(f"  first: input {values[i]!r} (0x{values.view(np.uint32)[i]:08x}) mpx {ours_f[i]!r} reference {theirs_f[i]!r}")
        failures += len(bad)

sys.exit(1 if failures else 0)
