#pragma once
// The Mamba-2 state-space scan (SSD), with the step-size softplus and the D skip fused. Per
// sequence and head h (x and B come from group g = h / (heads / groups), GQA-style; C is per head):
//   dt_t = softplus(dt_raw[t, h] + dt_bias[h]),  a = -exp(A_log[h])
//   S_t  = exp(dt_t a) S_{t-1} + dt_t x_t B_t^T          S: [head_dim, d_state], fp32
//   y_t  = S_t C_t + D[h] x_t
// Rows are tokens ([batch * seq, stride], sequences one after the other); within a row, group g's
// x is at columns g * head_dim, its B at g * d_state, head h's C at h * d_state, dt at h and y at
// h * head_dim. Strides let x, B, C and dt be column blocks of one fused buffer.
//
// This file is the plain-loop reference: the recurrence step by step (the GPU computes the same
// thing in chunks on tensor cores). States (optional) carry a sequence across calls: the state of
// slot slots[b] is the initial state of batch row b and receives its final state; a decode step is
// a call with seq = 1. Without states a sequence starts from S = 0.
//
// Backward (no states), with G_t the gradient of S_t (G_t = dy_t C_t^T + exp(dt_{t+1} a) G_{t+1}):
//   dC_t = S_t^T dy_t;  dx_t = D dy_t + dt_t G_t B_t;  dB_t = dt_t G_t^T x_t;  dD = sum dy.x
//   d(dt_t) = <G_t, x_t B_t^T> + a exp(dt_t a) <G_t, S_{t-1}>;  dA = sum_t dt_t exp(dt_t a) <G_t, S_{t-1}>
//   ddt_raw = d(dt) sigmoid(dt_raw + dt_bias);  ddt_bias = sum ddt_raw;  dA_log = dA * a
// dx and dB sum over the heads of a group. The reference recomputes states from checkpoints every
// 64 steps instead of keeping all of them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/math.hpp"

namespace mil {

struct SsdShape {
  int64_t batch = 1, seq = 0, heads = 0, groups = 0, head_dim = 0, d_state = 0;
  // Elements between consecutive tokens; 0 = packed (groups*head_dim, groups*d_state,
  // heads*d_state, heads, heads*head_dim).
  int64_t x_stride = 0, b_stride = 0, c_stride = 0, dt_stride = 0, y_stride = 0;

  int64_t xs() const { return x_stride ? x_stride : groups * head_dim; }
  int64_t bs() const { return b_stride ? b_stride : groups * d_state; }
  int64_t cs() const { return c_stride ? c_stride : heads * d_state; }
  int64_t dts() const { return dt_stride ? dt_stride : heads; }
  int64_t ys() const { return y_stride ? y_stride : heads * head_dim; }
  int64_t heads_per_group() const { return heads / groups; }
  int64_t state_size() const { return heads * head_dim * d_state; }  // floats per sequence
};

// Per-slot fp32 states [n_slots, heads, head_dim, d_state]; batch row b uses slot slots[b].
struct SsdStates {
  float* data = nullptr;
  int64_t n_slots = 0;
  const int32_t* slots = nullptr;
  bool active() const { return data != nullptr; }
};

inline void ssd_check(const char* op, const SsdShape& s, const SsdStates& st) {
  MIL_CHECK(s.batch >= 0 && s.seq >= 0 && s.heads > 0 && s.groups > 0 && s.head_dim > 0 &&
                s.d_state > 0,
            op, ": bad sizes batch=", s.batch, " seq=", s.seq, " heads=", s.heads,
            " groups=", s.groups, " head_dim=", s.head_dim, " d_state=", s.d_state);
  MIL_CHECK(s.heads % s.groups == 0, op, ": ", s.heads, " heads are not a multiple of ", s.groups,
            " groups");
  MIL_CHECK(s.xs() >= s.groups * s.head_dim && s.bs() >= s.groups * s.d_state &&
                s.cs() >= s.heads * s.d_state && s.dts() >= s.heads &&
                s.ys() >= s.heads * s.head_dim,
            op, ": a stride is smaller than its row");
  if (st.active())
    MIL_CHECK(st.n_slots > 0 && st.slots, op, ": states need n_slots > 0 and slots");
}

// Gradients; any may be null (not needed / frozen). dx, dB, dC and ddt use the strides of x, B, C
// and dt. accumulate_inputs covers dx, dB, dC and ddt; accumulate_params covers ddt_bias, dA_log
// and dD.
template <class T>
struct SsdGrads {
  T *dx = nullptr, *dB = nullptr, *dC = nullptr, *ddt = nullptr;
  T *ddt_bias = nullptr, *dA_log = nullptr, *dD = nullptr;
  bool accumulate_inputs = false, accumulate_params = false;
};

namespace cpu {

template <class T>
void ssd_scan_forward(T* y, const T* x, const T* B, const T* C, const T* dt, const T* dt_bias,
                      const T* A_log, const T* D, const SsdShape& s, const SsdStates& states = {}) {
  using A = acc_t<T>;
  ssd_check("ssd_scan_forward", s, states);
  const int64_t P = s.head_dim, N = s.d_state, r = s.heads_per_group();
  std::vector<A> S(size_t(P * N));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / r;
      float* st = nullptr;
      if (states.active()) {
        const int64_t slot = states.slots[b];
        MIL_CHECK(slot >= 0 && slot < states.n_slots, "ssd_scan_forward: slot ", slot,
                  " out of range [0, ", states.n_slots, ")");
        st = states.data + (slot * s.heads + h) * P * N;
      }
      for (int64_t i = 0; i < P * N; ++i) S[size_t(i)] = st ? A(st[i]) : A(0);
      const A a = -std::exp(to_acc(A_log[h]));
      const A d_skip = D ? to_acc(D[h]) : A(0);
      for (int64_t t = 0; t < s.seq; ++t) {
        const int64_t row = b * s.seq + t;
        const T* xt = x + row * s.xs() + g * P;
        const T* bt = B + row * s.bs() + g * N;
        const T* ct = C + row * s.cs() + h * N;
        const A delta = softplus(to_acc(dt[row * s.dts() + h]) + to_acc(dt_bias[h]));
        const A decay = std::exp(delta * a);
        for (int64_t p = 0; p < P; ++p) {
          const A xp = delta * to_acc(xt[p]);
          A acc = d_skip * to_acc(xt[p]);
          for (int64_t n = 0; n < N; ++n) {
            A& v = S[size_t(p * N + n)];
            v = decay * v + xp * to_acc(bt[n]);
            acc += v * to_acc(ct[n]);
          }
          y[row * s.ys() + h * P + p] = T(acc);
        }
      }
      if (st)
        for (int64_t i = 0; i < P * N; ++i) st[i] = float(S[size_t(i)]);
    }
}


template <class T>
void ssd_scan_backward(const SsdGrads<T>& gr, const T* dy, const T* x, const T* B, const T* C,
                       const T* dt, const T* dt_bias, const T* A_log, const T* D,
                       const SsdShape& s) {
  using A = acc_t<T>;
  ssd_check("ssd_scan_backward", s, SsdStates{});
  const int64_t P = s.head_dim, N = s.d_state, r = s.heads_per_group(), rows = s.batch * s.seq;
  constexpr int64_t kSegment = 64;
  // Input gradients are summed here over heads (x, B) and written once at the end.
  std::vector<A> dx(size_t(rows * s.groups * P)), dB(size_t(rows * s.groups * N));
  std::vector<A> dC(size_t(rows * s.heads * N)), ddt(size_t(rows * s.heads));
  std::vector<A> ddt_bias(size_t(s.heads)), dA_log(size_t(s.heads)), dD(size_t(s.heads));
  std::vector<A> G(size_t(P * N)), seg(size_t((kSegment + 1) * P * N)), delta(size_t(s.seq));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / r;
      const A a = -std::exp(to_acc(A_log[h]));
      const A d_skip = D ? to_acc(D[h]) : A(0);
      auto xt = [&](int64_t t) { return x + (b * s.seq + t) * s.xs() + g * P; };
      auto bt = [&](int64_t t) { return B + (b * s.seq + t) * s.bs() + g * N; };
      auto ct = [&](int64_t t) { return C + (b * s.seq + t) * s.cs() + h * N; };
      auto raw = [&](int64_t t) { return to_acc(dt[(b * s.seq + t) * s.dts() + h]) + to_acc(dt_bias[h]); };
      for (int64_t t = 0; t < s.seq; ++t) delta[size_t(t)] = softplus(raw(t));
      auto step = [&](A* next, const A* prev, int64_t t) {
        const A decay = std::exp(delta[size_t(t)] * a);
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n)
            next[p * N + n] = decay * prev[p * N + n] +
                              delta[size_t(t)] * to_acc(xt(t)[p]) * to_acc(bt(t)[n]);
      };
      // Checkpoints: the state before each segment.
      const int64_t n_seg = (s.seq + kSegment - 1) / kSegment;
      std::vector<A> checkpoints(size_t(std::max<int64_t>(n_seg, 1) * P * N));
      std::vector<A> cur(size_t(P * N)), nxt(size_t(P * N));
      for (int64_t t = 0; t < s.seq; ++t) {
        if (t % kSegment == 0) std::copy(cur.begin(), cur.end(), checkpoints.begin() + (t / kSegment) * P * N);
        step(nxt.data(), cur.data(), t);
        std::swap(cur, nxt);
      }
      std::fill(G.begin(), G.end(), A(0));
      A dA = 0;
      for (int64_t sg = n_seg - 1; sg >= 0; --sg) {
        const int64_t t0 = sg * kSegment, t1 = std::min(s.seq, t0 + kSegment);
        std::copy(checkpoints.begin() + sg * P * N, checkpoints.begin() + (sg + 1) * P * N, seg.begin());
        for (int64_t t = t0; t < t1; ++t) step(&seg[size_t((t - t0 + 1) * P * N)], &seg[size_t((t - t0) * P * N)], t);
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t row = b * s.seq + t;
          const A* S_t = &seg[size_t((t - t0 + 1) * P * N)];
          const A* S_prev = &seg[size_t((t - t0) * P * N)];
          const T* dyt = dy + row * s.ys() + h * P;
          const A dlt = delta[size_t(t)], decay = std::exp(dlt * a);
          if (t + 1 < s.seq) {  // G_t = decay_{t+1} G_{t+1} + dy_t C_t^T
            const A dn = std::exp(delta[size_t(t + 1)] * a);
            for (auto& v : G) v *= dn;
          }
          for (int64_t p = 0; p < P; ++p)
            for (int64_t n = 0; n < N; ++n) G[size_t(p * N + n)] += to_acc(dyt[p]) * to_acc(ct(t)[n]);
          A d_delta = 0, g_prev = 0;
          for (int64_t p = 0; p < P; ++p) {
            A gx = 0;
            const A xp = to_acc(xt(t)[p]), dyp = to_acc(dyt[p]);
            for (int64_t n = 0; n < N; ++n) {
              const A gv = G[size_t(p * N + n)];
              gx += gv * to_acc(bt(t)[n]);
              dB[size_t((row * s.groups + g) * N + n)] += dlt * gv * xp;
              dC[size_t((row * s.heads + h) * N + n)] += S_t[p * N + n] * dyp;
              g_prev += gv * S_prev[p * N + n];
            }
            dx[size_t((row * s.groups + g) * P + p)] += d_skip * dyp + dlt * gx;
            d_delta += gx * xp;
            dD[size_t(h)] += dyp * xp;
          }
          d_delta += a * decay * g_prev;
          dA += dlt * decay * g_prev;
          const A d_raw = d_delta * sigmoid(raw(t));
          ddt[size_t(row * s.heads + h)] = d_raw;
          ddt_bias[size_t(h)] += d_raw;
        }
      }
      dA_log[size_t(h)] += dA * a;
    }
  auto put = [](T* dst, A v, bool acc) { *dst = T(acc ? to_acc(*dst) + v : v); };
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t i = 0; gr.dx && i < s.groups * P; ++i)
      put(gr.dx + row * s.xs() + i, dx[size_t(row * s.groups * P + i)], gr.accumulate_inputs);
    for (int64_t i = 0; gr.dB && i < s.groups * N; ++i)
      put(gr.dB + row * s.bs() + i, dB[size_t(row * s.groups * N + i)], gr.accumulate_inputs);
    for (int64_t i = 0; gr.dC && i < s.heads * N; ++i)
      put(gr.dC + row * s.cs() + i, dC[size_t(row * s.heads * N + i)], gr.accumulate_inputs);
    for (int64_t h = 0; gr.ddt && h < s.heads; ++h)
      put(gr.ddt + row * s.dts() + h, ddt[size_t(row * s.heads + h)], gr.accumulate_inputs);
  }
  for (int64_t h = 0; h < s.heads; ++h) {
    if (gr.ddt_bias) put(gr.ddt_bias + h, ddt_bias[size_t(h)], gr.accumulate_params);
    if (gr.dA_log) put(gr.dA_log + h, dA_log[size_t(h)], gr.accumulate_params);
    if (gr.dD) put(gr.dD + h, dD[size_t(h)], gr.accumulate_params);
  }
}

}  // namespace cpu
}  // namespace mil
