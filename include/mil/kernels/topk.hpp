#pragma once
// The k largest logits of each row and the row's log-sum-exp: what a top-k sampler and stored
// top-k log-probabilities need, so a decoder on the GPU sends the host k values per row instead of
// the whole vocabulary. CPU reference; the CUDA version is in topk.cuh and agrees exactly.
//
// Row r reads x[r * ld, r * ld + cols). Candidates are the values that are not NaN and not -inf,
// ordered by larger value, then smaller index (the sampler's order, generate/sampler.hpp); out
// row r gets the first k of them in that order, and id -1 with value -inf where a row has fewer.
// logsumexp[r] = log sum exp over the row's non-NaN values, in double (-inf when there are none,
// +inf when one is +inf).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil {

// The widest top-k the kernels take: a sampler's top-k (llama.cpp's default is 40) or stored
// log-probabilities (a few to a few dozen).
inline constexpr int32_t kMaxTopK = 64;

// max_k: kMaxTopK on the GPU; the CPU takes up to the whole row.
inline void check_topk_sizes(int64_t rows, int64_t cols, int64_t ld, int32_t k, int64_t max_k) {
  MIL_CHECK(rows >= 0 && cols >= 1 && cols <= INT32_MAX && ld >= cols && k >= 1 && k <= max_k,
            "topk_rows: bad sizes rows=", rows, " cols=", cols, " ld=", ld, " k=", k, " (1 to ",
            max_k, ")");
}

namespace cpu {

template <class T>
void topk_rows(int32_t* ids, float* values, float* logsumexp, const T* x, int64_t rows, int64_t cols,
               int64_t ld, int32_t k) {
  check_topk_sizes(rows, cols, ld, k, cols);
  std::vector<int32_t> order;
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    order.clear();
    double top = -INFINITY;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = row[size_t(c)] = float(to_acc(x[r * ld + c]));
      if (std::isnan(v)) continue;
      top = std::max(top, double(v));
      if (v > -INFINITY) order.push_back(int32_t(c));
    }
    double sum = 0;
    if (std::isfinite(top))
      for (float v : row)
        if (!std::isnan(v)) sum += std::exp(double(v) - top);
    logsumexp[r] = std::isfinite(top) ? float(top + std::log(sum)) : float(top);
    const size_t n = std::min(order.size(), size_t(k));
    std::partial_sort(order.begin(), order.begin() + ptrdiff_t(n), order.end(), [&](int32_t a, int32_t b) {
      return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
    });
    for (size_t j = 0; j < size_t(k); ++j) {
      ids[r * k + int64_t(j)] = j < n ? order[j] : -1;
      values[r * k + int64_t(j)] = j < n ? row[size_t(order[j])] : -INFINITY;
    }
  }
}

}  // namespace cpu
}  // namespace mil
