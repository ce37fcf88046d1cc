// GELU on the CPU: exact (erf, computed in double) as nn.GELU(), and GPT-2's tanh approximation in FP32
// with a vectorisable tanh (fast_math.h). Built with GCC's dynamic vectoriser cost model, which the tanh
// loops need to vectorise at -O2.
#include <cmath>

#include "mpx/backend/cpu_backend.h"
#include "../../common/vector_clones.h"
#include "fast_math.h"
#include "storage.h"

namespace mpx::backend {

using namespace cpu;

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
}  // namespace

namespace {
constexpr float kGeluCubic = 0.044715f;

// GPT-2's tanh-GELU in FP32 with a vectorisable tanh (fast_math.h).
template <class T>
MPX_VECTOR_CLONES void gelu_tanh_forward_range(const T* in, T* out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) {
    const float v = load(in[i]);
    const float t = tanh_fast(static_cast<float>(kSqrt2OverPi) * (v + kGeluCubic * v * v * v));
    store(out + i, 0.5f * v * (1.0f + t));
  }
}

template <class T>
MPX_VECTOR_CLONES void gelu_tanh_backward_range(const T* in, const T* g, T* out, std::int64_t begin, std::int64_t end) {
  constexpr auto k = static_cast<float>(kSqrt2OverPi);
  for (std::int64_t i = begin; i < end; ++i) {
    const float v = load(in[i]);
    const float t = tanh_fast(k * (v + kGeluCubic * v * v * v));
    const float derivative = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k * (1.0f + 3.0f * kGeluCubic * v * v);
    store(out + i, load(g[i]) * derivative);
  }
}
}  // namespace

void CpuBackend::gelu_forward(const Tensor& x, const Tensor& y, bool tanh_approximation) {
  with_storage(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(x);
    T* out = mutable_elements<T>(y);
    const std::int64_t n = x.numel();
    if (tanh_approximation) {
      mpx::detail::parallel_ranges(n, 65536, [&](std::int64_t b, std::int64_t e) { gelu_tanh_forward_range(in, out, b, e); });
      return;
    }
#pragma omp parallel for if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = load(in[i]);
      store(out + i, static_cast<float>(v * 0.5 * (1.0 + std::erf(v * kInvSqrt2))));
    }
  });
}

void CpuBackend::gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool tanh_approximation) {
  with_storage(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = elements<T>(dy);
    const T* in = elements<T>(x);
    T* out = mutable_elements<T>(dx);
    const std::int64_t n = dy.numel();
    if (tanh_approximation) {
      mpx::detail::parallel_ranges(n, 65536, [&](std::int64_t b, std::int64_t e) { gelu_tanh_backward_range(in, g, out, b, e); });
      return;
    }
#pragma omp parallel for if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = load(in[i]);
      const double derivative = 0.5 * (1.0 + std::erf(v * kInvSqrt2)) + v * kInvSqrt2Pi * std::exp(-0.5 * v * v);
      store(out + i, static_cast<float>(load(g[i]) * derivative));
    }
  });
}

}  // namespace mpx::backend
