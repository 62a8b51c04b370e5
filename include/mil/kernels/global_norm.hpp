#pragma once
// Global L2 norm of a flat gradient buffer, for clipping (CPU reference; CUDA in global_norm.cuh):
//   sum_of_squares(x) = sum_i x_i^2
//   clip_coefficient  = min(1, max_norm / (sqrt(sum_of_squares) + 1e-6))
// The gradient is then scaled by the coefficient inside the optimizer (AdamWStep::grad_scale).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

// Sum of x_i^2 in double, in blocks of 4096 summed separately and then added: the rounding error
// grows with the block length plus the block count, not with n.
template <class T>
double sum_of_squares(const T* x, int64_t n) {
  MIL_CHECK(n >= 0, "sum_of_squares: negative size ", n);
  constexpr int64_t block = 4096;
  double total = 0;
  for (int64_t begin = 0; begin < n; begin += block) {
    const int64_t end = std::min(n, begin + block);
    double partial = 0;
    for (int64_t i = begin; i < end; ++i) {
      double v = double(to_acc(x[i]));
      partial += v * v;
    }
    total += partial;
  }
  return total;
}

// min(1, max_norm / (sqrt(sum_sq) + 1e-6)). A non-finite sum gives NaN, never a silent 1 or 0:
// the optimizer must see the bad norm and skip the step.
inline float clip_coefficient(double sum_sq, float max_norm) {
  MIL_CHECK(max_norm > 0, "clip_coefficient: max_norm must be positive, got ", max_norm);
  if (!std::isfinite(sum_sq)) return std::numeric_limits<float>::quiet_NaN();
  return float(std::min(1.0, double(max_norm) / (std::sqrt(sum_sq) + 1e-6)));
}

}  // namespace mil::cpu
