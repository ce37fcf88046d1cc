// The per-element arithmetic of the optimizers, shared by the CPU loops (src/amp/optimizer.cpp) and the
// CUDA fused step (src/backend/cuda/fused_optimizer.cu) so that both apply the same FP32 formulas. The
// per-step factors are computed in double from the step count, on whichever side owns that count.
#pragma once

#include <math.h>  // the C names (pow, sqrt, sqrtf) are the ones host and device code share
#include <cstdint>

#include "mpx/amp/optimizer.h"
#include "mpx/numeric/detail/host_device.h"

namespace mpx::amp::detail {

struct AdamWFactors {
  float beta1, beta2, eps, step_size, inv_sqrt_correction2;
  float lr_times_decay;  // lr * weight_decay; applied to parameters whose decay flag is set
};

// `step` counts from 1 (bias correction).
MPX_HOST_DEVICE inline AdamWFactors adamw_factors(const AdamWConfig& c, float lr, std::int64_t step) {
  const double correction1 = 1.0 - pow(static_cast<double>(c.beta1), static_cast<double>(step));
  const double correction2 = 1.0 - pow(static_cast<double>(c.beta2), static_cast<double>(step));
  return {c.beta1,
          c.beta2,
          c.eps,
          static_cast<float>(static_cast<double>(lr) / correction1),
          static_cast<float>(1.0 / sqrt(correction2)),
          lr * c.weight_decay};
}

// One element of AdamW with decoupled weight decay; updates the moments and returns the new value.
MPX_HOST_DEVICE inline float adamw_update(float value, float g, float& m1, float& m2, const AdamWFactors& f,
                                          float decay_factor) {
  const float m = f.beta1 * m1 + (1.0f - f.beta1) * g;
  const float v = f.beta2 * m2 + (1.0f - f.beta2) * g * g;
  m1 = m;
  m2 = v;
  const float denom = sqrtf(v) * f.inv_sqrt_correction2 + f.eps;
  return value * decay_factor - f.step_size * m / denom;
}

// One element of SGD with L2 weight decay, momentum and Nesterov (torch.optim.SGD's formulas).
MPX_HOST_DEVICE inline float sgd_update(float value, float g, float& momentum_buffer, const SgdConfig& c, float lr,
                                        float weight_decay) {
  g += weight_decay * value;
  if (c.momentum != 0.0f) {
    const float buf = c.momentum * momentum_buffer + g;
    momentum_buffer = buf;
    g = c.nesterov ? g + c.momentum * buf : buf;
  }
  return value - lr * g;
}

// bf16-true keeps no FP32 master copy, so each step's new weights are rounded to BF16 stochastically:
// an update smaller than half a BF16 ulp (2^-9 of the weight) still moves the weight by its size in
// expectation, where rounding to nearest would drop it every step. Element i of the parameter list (all
// parameters end to end, in order) draws numeric::random_u32(weight_rounding_stream(seed, step), i): the
// same bits on every backend, and a resumed run rounds as the straight one did.
MPX_HOST_DEVICE inline std::uint64_t weight_rounding_stream(std::uint64_t seed, std::int64_t step) {
  return seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(step);
}

// The factor clip_grad_norm multiplies gradients by: 1 unless the (finite) norm exceeds max_norm.
MPX_HOST_DEVICE inline float clip_factor(double norm, double max_norm) {
  if (max_norm > 0 && norm - norm == 0.0 && norm > max_norm) return static_cast<float>(max_norm / (norm + 1e-6));
  return 1.0f;
}

}  // namespace mpx::amp::detail
