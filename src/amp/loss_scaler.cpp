#include "mpx/amp/loss_scaler.h"

#include <cmath>
#include <string>

#include "mpx/core/error.h"

namespace mpx::amp {

LossScaler::LossScaler(const LossScalerConfig& config) : config_(config) {
  if (!(std::isfinite(config.init_scale) && config.init_scale > 0)) {
    throw InvalidArgument("loss scale must be a positive finite number, got " + std::to_string(config.init_scale));
  }
  if (!(config.growth_factor > 1.0f && std::isfinite(config.growth_factor))) {
    throw InvalidArgument("loss-scale growth factor must be > 1, got " + std::to_string(config.growth_factor));
  }
  if (!(config.backoff_factor > 0.0f && config.backoff_factor < 1.0f)) {
    throw InvalidArgument("loss-scale backoff factor must be in (0, 1), got " + std::to_string(config.backoff_factor));
  }
  if (config.growth_interval < 1) {
    throw InvalidArgument("loss-scale growth interval must be >= 1, got " + std::to_string(config.growth_interval));
  }
  state_.scale = config.init_scale;
}

bool LossScaler::update(bool found_inf) { return apply_scaler_rule(config_, state_, found_inf); }

void LossScaler::load_state(const LossScalerState& state) {
  if (!(std::isfinite(state.scale) && state.scale > 0)) {
    throw InvalidArgument("loss-scaler state has an invalid scale " + std::to_string(state.scale));
  }
  if (state.growth_tracker < 0) throw InvalidArgument("loss-scaler state has a negative growth tracker");
  state_ = state;
}

}  // namespace mpx::amp
