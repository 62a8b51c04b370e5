#pragma once
// Index of the largest element of each row (greedy decoding): CPU reference; the CUDA version is
// in argmax.cuh. Ties go to the smallest index and NaN never wins (a row of NaNs gives 0), so the
// two agree exactly.
#include <cmath>
#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

template <class T>
void argmax_rows(int32_t* out, const T* x, int64_t rows, int64_t cols) {
  MIL_CHECK(rows >= 0 && cols >= 1 && cols <= INT32_MAX, "argmax_rows: bad sizes rows=", rows,
            " cols=", cols);
  for (int64_t r = 0; r < rows; ++r) {
    int32_t best = 0;
    float bv = -INFINITY;
    bool found = false;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = float(to_acc(x[r * cols + c]));
      if (!std::isnan(v) && (!found || v > bv)) {
        bv = v;
        best = int32_t(c);
        found = true;
      }
    }
    out[r] = best;
  }
}

}  // namespace mil::cpu
