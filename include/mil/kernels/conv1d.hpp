#pragma once
// Causal depthwise conv1d over the channels of a token sequence (the short convolution of Mamba),
// optionally followed by SiLU:
//   y[b, t, c] = act(bias[c] + sum_k w[c, k] * x[b, t - (K - 1) + k, c]),   x at t < 0 is 0
// w is [channels, kernel] (PyTorch's conv1d weight [C, 1, K] with padding K - 1, truncated).
// x and y are row-major [batch * seq, stride] with the channels at the start of each row, so they
// can be column blocks of a fused projection (x_stride / y_stride; 0 means packed).
//
// Incremental use (prefill in chunks, decode, speculative verification) passes a ring state:
// per sequence slot the last inputs, input of absolute position p at ring row p % len. A call of
// `seq` tokens starting at positions[b] reads the inputs before it from the ring (positions < 0
// read as 0, so a fresh sequence needs no reset) and leaves the ring holding the last `len`
// inputs. With len >= K - 1 + r a sequence can be rolled back by r tokens by lowering its
// position. A decode step is a call with seq = 1. y must not overlap x.
//
// Backward (no ring: training runs whole sequences), with a = pre-activation:
//   da = dy * silu'(a) (or dy without SiLU);  dx[t] = sum_k w[k] da[t + K - 1 - k]
//   dw[c, k] = sum_{b,t} da[t] x[t - (K-1) + k];  dbias[c] = sum_{b,t} da[t]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"

namespace mil {

struct Conv1dShape {
  int64_t batch = 1, seq = 0, channels = 0, kernel = 4;
  int64_t x_stride = 0, y_stride = 0;  // elements between consecutive tokens; 0 = channels
  bool silu = true;

  int64_t xs() const { return x_stride ? x_stride : channels; }
  int64_t ys() const { return y_stride ? y_stride : channels; }
};

// The per-slot ring of past inputs: data [n_slots, len, channels]; batch row b uses slot
// slots[b] and its first token has absolute position positions[b] (both device arrays on the GPU).
template <class T>
struct Conv1dRing {
  T* data = nullptr;
  int64_t len = 0, n_slots = 0;
  const int32_t* slots = nullptr;
  const int32_t* positions = nullptr;
  bool active() const { return data != nullptr; }
};

template <class T>
inline void conv1d_check(const char* op, const Conv1dShape& s, const Conv1dRing<T>& ring) {
  MIL_CHECK(s.batch >= 0 && s.seq >= 0 && s.channels > 0 && s.kernel >= 1 && s.kernel <= 8, op,
            ": bad sizes batch=", s.batch, " seq=", s.seq, " channels=", s.channels,
            " kernel=", s.kernel, " (kernel 1..8)");
  MIL_CHECK(s.xs() >= s.channels && s.ys() >= s.channels, op, ": strides ", s.xs(), "/", s.ys(),
            " are smaller than ", s.channels, " channels");
  if (ring.active())
    MIL_CHECK(ring.len >= s.kernel - 1 && ring.n_slots > 0 && ring.slots && ring.positions, op,
              ": the ring needs len >= kernel - 1 (", ring.len, " < ", s.kernel - 1,
              "), slots and positions");
}

namespace cpu {

template <class A>
inline A conv1d_silu_grad(A a) {
  const A s = sigmoid(a);
  return s * (A(1) + a * (A(1) - s));
}

template <class T>
void conv1d_forward(T* y, const T* x, const T* w, const T* bias, const Conv1dShape& s,
                    const Conv1dRing<T>& ring = {}) {
  using A = acc_t<T>;
  conv1d_check("conv1d_forward", s, ring);
  const int64_t K = s.kernel, C = s.channels;
  for (int64_t b = 0; b < s.batch; ++b) {
    int64_t slot = 0, start = 0;
    if (ring.active()) {
      slot = ring.slots[b];
      start = ring.positions[b];
      MIL_CHECK(slot >= 0 && slot < ring.n_slots && start >= 0, "conv1d_forward: slot ", slot,
                " or position ", start, " out of range");
    }
    T* r = ring.active() ? ring.data + slot * ring.len * C : nullptr;
    // Input of relative token t (t < 0: from the ring, before this call).
    auto input = [&](int64_t t, int64_t c) -> A {
      if (t >= 0) return to_acc(x[(b * s.seq + t) * s.xs() + c]);
      const int64_t p = start + t;
      if (!r || p < 0) return A(0);
      return to_acc(r[(p % ring.len) * C + c]);
    };
    for (int64_t t = 0; t < s.seq; ++t)
      for (int64_t c = 0; c < C; ++c) {
        A a = bias ? to_acc(bias[c]) : A(0);
        for (int64_t k = 0; k < K; ++k) a += to_acc(w[c * K + k]) * input(t - (K - 1) + k, c);
        y[(b * s.seq + t) * s.ys() + c] = T(s.silu ? silu(a) : a);
      }
    if (r)  // after all reads: the new inputs overwrite ring rows of older positions
      for (int64_t t = std::max<int64_t>(0, s.seq - ring.len); t < s.seq; ++t)
        for (int64_t c = 0; c < C; ++c)
          r[((start + t) % ring.len) * C + c] = x[(b * s.seq + t) * s.xs() + c];
  }
}

// dx uses x's stride and dy y's. dx, dw and dbias may each be null (not needed / frozen);
// accumulate_dw covers dw and dbias.
template <class T>
void conv1d_backward(T* dx, T* dw, T* dbias, const T* dy, const T* x, const T* w, const T* bias,
                     const Conv1dShape& s, bool accumulate_dx, bool accumulate_dw) {
  using A = acc_t<T>;
  conv1d_check("conv1d_backward", s, Conv1dRing<T>{});
  const int64_t K = s.kernel, C = s.channels, n = s.batch * s.seq;
  std::vector<A> da(size_t(n * C));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < s.seq; ++t)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t row = b * s.seq + t;
        A g = to_acc(dy[row * s.ys() + c]);
        if (s.silu) {
          A a = bias ? to_acc(bias[c]) : A(0);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t tt = t - (K - 1) + k;
            if (tt >= 0) a += to_acc(w[c * K + k]) * to_acc(x[(b * s.seq + tt) * s.xs() + c]);
          }
          g *= conv1d_silu_grad(a);
        }
        da[size_t(row * C + c)] = g;
      }
  std::vector<A> dw_sum(dw ? size_t(C * K) : 0), db_sum(dbias ? size_t(C) : 0);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < s.seq; ++t)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t row = b * s.seq + t;
        A g = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t tt = t + (K - 1) - k;  // output that input t feeds through tap k
          if (tt < s.seq) g += to_acc(w[c * K + k]) * da[size_t((b * s.seq + tt) * C + c)];
        }
        if (dx) {
          T& d = dx[row * s.xs() + c];
          d = T(accumulate_dx ? to_acc(d) + g : g);
        }
        const A gr = da[size_t(row * C + c)];
        if (dbias) db_sum[size_t(c)] += gr;
        if (dw)
          for (int64_t k = 0; k < K; ++k) {
            const int64_t tt = t - (K - 1) + k;
            if (tt >= 0) dw_sum[size_t(c * K + k)] += gr * to_acc(x[(b * s.seq + tt) * s.xs() + c]);
          }
      }
  for (int64_t i = 0; dw && i < C * K; ++i)
    dw[i] = T(accumulate_dw ? to_acc(dw[i]) + dw_sum[size_t(i)] : dw_sum[size_t(i)]);
  for (int64_t c = 0; dbias && c < C; ++c)
    dbias[c] = T(accumulate_dw ? to_acc(dbias[c]) + db_sum[size_t(c)] : db_sum[size_t(c)]);
}

}  // namespace cpu
}  // namespace mil
