// The CPU backend's data-parallel gradient bucket (backend.h, GradientBucket): scaling, error feedback's
// residual and the 16-bit rounding of what is sent, in FP32 with one rounding per operation, so that the
// CUDA kernel (src/backend/cuda/gradient_bucket.cu) gives the same bits.
#include <cmath>
#include <cstdint>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::backend {

void CpuBackend::prepare_gradient_bucket(const GradientBucket& b, float weight) {
  const auto n = static_cast<std::size_t>(b.values.numel());
  float* v = b.values.data_as<float>();
  float poison = 0;  // becomes NaN when any gradient is NaN or infinite
  for (std::size_t i = 0; i < n; ++i) {
    poison += v[i] * 0.0f;
    v[i] *= weight;
  }
  if (std::isnan(poison)) *b.nonfinite.data_as<std::uint8_t>() = 1;
  if (b.reference.defined()) std::copy_n(v, n, b.reference.data_as<float>());
  if (b.residual.defined()) {
    const float* r = b.residual.data_as<float>();
    for (std::size_t i = 0; i < n; ++i) v[i] += r[i];
  }
  if (!b.wire.defined()) return;
  numeric::convert(v, DType::f32, b.wire.data(), b.wire.dtype(), n);
  if (!b.residual.defined()) return;
  float* next = b.next_residual.data_as<float>();  // what the rounding lost: v - round(v)
  numeric::convert(b.wire.data(), b.wire.dtype(), next, DType::f32, n);
  for (std::size_t i = 0; i < n; ++i) {
    const float lost = v[i] - next[i];
    next[i] = std::isfinite(lost) ? lost : 0.0f;
  }
}

}  // namespace mpx::backend
