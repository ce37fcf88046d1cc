// When a run that went non-finite must stop, the same on every device (internal to src/train). Mixed
// presets skip a non-finite step (as GradScaler does) and stop only after kMaxInARow in a row; a run with
// neither loss scaling nor master weights cannot recover from a non-finite loss and stops at once;
// --detect-anomaly stops at the first. Every stop says where it began and what to try.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::train {

class DivergenceRule {
 public:
  static constexpr std::int64_t kMaxInARow = 100;  // then the run is not recovering

  // `run`: how messages name the run ("16-true", "16-true on CUDA"); `recoverable`: it has a loss scaler or
  // master weights.
  DivergenceRule(std::string run, bool recoverable, bool detect_anomaly)
      : run_(std::move(run)), recoverable_(recoverable), detect_anomaly_(detect_anomaly) {}

  // Whether a non-finite `loss` ends the run by itself (no scaler, no master weights).
  bool loss_is_fatal(float loss) const;
  // Throws TrainingDiverged for a fatal non-finite loss at `step`.
  [[noreturn]] void stop_for_loss(float loss, std::int64_t step,
                                  const std::optional<telemetry::NonFiniteOrigin>& origin) const;
  // After a step's inf/NaN check: counts consecutive non-finite steps and throws TrainingDiverged for
  // --detect-anomaly or too many in a row. `origin` is where a non-finite step began.
  void after_check(bool found_inf, const telemetry::NonFiniteOrigin& origin);
  void after_finite_step() { in_a_row_ = 0; }
  // Checkpoints carry the count, so that a resumed run stops where the uninterrupted one would.
  std::int64_t in_a_row() const { return in_a_row_; }
  void restore(std::int64_t in_a_row) { in_a_row_ = in_a_row; }

 private:
  std::string run_;
  bool recoverable_, detect_anomaly_;
  std::int64_t in_a_row_ = 0;
};

}  // namespace mpx::train
