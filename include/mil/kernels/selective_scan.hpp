#pragma once
// The Mamba-1 selective scan (S6) with grouped B and C, fused softplus, D skip and SiLU gate.
// Per sequence and channel c, with state h[n] (n < d_state), fp32:
//   dt  = softplus(delta[t, c] + bias_scale * delta_bias[c])
//   h_n = exp(dt a[c, n]) h_n + dt B[t, gB(c), n] u[t, c],   a = -exp(A_log[c, n])
//   y   = (sum_n C[t, gC(c), n] h_n + D[c] u[t, c]) * silu(z[t, c])
// B has b_groups groups and C c_groups groups of d_state values per token; channel c reads group
// gB(c) = c / (channels / b_groups) of B and gC(c) = c / (channels / c_groups) of C (Mamba-in-Llama:
// channels in groups of 16, B shared GQA-style across c_groups / b_groups groups).
// bias_scale = 2 reproduces the reference code's doubled dt bias (its dt_proj adds the bias and
// its scan adds it again). delta_bias, D and z may be null (absent).
//
// States (optional) carry a sequence across calls like the SSD scan: [n_slots, channels, d_state]
// fp32, slot slots[b] for batch row b; a decode step is a call with seq = 1.
//
// Backward (no states), with G_n(t) = dy_t C_n + exp(dt_{t+1} a_n) G_n(t+1), dy = dout silu(z):
//   dC_n = dy h_n(t);  du = D dy + dt sum_n G_n B_n;  dB_n = dt G_n u;  dD = sum dy u
//   d(dt) = sum_n G_n (B_n u + a_n exp(dt a_n) h_n(t-1));  dA_n = sum_t G_n dt exp(dt a_n) h_n(t-1)
//   ddelta = d(dt) sigmoid(.);  ddelta_bias = bias_scale sum ddelta;  dA_log = dA * a
//   dz = dout * (sum_n C_n h_n + D u) * silu'(z)
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"
#include "ssd_scan.hpp"

namespace mil {

struct SelectiveScanShape {
  int64_t batch = 1, seq = 0, channels = 0, d_state = 16, b_groups = 0, c_groups = 0;
  // Elements between consecutive tokens; 0 = packed (channels or groups * d_state).
  int64_t u_stride = 0, delta_stride = 0, b_stride = 0, c_stride = 0, z_stride = 0, y_stride = 0;
  float bias_scale = 1.f;

  int64_t us() const { return u_stride ? u_stride : channels; }
  int64_t ds() const { return delta_stride ? delta_stride : channels; }
  int64_t bs() const { return b_stride ? b_stride : b_groups * d_state; }
  int64_t cs() const { return c_stride ? c_stride : c_groups * d_state; }
  int64_t zs() const { return z_stride ? z_stride : channels; }
  int64_t ys() const { return y_stride ? y_stride : channels; }
  int64_t b_group(int64_t c) const { return c / (channels / b_groups); }
  int64_t c_group(int64_t c) const { return c / (channels / c_groups); }
  int64_t state_size() const { return channels * d_state; }  // floats per sequence
};

// Per-slot fp32 states [n_slots, channels, d_state]; batch row b uses slot slots[b].
struct SelectiveStates {
  float* data = nullptr;
  int64_t n_slots = 0;
  const int32_t* slots = nullptr;
  bool active() const { return data != nullptr; }
};

inline void selective_scan_check(const char* op, const SelectiveScanShape& s,
                                 const SelectiveStates& st) {
  MIL_CHECK(s.batch >= 0 && s.seq >= 0 && s.channels > 0 && s.d_state > 0 && s.b_groups > 0 &&
                s.c_groups > 0,
            op, ": bad sizes batch=", s.batch, " seq=", s.seq, " channels=", s.channels,
            " d_state=", s.d_state, " b_groups=", s.b_groups, " c_groups=", s.c_groups);
  MIL_CHECK(s.channels % s.b_groups == 0 && s.channels % s.c_groups == 0, op, ": ", s.channels,
            " channels are not a multiple of the ", s.b_groups, " B groups and ", s.c_groups,
            " C groups");
  MIL_CHECK(s.us() >= s.channels && s.ds() >= s.channels && s.zs() >= s.channels &&
                s.ys() >= s.channels && s.bs() >= s.b_groups * s.d_state &&
                s.cs() >= s.c_groups * s.d_state,
            op, ": a stride is smaller than its row");
  MIL_CHECK(std::isfinite(s.bias_scale), op, ": bias_scale must be finite");
  if (st.active()) MIL_CHECK(st.n_slots > 0 && st.slots, op, ": states need n_slots > 0 and slots");
}

// Gradients; any may be null (not needed / frozen). du, ddelta, dB, dC and dz use the strides of
// their inputs; accumulate_inputs covers them, accumulate_params covers ddelta_bias, dA_log and dD.
template <class T>
struct SelectiveScanGrads {
  T *du = nullptr, *ddelta = nullptr, *dB = nullptr, *dC = nullptr, *dz = nullptr;
  T *ddelta_bias = nullptr, *dA_log = nullptr, *dD = nullptr;
  bool accumulate_inputs = false, accumulate_params = false;
};

namespace cpu {

template <class T>
void selective_scan_forward(T* y, const T* u, const T* delta, const T* delta_bias, const T* A_log,
                            const T* B, const T* C, const T* D, const T* z,
                            const SelectiveScanShape& s, const SelectiveStates& states = {}) {
  using A = acc_t<T>;
  selective_scan_check("selective_scan_forward", s, states);
  const int64_t N = s.d_state;
  std::vector<A> h(static_cast<size_t>(N)), a(static_cast<size_t>(N));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t c = 0; c < s.channels; ++c) {
      float* st = nullptr;
      if (states.active()) {
        const int64_t slot = states.slots[b];
        MIL_CHECK(slot >= 0 && slot < states.n_slots, "selective_scan_forward: slot ", slot,
                  " out of range [0, ", states.n_slots, ")");
        st = states.data + (slot * s.channels + c) * N;
      }
      for (int64_t n = 0; n < N; ++n) {
        h[size_t(n)] = st ? A(st[n]) : A(0);
        a[size_t(n)] = -std::exp(to_acc(A_log[c * N + n]));
      }
      const A bias = delta_bias ? A(s.bias_scale) * to_acc(delta_bias[c]) : A(0);
      const A d_skip = D ? to_acc(D[c]) : A(0);
      const int64_t gb = s.b_group(c), gc = s.c_group(c);
      for (int64_t t = 0; t < s.seq; ++t) {
        const int64_t row = b * s.seq + t;
        const A ut = to_acc(u[row * s.us() + c]);
        const A dt = softplus(to_acc(delta[row * s.ds() + c]) + bias);
        const T* bt = B + row * s.bs() + gb * N;
        const T* ctp = C + row * s.cs() + gc * N;
        A out = d_skip * ut;
        for (int64_t n = 0; n < N; ++n) {
          h[size_t(n)] = std::exp(dt * a[size_t(n)]) * h[size_t(n)] + dt * to_acc(bt[n]) * ut;
          out += to_acc(ctp[n]) * h[size_t(n)];
        }
        if (z) {
          const A zv = to_acc(z[row * s.zs() + c]);
          out *= zv * sigmoid(zv);
        }
        y[row * s.ys() + c] = T(out);
      }
      if (st)
        for (int64_t n = 0; n < N; ++n) st[n] = float(h[size_t(n)]);
    }
}


template <class T>
void selective_scan_backward(const SelectiveScanGrads<T>& gr, const T* dout, const T* u,
                             const T* delta, const T* delta_bias, const T* A_log, const T* B,
                             const T* C, const T* D, const T* z, const SelectiveScanShape& s) {
  using A = acc_t<T>;
  selective_scan_check("selective_scan_backward", s, SelectiveStates{});
  const int64_t N = s.d_state, rows = s.batch * s.seq;
  std::vector<A> dB(size_t(rows * s.b_groups * N)), dC(size_t(rows * s.c_groups * N));
  std::vector<A> dA_log(size_t(s.channels * N)), dD(size_t(s.channels)), dbias(size_t(s.channels));
  // Per channel the states of every step (reference only: seq * d_state values).
  std::vector<A> hs(size_t((s.seq + 1) * N)), dt(size_t(s.seq));
  std::vector<A> a(static_cast<size_t>(N)), G(static_cast<size_t>(N)), dA(static_cast<size_t>(N));
  auto put = [](T* dst, A v, bool acc) { *dst = T(acc ? to_acc(*dst) + v : v); };
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t c = 0; c < s.channels; ++c) {
      for (int64_t n = 0; n < N; ++n) a[size_t(n)] = -std::exp(to_acc(A_log[c * N + n]));
      const A bias = delta_bias ? A(s.bias_scale) * to_acc(delta_bias[c]) : A(0);
      const A d_skip = D ? to_acc(D[c]) : A(0);
      const int64_t gb = s.b_group(c), gc = s.c_group(c);
      auto row_of = [&](int64_t t) { return b * s.seq + t; };
      auto ut = [&](int64_t t) { return to_acc(u[row_of(t) * s.us() + c]); };
      auto bt = [&](int64_t t) { return B + row_of(t) * s.bs() + gb * N; };
      auto ctp = [&](int64_t t) { return C + row_of(t) * s.cs() + gc * N; };
      for (int64_t n = 0; n < N; ++n) hs[size_t(n)] = 0;
      for (int64_t t = 0; t < s.seq; ++t) {
        dt[size_t(t)] = softplus(to_acc(delta[row_of(t) * s.ds() + c]) + bias);
        for (int64_t n = 0; n < N; ++n)
          hs[size_t((t + 1) * N + n)] = std::exp(dt[size_t(t)] * a[size_t(n)]) * hs[size_t(t * N + n)] +
                                        dt[size_t(t)] * to_acc(bt(t)[n]) * ut(t);
      }
      std::fill(G.begin(), G.end(), A(0));
      std::fill(dA.begin(), dA.end(), A(0));
      for (int64_t t = s.seq - 1; t >= 0; --t) {
        const int64_t row = row_of(t);
        const A* h_t = &hs[size_t((t + 1) * N)];
        const A* h_prev = &hs[size_t(t * N)];
        A go = to_acc(dout[row * s.ys() + c]), dy = go;
        if (z) {
          const A zv = to_acc(z[row * s.zs() + c]), sg = sigmoid(zv);
          A ssm = d_skip * ut(t);
          for (int64_t n = 0; n < N; ++n) ssm += to_acc(ctp(t)[n]) * h_t[n];
          dy = go * zv * sg;
          if (gr.dz) put(gr.dz + row * s.zs() + c, go * ssm * sg * (A(1) + zv * (A(1) - sg)), gr.accumulate_inputs);
        }
        if (t + 1 < s.seq)
          for (int64_t n = 0; n < N; ++n) G[size_t(n)] *= std::exp(dt[size_t(t + 1)] * a[size_t(n)]);
        A du = d_skip * dy, d_dt = 0;
        for (int64_t n = 0; n < N; ++n) {
          A& gv = G[size_t(n)];
          gv += dy * to_acc(ctp(t)[n]);
          const A bn = to_acc(bt(t)[n]), decay = std::exp(dt[size_t(t)] * a[size_t(n)]);
          dC[size_t((row * s.c_groups + gc) * N + n)] += dy * h_t[n];
          dB[size_t((row * s.b_groups + gb) * N + n)] += dt[size_t(t)] * gv * ut(t);
          du += dt[size_t(t)] * gv * bn;
          d_dt += gv * (bn * ut(t) + a[size_t(n)] * decay * h_prev[n]);
          dA[size_t(n)] += gv * dt[size_t(t)] * decay * h_prev[n];
        }
        dD[size_t(c)] += dy * ut(t);
        const A d_raw = d_dt * sigmoid(to_acc(delta[row * s.ds() + c]) + bias);
        dbias[size_t(c)] += A(s.bias_scale) * d_raw;
        if (gr.du) put(gr.du + row * s.us() + c, du, gr.accumulate_inputs);
        if (gr.ddelta) put(gr.ddelta + row * s.ds() + c, d_raw, gr.accumulate_inputs);
      }
      for (int64_t n = 0; n < N; ++n) dA_log[size_t(c * N + n)] += dA[size_t(n)] * a[size_t(n)];
    }
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t i = 0; gr.dB && i < s.b_groups * N; ++i)
      put(gr.dB + row * s.bs() + i, dB[size_t(row * s.b_groups * N + i)], gr.accumulate_inputs);
    for (int64_t i = 0; gr.dC && i < s.c_groups * N; ++i)
      put(gr.dC + row * s.cs() + i, dC[size_t(row * s.c_groups * N + i)], gr.accumulate_inputs);
  }
  for (int64_t c = 0; c < s.channels; ++c) {
    if (gr.dD) put(gr.dD + c, dD[size_t(c)], gr.accumulate_params);
    if (gr.ddelta_bias) put(gr.ddelta_bias + c, dbias[size_t(c)], gr.accumulate_params);
    for (int64_t n = 0; gr.dA_log && n < N; ++n)
      put(gr.dA_log + c * N + n, dA_log[size_t(c * N + n)], gr.accumulate_params);
  }
}

}  // namespace cpu
}  // namespace mil
