#pragma once
// SwiGLU of a gated MLP: out = silu(gate) * up, silu(g) = g * sigmoid(g).
// gate and up are read with a row stride so they can be the two halves of one fused
// [rows, 2 * hidden] projection (up = gate + hidden, in_stride = 2 * hidden) or two separate
// [rows, hidden] buffers (in_stride = hidden). out is contiguous [rows, hidden].
//
// Backward, with s = sigmoid(g):
//   dup   = dout * silu(g)
//   dgate = dout * up * s * (1 + g * (1 - s))
#include <cmath>
#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"

namespace mil::cpu {

inline void swiglu_check_sizes(const char* op, int64_t rows, int64_t hidden, int64_t in_stride) {
  MIL_CHECK(rows >= 0 && hidden >= 0, op, ": bad sizes rows=", rows, " hidden=", hidden);
  MIL_CHECK(in_stride >= hidden, op, ": in_stride ", in_stride, " is smaller than hidden ", hidden);
}

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t rows, int64_t hidden,
                    int64_t in_stride) {
  using A = acc_t<T>;
  swiglu_check_sizes("swiglu_forward", rows, hidden, in_stride);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < hidden; ++j) {
      const A g = to_acc(gate[r * in_stride + j]), u = to_acc(up[r * in_stride + j]);
      out[r * hidden + j] = T(g * sigmoid(g) * u);
    }
}

// dgate and dup are laid out like gate and up (same in_stride); accumulate adds to both.
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t rows,
                     int64_t hidden, int64_t in_stride, bool accumulate) {
  using A = acc_t<T>;
  swiglu_check_sizes("swiglu_backward", rows, hidden, in_stride);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < hidden; ++j) {
      const int64_t k = r * in_stride + j;
      const A g = to_acc(gate[k]), u = to_acc(up[k]), d = to_acc(dout[r * hidden + j]);
      const A s = sigmoid(g);
      const A d_up = d * g * s;
      const A d_gate = d * u * s * (A(1) + g * (A(1) - s));
      dgate[k] = T(accumulate ? to_acc(dgate[k]) + d_gate : d_gate);
      dup[k] = T(accumulate ? to_acc(dup[k]) + d_up : d_up);
    }
}

}  // namespace mil::cpu
