// Learning-rate schedules as pure functions of the step: cosine (with linear warm-up) and one-cycle
// (as torch.optim.lr_scheduler.OneCycleLR with cosine annealing and its defaults).
#pragma once

#include <cstdint>

namespace mpx::amp {

struct CosineSchedule {
  float base_lr = 1e-3f, min_lr = 0.0f;
  std::int64_t warmup_steps = 0, total_steps = 1;
  float lr(std::int64_t step) const;  // step counts from 0
};

struct OneCycleSchedule {
  float max_lr = 1e-3f;
  std::int64_t total_steps = 1;
  float pct_start = 0.3f;           // fraction of steps spent rising
  float div_factor = 25.0f;         // initial lr = max_lr / div_factor
  float final_div_factor = 1e4f;    // final lr = initial lr / final_div_factor
  float lr(std::int64_t step) const;
};

}  // namespace mpx::amp
