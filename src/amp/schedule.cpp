#include "mpx/amp/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace mpx::amp {

namespace {
// Cosine interpolation from `start` (pct = 0) to `end` (pct = 1).
float cosine_anneal(float start, float end, double pct) {
  return static_cast<float>(end + (start - end) / 2.0 * (1.0 + std::cos(std::numbers::pi * pct)));
}
}  // namespace

float CosineSchedule::lr(std::int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) {
    return base_lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  }
  const std::int64_t span = std::max<std::int64_t>(1, total_steps - warmup_steps);
  const double pct = std::clamp(static_cast<double>(step - warmup_steps) / static_cast<double>(span), 0.0, 1.0);
  return cosine_anneal(base_lr, min_lr, pct);
}

float OneCycleSchedule::lr(std::int64_t step) const {
  const float initial = max_lr / div_factor;
  const float final_lr = initial / final_div_factor;
  // As PyTorch: the peak is at step pct_start * total - 1, the end at total - 1.
  const double peak = static_cast<double>(pct_start) * static_cast<double>(total_steps) - 1.0;
  const double last = static_cast<double>(total_steps) - 1.0;
  const auto s = static_cast<double>(std::clamp<std::int64_t>(step, 0, total_steps - 1));
  if (s <= peak) return cosine_anneal(initial, max_lr, peak > 0 ? s / peak : 1.0);
  return cosine_anneal(max_lr, final_lr, last > peak ? (s - peak) / (last - peak) : 1.0);
}

}  // namespace mpx::amp
