#include "divergence_rule.h"

#include <cmath>

#include "mpx/train/trainer.h"

namespace mpx::train {

bool DivergenceRule::loss_is_fatal(float loss) const { return !std::isfinite(loss) && !recoverable_; }

void DivergenceRule::stop_for_loss(float loss, std::int64_t step,
                                   const std::optional<telemetry::NonFiniteOrigin>& origin) const {
  throw TrainingDiverged("the loss became " + std::string(std::isnan(loss) ? "NaN" : "infinite") + " at step " +
                         std::to_string(step) + " (" + run_ +
                         "); try --precision bf16-mixed (FP32 master weights) or a lower --lr" +
                         (origin ? "; it started at " + origin->describe() : std::string()),
                         origin.value_or(telemetry::NonFiniteOrigin{step, "loss", "forward", {}, {}}));
}

void DivergenceRule::after_check(bool found_inf, const telemetry::NonFiniteOrigin& origin) {
  if (!found_inf) {
    in_a_row_ = 0;
    return;
  }
  ++in_a_row_;
  if (detect_anomaly_) throw TrainingDiverged("anomaly detected (--detect-anomaly) at " + origin.describe(), origin);
  if (in_a_row_ >= kMaxInARow) {
    throw TrainingDiverged(std::to_string(in_a_row_) + " steps in a row went non-finite (" + run_ + "), the last at " +
                           origin.describe() + "; try a lower --lr or --precision bf16-mixed", origin);
  }
}

}  // namespace mpx::train
