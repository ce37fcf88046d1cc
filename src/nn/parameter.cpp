#include <algorithm>
#include <cstring>

#include "mpx/nn/layer.h"
#include "mpx/numeric/convert.h"

namespace mpx::nn {

const char* pass_name(Pass pass) { return pass == Pass::forward ? "forward" : "backward"; }

DType activation_storage(const amp::PrecisionPolicy& policy) {
  return policy.activations == DType::bf16 ? DType::bf16 : DType::f32;
}

DType backend_dtype_for(DType compute) { return compute == DType::bf16 ? DType::bf16 : DType::f32; }

void round_for_backend(const float* src, void* dst, DType compute, std::size_t count) {
  switch (compute) {
    case DType::bf16: numeric::convert(src, DType::f32, dst, DType::bf16, count); return;
    case DType::f16: {
      // No FP16 arithmetic in oneDNN 2.6 on the CPU: round to FP16, then widen back to FP32 exactly,
      // through an L1-sized block so that nothing is allocated per call.
      constexpr std::size_t kBlock = 4096;
      auto* out = static_cast<float*>(dst);
#pragma omp parallel if (count > 65536)
      {
        alignas(64) numeric::Half half[kBlock];
#pragma omp for schedule(static)
        for (std::int64_t first = 0; first < static_cast<std::int64_t>(count); first += kBlock) {
          const std::size_t n = std::min<std::size_t>(kBlock, count - static_cast<std::size_t>(first));
          numeric::convert(src + first, DType::f32, half, DType::f16, n, {numeric::CpuPath::automatic, 1});
          numeric::convert(half, DType::f16, out + first, DType::f32, n, {numeric::CpuPath::automatic, 1});
        }
      }
      return;
    }
    default:
      if (dst != src) std::memcpy(dst, src, count * sizeof(float));
  }
}

DType Parameter::backend_dtype() const { return working.defined() ? working.dtype() : DType::f32; }

void Parameter::refresh(bool master_weights) {
  if (compute == DType::f32) return;
  const auto n = static_cast<std::size_t>(value.numel());
  float* v = value.data_as<float>();
  // The working copy is the FP32 value rounded once to the compute dtype (every non-FP32 parameter has one).
  round_for_backend(v, working.data(), compute, n);
  if (!master_weights) {
    // *-true: the weights themselves live in the low precision; take the rounded values back (exactly).
    if (working.dtype() == DType::bf16) {
      numeric::convert(working.data(), DType::bf16, v, DType::f32, n);
    } else {
      std::memcpy(v, working.data(), n * sizeof(float));
    }
  }
}

}  // namespace mpx::nn
