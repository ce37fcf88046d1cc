#!/usr/bin/env python3
"""Rewrites a CUDA kernel file (src/backend/cuda/*.cu) into C++ that launch.cuh here runs on host threads:
`kernel<<<grid, block, shared, stream>>>(args);` becomes an emulated::launch call, dynamic shared memory
a pointer into the emulated block's, and cub's header is dropped (launch.cuh has its stand-in)."""
import re
import sys

source, target = sys.argv[1], sys.argv[2]
text = open(source, encoding="utf-8").read()
text = text.replace("#include <cub/device/device_radix_sort.cuh>", "")
text = re.sub(r"extern __shared__ float (\w+)\[\];",
              r"float* \1 = reinterpret_cast<float*>(emulated::block->dynamic_shared.data());", text)
text = re.sub(r"(\w+)<<<(.*?)>>>\((.*?)\);",
              lambda m: "emulated::launch(emulated::Config(%s), [&] { %s(%s); });" % (m.group(2), m.group(1), m.group(3)),
              text, flags=re.S)
if "<<<" in text:
    sys.exit("transform_kernels.py: a launch in %s was not rewritten" % source)
with open(target, "w", encoding="utf-8") as out:
    out.write("// Generated from %s by tests/cuda_emulated/transform_kernels.py: do not edit.\n" % source)
    out.write(text)
