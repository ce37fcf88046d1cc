#!/usr/bin/env python3
"""Rewrites a CUDA source file (src/backend/cuda/*.cu) into C++ for the emulated build: each launch
`kernel<<<grid, block, shared, stream>>>(args);` becomes emulated::launch(config, kernel, args) (arguments
taken by value at the launch), dynamic shared memory a pointer into the emulated block's, and includes
relative to the source file absolute paths. include/cuda_runtime.h here supplies the rest."""
import os
import re
import sys

source, target = sys.argv[1], sys.argv[2]
folder = os.path.dirname(os.path.abspath(source))
text = open(source, encoding="utf-8").read()
text = re.sub(r'#include "(\.\./[^"]+)"', lambda m: '#include "%s"' % os.path.normpath(os.path.join(folder, m.group(1))), text)
text = re.sub(r"extern __shared__ (\w+) (\w+)\[\];",
              r"\1* \2 = reinterpret_cast<\1*>(emulated::block->dynamic_shared.data());", text)


def launch(m):
    kernel, config, args = m.group(1), m.group(2), m.group(3).strip()
    call = "emulated::launch(emulated::Config(%s), [](auto... a) { %s(a...); }" % (config, kernel)
    return call + (", %s);" % args if args else ");")


text = re.sub(r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", launch, text, flags=re.S)
if "<<<" in text:
    sys.exit("transform_kernels.py: a launch in %s was not rewritten" % source)
with open(target, "w", encoding="utf-8") as out:
    out.write("// Generated from %s by tests/cuda_emulated/transform_kernels.py: do not edit.\n" % source)
    out.write(text)
