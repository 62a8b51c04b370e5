#pragma once
// Distillation loss, forward and backward in one call (CPU reference; CUDA in distill_loss.cuh):
// cross-entropy of the student against the label plus KL(teacher || student) at a temperature.
// For row r with student logits s, teacher logits t, label y and temperature tau:
//   ce[r] = logsumexp(s) - s[y]                                   (temperature 1)
//   kl[r] = sum_j q_j (log q_j - log p_j),   q = softmax(t / tau), p = softmax(s / tau)
//   dstudent[r] = dce (softmax(s) - onehot(y)) + dkl (p - q) / tau
// so dstudent is the gradient of dce * ce[r] + dkl * kl[r]. The training loss
// alpha CE + beta tau^2 KL averaged over N rows takes dce = alpha / N and dkl = beta tau^2 / N
// (autograd/distill_loss.hpp). Rows whose label is ignore_index get ce = kl = 0 and a zero
// gradient. The teacher gets no gradient. dstudent is always overwritten and may alias student.
//
// KL is formed from per-row statistics so that the row is read once for them:
//   kl = (W / Zt - (max t - max s)) / tau + log Zs - log Zt,
//   Zt = sum exp((t_j - max t) / tau), Zs = sum exp((s_j - max s) / tau), W = sum e^t_j (t_j - s_j)
// where e^t_j is Zt's term. Equal student and teacher rows give W = 0 and Zs = Zt bit for bit,
// hence KL and its gradient exactly 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil {

// The per-call constants of the kernels (see the formulas above).
struct DistillLossParams {
  float temperature = 1.f;  // tau > 0
  float dce = 0.f;          // weight of ce[r] in the gradient
  float dkl = 0.f;          // weight of kl[r] in the gradient
  int32_t ignore_index = -100;
};

// Throws unless the sizes, temperature and weights are usable.
inline void check_distill_params(const DistillLossParams& p, int64_t rows, int64_t vocab) {
  MIL_CHECK(rows >= 0 && vocab > 0, "distill_loss: bad sizes rows=", rows, " vocab=", vocab);
  (void)checked_mul(rows, vocab);
  MIL_CHECK(p.temperature > 0.f && std::isfinite(p.temperature),
            "distill_loss: the temperature must be positive and finite, got ", p.temperature);
  MIL_CHECK(std::isfinite(p.dce) && std::isfinite(p.dkl), "distill_loss: non-finite weights dce=",
            p.dce, " dkl=", p.dkl);
}

// Throws naming the first row whose label is neither ignore_index nor in [0, vocab).
inline void check_distill_targets(const int32_t* targets, int64_t rows, int64_t vocab,
                                  int32_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r)
    MIL_CHECK(targets[r] == ignore_index || (targets[r] >= 0 && targets[r] < vocab),
              "distill_loss: label ", targets[r], " at row ", r, " is outside the vocabulary [0, ",
              vocab, ") and is not the ignore index ", ignore_index);
}

namespace cpu {

// ce, kl: [rows] (acc_t<T>, so double gradient checks stay in double); student, teacher,
// dstudent: [rows, vocab]; dstudent null computes the losses only. Everything is checked before
// anything is written. The reference reads each row three times (maxima, sums, gradient): the
// row stays in cache, and the separate max pass keeps the sums free of rescaling.
template <class T>
void distill_loss_forward_backward(acc_t<T>* ce, acc_t<T>* kl, std::type_identity_t<T>* dstudent,
                                   const T* student, const T* teacher, const int32_t* targets,
                                   int64_t rows, int64_t vocab, const DistillLossParams& p) {
  using A = acc_t<T>;
  check_distill_params(p, rows, vocab);
  check_distill_targets(targets, rows, vocab, p.ignore_index);
  const A inv_tau = A(1) / A(p.temperature);
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = student + r * vocab;
    const T* t = teacher + r * vocab;
    T* ds = dstudent ? dstudent + r * vocab : nullptr;
    const int32_t y = targets[r];
    if (y == p.ignore_index) {
      ce[r] = kl[r] = A(0);
      if (ds) std::fill(ds, ds + vocab, T(A(0)));
      continue;
    }
    A s_max = -std::numeric_limits<A>::infinity(), t_max = s_max;
    for (int64_t j = 0; j < vocab; ++j) {
      s_max = std::max(s_max, to_acc(s[j]));
      t_max = std::max(t_max, to_acc(t[j]));
    }
    const A label_logit = to_acc(s[y]);  // read before ds, which may alias s, is written
    // Sums over ~50k terms in double (a sequential float sum drifts by ~1e-4).
    double z = 0, zs = 0, zt = 0, w = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const A sj = to_acc(s[j]), tj = to_acc(t[j]);
      const A et = std::exp((tj - t_max) * inv_tau);
      z += double(std::exp(sj - s_max));
      zs += double(std::exp((sj - s_max) * inv_tau));
      zt += double(et);
      w += double(et) * (double(tj) - double(sj));
    }
    ce[r] = (s_max - label_logit) + A(std::log(z));  // max - s_y is exact for nearby values
    kl[r] = A((w / zt - (double(t_max) - double(s_max))) * double(inv_tau) + std::log(zs) -
              std::log(zt));
    if (!ds) continue;
    const A inv_z = A(1.0 / z), inv_zs = A(1.0 / zs), inv_zt = A(1.0 / zt);
    const A dce = A(p.dce), dkl_tau = A(p.dkl) * inv_tau;
    for (int64_t j = 0; j < vocab; ++j) {
      const A sj = to_acc(s[j]), tj = to_acc(t[j]);
      const A p1 = std::exp(sj - s_max) * inv_z;
      const A ps = std::exp((sj - s_max) * inv_tau) * inv_zs;
      const A qt = std::exp((tj - t_max) * inv_tau) * inv_zt;
      ds[j] = T(dce * (p1 - (j == y ? A(1) : A(0))) + dkl_tau * (ps - qt));
    }
  }
}

}  // namespace cpu
}  // namespace mil
