#pragma once
// Learning-rate schedule: linear warm-up from 0 to max_lr, then cosine decay to min_lr.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../core/error.hpp"

namespace mil::optim {

struct CosineSchedule {
  float max_lr;
  int64_t warmup_steps;
  int64_t total_steps;
  float min_lr = 0.f;

  // Learning rate of update number `step` (0-based).
  float lr(int64_t step) const {
    MIL_CHECK(warmup_steps >= 0 && total_steps >= 1 && step >= 0, "CosineSchedule: bad steps (warmup ",
              warmup_steps, ", total ", total_steps, ", step ", step, ")");
    if (step < warmup_steps) return max_lr * float(step + 1) / float(warmup_steps);
    double progress = double(step - warmup_steps) / double(std::max<int64_t>(1, total_steps - warmup_steps));
    progress = std::min(progress, 1.0);
    return float(min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(M_PI * progress)));
  }
};

}  // namespace mil::optim
