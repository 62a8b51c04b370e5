#pragma once
// A bias added to every row of a [rows, cols] matrix (the q/k/v biases of Qwen2) and its
// gradient, the column sums of dy: CPU reference; the CUDA version is in bias.cuh. Sums are taken
// in acc_t<T> in row order and rounded once.
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

// y[r, c] += b[c].
template <class T>
void bias_add(T* y, const T* b, int64_t rows, int64_t cols) {
  MIL_CHECK(rows >= 0 && cols >= 0, "bias_add: negative size rows=", rows, " cols=", cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      y[r * cols + c] = from_acc<T>(to_acc(y[r * cols + c]) + to_acc(b[c]));
}

// db[c] = sum_r dy[r, c] (accumulate = false) or db[c] += that sum (accumulate = true).
template <class T>
void bias_backward(T* db, const T* dy, int64_t rows, int64_t cols, bool accumulate) {
  MIL_CHECK(rows >= 0 && cols >= 0, "bias_backward: negative size rows=", rows, " cols=", cols);
  std::vector<acc_t<T>> sum(size_t(cols), acc_t<T>(0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) sum[c] += to_acc(dy[r * cols + c]);
  for (int64_t c = 0; c < cols; ++c)
    db[c] = from_acc<T>(accumulate ? to_acc(db[c]) + sum[c] : sum[c]);
}

}  // namespace mil::cpu
