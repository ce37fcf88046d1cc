// What this CPU can do, read once from CPUID (and XGETBV, so that features the OS does not save state
// for count as absent). Used to choose SIMD paths at run time and by `mpx info`.
#pragma once

#include <string>
#include <vector>

namespace mpx {

struct CpuFeatures {
  std::string vendor;
  std::string brand;
  bool x86_64 = false;
  bool sse4_2 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;

  // Names of the features present, in a fixed order ("f16c", "avx512_bf16", ...).
  std::vector<std::string> names() const;
};

const CpuFeatures& cpu_features();

}  // namespace mpx
