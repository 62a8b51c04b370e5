#pragma once
// AdamW update over a flat buffer (CPU reference; CUDA in adamw.cuh), PyTorch's order:
//   g = grad * grad_scale
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   master *= 1 - lr * weight_decay                                  (decoupled decay)
//   master -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//   param = P(master)                                                (when param is not null)
// The master weights and moments are fp32 (double in reference tests); param is the optional
// low-precision copy the model computes with. Bias corrections are computed once per call, in
// double, by adamw_coefficients(), which the CPU and GPU paths share.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil {

struct AdamWStep {
  float lr = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  int64_t step = 1;        // 1-based, for bias correction
  float grad_scale = 1.f;  // multiplies the gradient first, e.g. the clipping coefficient
};

// Per-call constants of the update in the master precision A.
template <class A>
struct AdamWCoefficients {
  A beta1, one_minus_beta1, beta2, one_minus_beta2;
  A decay;         // 1 - lr * weight_decay
  A step_size;     // lr / (1 - beta1^t)
  A inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
  A eps, grad_scale;
};

template <class A>
AdamWCoefficients<A> adamw_coefficients(const AdamWStep& s) {
  MIL_CHECK(s.step >= 1, "adamw: step is 1-based, got ", s.step);
  MIL_CHECK(s.lr >= 0 && s.weight_decay >= 0 && s.eps >= 0, "adamw: negative lr=", s.lr,
            " weight_decay=", s.weight_decay, " or eps=", s.eps);
  MIL_CHECK(s.beta1 >= 0 && s.beta1 < 1 && s.beta2 >= 0 && s.beta2 < 1,
            "adamw: betas must be in [0, 1), got ", s.beta1, " and ", s.beta2);
  const double b1 = s.beta1, b2 = s.beta2, t = double(s.step);
  const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  return {A(b1),
          A(1 - b1),
          A(b2),
          A(1 - b2),
          A(1 - double(s.lr) * double(s.weight_decay)),
          A(double(s.lr) / bc1),
          A(1 / std::sqrt(bc2)),
          A(s.eps),
          A(s.grad_scale)};
}

// One element; the GPU kernel calls the same expression so both round alike (up to the GPU's
// fused multiply-adds).
template <class A>
MIL_HOST_DEVICE inline void adamw_element(A& master, A& m, A& v, A g,
                                          const AdamWCoefficients<A>& c) {
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * g * g;
#if defined(__CUDA_ARCH__)
  const A root = sqrt(v);  // CUDA's overloads: sqrtf for float, correctly rounded
#else
  const A root = std::sqrt(v);
#endif
  master = master * c.decay - c.step_size * m / (root * c.inv_sqrt_bc2 + c.eps);
}

namespace cpu {

// master, m, v: [n] in the master precision M (float; double in tests); param: [n] or null;
// grad: [n]. None of the buffers overlap.
template <class M, class P, class G>
void adamw_update(M* master, M* m, M* v, P* param, const G* grad, int64_t n, const AdamWStep& s) {
  MIL_CHECK(n >= 0, "adamw_update: negative size ", n);
  const AdamWCoefficients<M> c = adamw_coefficients<M>(s);
  for (int64_t i = 0; i < n; ++i) {
    M g = M(to_acc(grad[i])) * c.grad_scale;
    adamw_element(master[i], m[i], v[i], g, c);
    if (param) param[i] = P(master[i]);
  }
}

// No low-precision copy: the master buffer is the parameter.
template <class M, class G>
void adamw_update(M* master, M* m, M* v, std::nullptr_t, const G* grad, int64_t n,
                  const AdamWStep& s) {
  adamw_update(master, m, v, static_cast<M*>(nullptr), grad, n, s);
}

}  // namespace cpu
}  // namespace mil
