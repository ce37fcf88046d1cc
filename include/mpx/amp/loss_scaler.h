// LossScaler: static or dynamic loss scaling with PyTorch GradScaler's defaults (2^16, x2 after 2000
// clean steps, x0.5 and skip on inf/NaN). The caller multiplies the loss by scale(), unscales gradients
// by 1/scale() before clipping, checks them for non-finite values, and asks update(found_inf) whether to
// apply the optimizer step. Non-finite gradients are data here, not errors.
#pragma once

#include <cstdint>

#include "mpx/numeric/detail/host_device.h"

namespace mpx::amp {

struct LossScalerConfig {
  bool dynamic = true;           // false: the scale never changes (overflowing steps are still skipped)
  float init_scale = 65536.0f;   // 2^16
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int growth_interval = 2000;    // clean steps in a row before the scale grows
};

// Everything needed to resume exactly where a run left off.
struct LossScalerState {
  float scale = 65536.0f;
  int growth_tracker = 0;  // clean steps since the last growth or backoff
  std::uint64_t steps = 0, skipped_steps = 0, growths = 0, backoffs = 0;
};

// The scaler's rule for one step, shared by LossScaler (CPU) and the CUDA fused optimizer step, which takes
// the same decision on the device without a host synchronisation. Returns whether to apply the step.
MPX_HOST_DEVICE inline bool apply_scaler_rule(const LossScalerConfig& config, LossScalerState& state, bool found_inf) {
  constexpr float kSmallestNormal = 1.17549435e-38f;  // never let the scale reach zero: it could not grow back
  ++state.steps;
  if (found_inf) {
    ++state.skipped_steps;
    state.growth_tracker = 0;
    if (config.dynamic) {
      const float backed_off = state.scale * config.backoff_factor;
      state.scale = backed_off >= kSmallestNormal ? backed_off : kSmallestNormal;
      ++state.backoffs;
    }
    return false;
  }
  if (config.dynamic && ++state.growth_tracker >= config.growth_interval) {
    const float grown = state.scale * config.growth_factor;
    if (grown - grown == 0.0f) {  // finite: as PyTorch, growth that would overflow is not taken
      state.scale = grown;
      ++state.growths;
    }
    state.growth_tracker = 0;
  }
  return true;
}

class LossScaler {
 public:
  explicit LossScaler(const LossScalerConfig& config = {});  // throws InvalidArgument on bad settings

  float scale() const { return state_.scale; }
  float inverse_scale() const { return 1.0f / state_.scale; }

  // Records one step whose (scaled) gradients were or were not all finite. Returns true when the step
  // should be applied, false when it must be skipped.
  bool update(bool found_inf);

  const LossScalerConfig& config() const { return config_; }
  const LossScalerState& state() const { return state_; }
  void load_state(const LossScalerState& state);  // throws InvalidArgument on a non-positive scale

 private:
  LossScalerConfig config_;
  LossScalerState state_;
};

}  // namespace mpx::amp
