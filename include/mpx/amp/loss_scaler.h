// LossScaler: static or dynamic loss scaling with PyTorch GradScaler's defaults (2^16, x2 after 2000
// clean steps, x0.5 and skip on inf/NaN). The caller multiplies the loss by scale(), unscales gradients
// by 1/scale() before clipping, checks them for non-finite values, and asks update(found_inf) whether to
// apply the optimizer step. Non-finite gradients are data here, not errors.
#pragma once

#include <cstdint>

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
