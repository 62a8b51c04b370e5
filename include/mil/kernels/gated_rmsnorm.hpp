#pragma once
// Gated grouped RMSNorm of the Mamba-2 mixer (norm after the gate):
//   v = x * silu(z);  out = v * rstd_g * w,  rstd_g = 1 / sqrt(mean over group g of v^2 + eps)
// over groups of group_size consecutive features of each row. x and out are packed
// [rows, dim]; z is read with a row stride so it can be a column block of the input projection.
// rstd is [rows, dim / group_size] (may be null when not kept for backward).
//
// Backward, per group with gw = dout * w and n = group_size:
//   dv = rstd (gw - v rstd^2 dot(gw, v) / n);  dx = dv silu(z);  dz = dv x silu'(z)
//   dw = sum over rows of dout * v * rstd
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"

namespace mil {

struct GatedNormShape {
  int64_t rows = 0, dim = 0, group_size = 0;
  int64_t z_stride = 0;  // elements between rows of z (and dz); 0 = dim
  float eps = 1e-5f;

  int64_t zs() const { return z_stride ? z_stride : dim; }
  int64_t groups() const { return dim / group_size; }
};

inline void gated_rmsnorm_check(const char* op, const GatedNormShape& s) {
  MIL_CHECK(s.rows >= 0 && s.dim > 0 && s.group_size > 0 && s.dim % s.group_size == 0, op,
            ": bad sizes rows=", s.rows, " dim=", s.dim, " group_size=", s.group_size);
  MIL_CHECK(s.zs() >= s.dim, op, ": z stride ", s.zs(), " is smaller than dim ", s.dim);
  MIL_CHECK(std::isfinite(s.eps) && s.eps > 0.f, op, ": eps must be positive");
}

namespace cpu {

template <class T>
void gated_rmsnorm_forward(T* out, acc_t<T>* rstd, const T* x, const T* z, const T* w,
                           const GatedNormShape& s) {
  using A = acc_t<T>;
  gated_rmsnorm_check("gated_rmsnorm_forward", s);
  const int64_t G = s.group_size;
  std::vector<A> v(static_cast<size_t>(G));
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t g = 0; g < s.groups(); ++g) {
      A ss = 0;
      for (int64_t i = 0; i < G; ++i) {
        const int64_t j = g * G + i;
        v[size_t(i)] = to_acc(x[r * s.dim + j]) * silu(to_acc(z[r * s.zs() + j]));
        ss += v[size_t(i)] * v[size_t(i)];
      }
      const A rs = A(1) / std::sqrt(ss / A(G) + A(s.eps));
      if (rstd) rstd[r * s.groups() + g] = rs;
      for (int64_t i = 0; i < G; ++i)
        out[r * s.dim + g * G + i] = T(v[size_t(i)] * rs * to_acc(w[g * G + i]));
    }
}

// dx (packed like x) and dz (z's stride) take accumulate_inputs; dw (may be null: frozen) takes
// accumulate_dw. rstd is the forward's.
template <class T>
void gated_rmsnorm_backward(T* dx, T* dz, T* dw, const T* dout, const T* x, const T* z, const T* w,
                            const acc_t<T>* rstd, const GatedNormShape& s, bool accumulate_inputs,
                            bool accumulate_dw) {
  using A = acc_t<T>;
  gated_rmsnorm_check("gated_rmsnorm_backward", s);
  MIL_CHECK(rstd != nullptr || s.rows == 0, "gated_rmsnorm_backward: rstd from the forward is required");
  const int64_t G = s.group_size;
  std::vector<A> dw_sum(dw ? size_t(s.dim) : 0), v(static_cast<size_t>(G));
  auto put = [](T* dst, A val, bool acc) { *dst = T(acc ? to_acc(*dst) + val : val); };
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t g = 0; g < s.groups(); ++g) {
      const A rs = rstd[r * s.groups() + g];
      A dot = 0;
      for (int64_t i = 0; i < G; ++i) {
        const int64_t j = g * G + i;
        v[size_t(i)] = to_acc(x[r * s.dim + j]) * silu(to_acc(z[r * s.zs() + j]));
        dot += to_acc(dout[r * s.dim + j]) * to_acc(w[j]) * v[size_t(i)];
      }
      const A coef = rs * rs * dot / A(G);
      for (int64_t i = 0; i < G; ++i) {
        const int64_t j = g * G + i;
        const A go = to_acc(dout[r * s.dim + j]);
        if (dw) dw_sum[size_t(j)] += go * v[size_t(i)] * rs;
        const A dv = rs * (go * to_acc(w[j]) - v[size_t(i)] * coef);
        const A zv = to_acc(z[r * s.zs() + j]), xv = to_acc(x[r * s.dim + j]);
        const A sg = sigmoid(zv);
        if (dx) put(dx + r * s.dim + j, dv * zv * sg, accumulate_inputs);
        if (dz) put(dz + r * s.zs() + j, dv * xv * sg * (A(1) + zv * (A(1) - sg)), accumulate_inputs);
      }
    }
  for (int64_t j = 0; dw && j < s.dim; ++j) put(dw + j, dw_sum[size_t(j)], accumulate_dw);
}

}  // namespace cpu
}  // namespace mil
