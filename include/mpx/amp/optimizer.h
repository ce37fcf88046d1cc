// Optimizers over FP32 parameters and FP32 state (SGD with momentum/Nesterov, AdamW with decoupled weight
// decay), global-norm clipping, and the master-weight refresh of low-precision working copies.
// Parameters are flat float spans: the engine owns the tensors, these functions own the arithmetic.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "mpx/numeric/dtype.h"

namespace mpx::amp {

struct SgdConfig {
  float momentum = 0.0f;
  float weight_decay = 0.0f;  // L2, added to the gradient (as torch.optim.SGD)
  bool nesterov = false;
};

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.01f;  // decoupled (as torch.optim.AdamW)
};

// One parameter tensor's FP32 view: values, gradient, and optimizer state buffers sized like it.
struct ParameterSlot {
  std::span<float> value;
  std::span<const float> grad;
  std::span<float> state1;  // SGD momentum / AdamW first moment
  std::span<float> state2;  // AdamW second moment (unused by SGD)
  bool decay = true;        // weight decay applies (biases and norm parameters usually excluded)
  // When set (BF16 working copy of FP32 master weights): the updated value rounded to nearest-even BF16 is
  // written here too, in the same pass as the update (AdamW) or right after it (SGD).
  std::span<std::uint16_t> bf16_working = {};
};

void sgd_step(const SgdConfig& config, float lr, std::span<const ParameterSlot> slots);
// `step` counts from 1 (bias correction).
void adamw_step(const AdamWConfig& config, float lr, std::int64_t step, std::span<const ParameterSlot> slots);

// sqrt(sum of squares) over all gradients, accumulated in double; NaN or inf if any gradient is.
double global_grad_norm(std::span<const std::span<const float>> grads);
// Scales gradients in place so their global norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(std::span<const std::span<float>> grads, double max_norm);

// Multiplies every gradient by `factor` (the loss scaler's 1/scale) and reports whether any is non-finite.
bool unscale_and_check(std::span<const std::span<float>> grads, float factor);

// Rounds FP32 master weights into the low-precision working copy (round to nearest even).
void refresh_working_copy(std::span<const float> master, void* working, DType working_dtype);

}  // namespace mpx::amp
