#pragma once
// RMSNorm (Llama): out = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) per row.
// CPU reference in plain loops, templated on the element type (double for gradient checks).
// dx may alias dout or x (each row is read before it is written), here and on the GPU.
//
// Backward, with g = dout * w and n = dim:
//   dx = rstd * (g - x * rstd^2 * dot(g, x) / n)
//   dw = sum over rows of dout * x * rstd
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

// Sums with eight independent partial sums, combined in a fixed order: the add chain no longer
// limits the loop (it vectorises), and the result is still deterministic.
template <class T>
acc_t<T> rmsnorm_sum_of_squares(const T* x, int64_t n) {
  using A = acc_t<T>;
  A part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) {
      A v = to_acc(x[i + k]);
      part[k] += v * v;
    }
  for (; i < n; ++i) part[0] += to_acc(x[i]) * to_acc(x[i]);
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// dot(a * b, c), summed like rmsnorm_sum_of_squares.
template <class T>
acc_t<T> rmsnorm_dot3(const T* a, const T* b, const T* c, int64_t n) {
  using A = acc_t<T>;
  A part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) part[k] += to_acc(a[i + k]) * to_acc(b[i + k]) * to_acc(c[i + k]);
  for (; i < n; ++i) part[0] += to_acc(a[i]) * to_acc(b[i]) * to_acc(c[i]);
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// out, x: [rows, dim]; w: [dim]; rstd: [rows] or nullptr when the caller does not keep it.
template <class T>
void rmsnorm_forward(T* out, acc_t<T>* rstd, const T* x, const T* w, int64_t rows, int64_t dim,
                     float eps) {
  using A = acc_t<T>;
  MIL_CHECK(rows >= 0 && dim > 0, "rmsnorm_forward: bad sizes rows=", rows, " dim=", dim);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T* outr = out + r * dim;
    const A rs = A(1) / std::sqrt(rmsnorm_sum_of_squares(xr, dim) / A(dim) + A(eps));
    if (rstd) rstd[r] = rs;
    for (int64_t i = 0; i < dim; ++i) outr[i] = T(to_acc(xr[i]) * rs * to_acc(w[i]));
  }
}

// rstd is the forward's (required: the backward has no eps to recompute it). dw may be nullptr
// (frozen weight): then no weight-gradient work is done. accumulate_* add to the gradient
// buffers instead of overwriting them.
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const acc_t<T>* rstd,
                      int64_t rows, int64_t dim, bool accumulate_dx, bool accumulate_dw) {
  using A = acc_t<T>;
  MIL_CHECK(rows >= 0 && dim > 0, "rmsnorm_backward: bad sizes rows=", rows, " dim=", dim);
  MIL_CHECK(rstd != nullptr || rows == 0,
            "rmsnorm_backward: rstd from the forward pass is required");
  std::vector<A> dw_sum(dw ? size_t(dim) : 0, A(0));  // summed over rows, then added once
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    const T* gr = dout + r * dim;
    T* dxr = dx + r * dim;
    const A rs = rstd[r];
    const A coef = rs * rs * rmsnorm_dot3(gr, w, xr, dim) / A(dim);
    if (dw)  // before dx is written, so that dx may alias dout or x
      for (int64_t i = 0; i < dim; ++i) dw_sum[size_t(i)] += to_acc(gr[i]) * to_acc(xr[i]) * rs;
    if (accumulate_dx)
      for (int64_t i = 0; i < dim; ++i)
        dxr[i] = T(to_acc(dxr[i]) + rs * (to_acc(gr[i]) * to_acc(w[i]) - to_acc(xr[i]) * coef));
    else
      for (int64_t i = 0; i < dim; ++i)
        dxr[i] = T(rs * (to_acc(gr[i]) * to_acc(w[i]) - to_acc(xr[i]) * coef));
  }
  if (dw)
    for (int64_t i = 0; i < dim; ++i)
      dw[i] = T(accumulate_dw ? to_acc(dw[i]) + dw_sum[size_t(i)] : dw_sum[size_t(i)]);
}

}  // namespace mil::cpu
