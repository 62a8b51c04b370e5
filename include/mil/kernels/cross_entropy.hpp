#pragma once
// Softmax cross-entropy, forward and backward in one call (CPU reference; CUDA in
// cross_entropy.cuh). For row r with target t:
//   losses[r]  = logsumexp(logits[r]) - logits[r, t]
//   dlogits[r] = dloss * row_scale[r] * (softmax(logits[r]) - onehot(t))
// Rows whose target is ignore_index get loss 0 and gradient 0. The mean over counted rows is the
// caller's: dloss = weight / count_targets(...). row_scale (null: 1 for every row) weighs rows
// differently, e.g. by the gradient of a per-sequence loss (autograd/dpo_loss.hpp: the
// log-probability of a target is -losses[r]). No gradient accumulation: dlogits is always
// overwritten, and may alias logits (the logits buffer becomes the gradient).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

// Rows whose target is not ignore_index (the divisor of the mean loss).
inline int64_t count_targets(const int32_t* targets, int64_t rows, int32_t ignore_index = -100) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += targets[r] != ignore_index;
  return count;
}

// Throws naming the first row whose target is neither ignore_index nor in [0, vocab).
inline void check_targets(const int32_t* targets, int64_t rows, int64_t vocab,
                          int32_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r)
    MIL_CHECK(targets[r] == ignore_index || (targets[r] >= 0 && targets[r] < vocab),
              "cross_entropy: target ", targets[r], " at row ", r,
              " is outside the vocabulary [0, ", vocab, ") and is not the ignore index ",
              ignore_index);
}

// losses: [rows] (acc_t<T>, so double gradient checks stay in double); logits, dlogits:
// [rows, vocab]; row_scale: [rows] or null; dlogits null computes the loss only. Targets are
// checked before anything is written. dlogits is not deduced, so a literal nullptr works.
template <class T>
void cross_entropy_forward_backward(acc_t<T>* losses, std::type_identity_t<T>* dlogits,
                                    const T* logits, const int32_t* targets, int64_t rows,
                                    int64_t vocab, float dloss, int32_t ignore_index = -100,
                                    const acc_t<T>* row_scale = nullptr) {
  using A = acc_t<T>;
  MIL_CHECK(rows >= 0 && vocab > 0, "cross_entropy: bad sizes rows=", rows, " vocab=", vocab);
  (void)checked_mul(rows, vocab);
  check_targets(targets, rows, vocab, ignore_index);
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * vocab;
    T* dx = dlogits ? dlogits + r * vocab : nullptr;
    const int32_t t = targets[r];
    if (t == ignore_index) {
      losses[r] = A(0);
      if (dx) std::fill(dx, dx + vocab, T(A(0)));
      continue;
    }
    A max = -std::numeric_limits<A>::infinity();
    for (int64_t j = 0; j < vocab; ++j) max = std::max(max, to_acc(x[j]));
    const A target_logit = to_acc(x[t]);  // read before dx, which may alias x, is written
    // When T is its own accumulator type, exp(x - max) is computed once and kept in dx until the
    // sum is known; a narrower T would round it, so it is recomputed instead.
    constexpr bool keep_exp = std::is_same_v<T, A>;
    double sum = 0;  // a sequential float sum over ~50k terms drifts by ~1e-4: sum in double
    for (int64_t j = 0; j < vocab; ++j) {
      A e = std::exp(to_acc(x[j]) - max);
      sum += double(e);
      if constexpr (keep_exp)
        if (dx) dx[j] = e;
    }
    losses[r] = (max - target_logit) + A(std::log(sum));  // max - x_t is exact for nearby values
    if (!dx) continue;
    const A inv_sum = A(1.0 / sum), scale = A(dloss) * (row_scale ? row_scale[r] : A(1));
    for (int64_t j = 0; j < vocab; ++j) {
      A e = keep_exp ? to_acc(dx[j]) : std::exp(to_acc(x[j]) - max);
      dx[j] = T(scale * (e * inv_sum - (j == t ? A(1) : A(0))));
    }
  }
}

}  // namespace mil::cpu
