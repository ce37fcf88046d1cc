#include "mpx/amp/optimizer.h"

#include <cmath>
#include <cstring>
#include <string>

#include "../common/bf16_bits.h"
#include "../common/vector_clones.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::amp {

namespace {

struct AdamWFactors {
  float beta1, beta2, eps, step_size, inv_sqrt_correction2, decay_factor;
};

// The AdamW update of one element (FP32 arithmetic); returns the new value.
inline float adamw_update(float& value, float g, float& m1, float& m2, const AdamWFactors& f) {
  const float m = f.beta1 * m1 + (1.0f - f.beta1) * g;
  const float v = f.beta2 * m2 + (1.0f - f.beta2) * g * g;
  m1 = m;
  m2 = v;
  const float denom = std::sqrt(v) * f.inv_sqrt_correction2 + f.eps;
  value = value * f.decay_factor - f.step_size * m / denom;
  return value;
}

// AdamW over elements [begin, end): built for AVX-512/AVX2 beside the baseline (sqrt and divide per element).
MPX_VECTOR_CLONES
void adamw_range(float* value, const float* grad, float* m1, float* m2, std::int64_t begin, std::int64_t end,
                 AdamWFactors f) {
  for (std::int64_t i = begin; i < end; ++i) adamw_update(value[i], grad[i], m1[i], m2[i], f);
}

// The same, also writing the BF16 working copy (one pass over the master weights instead of two).
MPX_VECTOR_CLONES
void adamw_range_bf16_copy(float* value, const float* grad, float* m1, float* m2, std::uint16_t* working,
                           std::int64_t begin, std::int64_t end, AdamWFactors f) {
  for (std::int64_t i = begin; i < end; ++i) {
    working[i] = detail::round_to_bf16(adamw_update(value[i], grad[i], m1[i], m2[i], f));
  }
}

void check_slot(const ParameterSlot& s, bool needs_state2) {
  if (s.grad.size() != s.value.size() || s.state1.size() != s.value.size() ||
      (needs_state2 && s.state2.size() != s.value.size()) ||
      (!s.bf16_working.empty() && s.bf16_working.size() != s.value.size())) {
    throw InvalidArgument("optimizer: parameter, gradient and state sizes differ (" + std::to_string(s.value.size()) +
                          ", " + std::to_string(s.grad.size()) + ", " + std::to_string(s.state1.size()) + ")");
  }
}
}  // namespace

void sgd_step(const SgdConfig& c, float lr, std::span<const ParameterSlot> slots) {
  for (const ParameterSlot& s : slots) {
    check_slot(s, false);
    const float decay = s.decay ? c.weight_decay : 0.0f;
    const auto n = static_cast<std::int64_t>(s.value.size());
#pragma omp parallel for simd if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      float g = s.grad[i] + decay * s.value[i];
      if (c.momentum != 0.0f) {
        const float buf = c.momentum * s.state1[i] + g;
        s.state1[i] = buf;
        g = c.nesterov ? g + c.momentum * buf : buf;
      }
      s.value[i] -= lr * g;
    }
    if (!s.bf16_working.empty()) refresh_working_copy(s.value, s.bf16_working.data(), DType::bf16);
  }
}

void adamw_step(const AdamWConfig& c, float lr, std::int64_t step, std::span<const ParameterSlot> slots) {
  if (step < 1) throw InvalidArgument("adamw_step: step counts from 1");
  const double correction1 = 1.0 - std::pow(static_cast<double>(c.beta1), static_cast<double>(step));
  const double correction2 = 1.0 - std::pow(static_cast<double>(c.beta2), static_cast<double>(step));
  const auto step_size = static_cast<float>(lr / correction1);
  const auto inv_sqrt_correction2 = static_cast<float>(1.0 / std::sqrt(correction2));
  for (const ParameterSlot& s : slots) {
    check_slot(s, true);
    const float decay_factor = 1.0f - (s.decay ? lr * c.weight_decay : 0.0f);
    const auto n = static_cast<std::int64_t>(s.value.size());
    const AdamWFactors f{c.beta1, c.beta2, c.eps, step_size, inv_sqrt_correction2, decay_factor};
    detail::parallel_ranges(n, 65536, [&](std::int64_t begin, std::int64_t end) {
      if (s.bf16_working.empty()) {
        adamw_range(s.value.data(), s.grad.data(), s.state1.data(), s.state2.data(), begin, end, f);
      } else {
        adamw_range_bf16_copy(s.value.data(), s.grad.data(), s.state1.data(), s.state2.data(), s.bf16_working.data(),
                              begin, end, f);
      }
    });
  }
}

double global_grad_norm(std::span<const std::span<const float>> grads) {
  double sum = 0.0;
  for (const auto& g : grads) {
    const auto n = static_cast<std::int64_t>(g.size());
#pragma omp parallel for reduction(+ : sum) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(g[i]) * g[i];
  }
  return std::sqrt(sum);
}

double clip_grad_norm(std::span<const std::span<float>> grads, double max_norm) {
  if (!(max_norm > 0)) throw InvalidArgument("clip_grad_norm: max_norm must be positive");
  std::vector<std::span<const float>> views(grads.begin(), grads.end());
  const double norm = global_grad_norm(views);
  if (std::isfinite(norm) && norm > max_norm) {
    const auto factor = static_cast<float>(max_norm / (norm + 1e-6));
    for (const auto& g : grads) {
      for (float& x : g) x *= factor;
    }
  }
  return norm;
}

bool unscale_and_check(std::span<const std::span<float>> grads, float factor) {
  bool found_inf = false;
  for (const auto& g : grads) {
    const auto n = static_cast<std::int64_t>(g.size());
    int bad = 0;
#pragma omp parallel for reduction(| : bad) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      g[i] *= factor;
      bad |= std::isfinite(g[i]) ? 0 : 1;
    }
    found_inf = found_inf || bad != 0;
  }
  return found_inf;
}

void refresh_working_copy(std::span<const float> master, void* working, DType working_dtype) {
  if (working_dtype == DType::f32) {
    if (working != master.data()) std::memcpy(working, master.data(), master.size_bytes());
    return;
  }
  numeric::convert(master.data(), DType::f32, working, working_dtype, master.size());
}

}  // namespace mpx::amp
