#pragma once
// The differentiable cores of the Mamba mixers: everything between the input projection(s) and
// the output projection, as one tape node each (the tape stays short and the node writes every
// column of its inputs' gradients, so no gradient buffer needs zero-filling).
//
//   Mamba-2: zxbcdt [rows, z | x | B | C | dt] -> gated_rmsnorm(ssd(silu(conv([x|B|C])), dt), z)
//   Mamba-1: proj [rows, x | z | B | C], dt [rows, d_inner] ->
//            selective_scan(silu(conv(repeat_groups(x))), dt, B, C, z)
// Input gradients are computed whole into fresh tensors and handed over with give_grad (moved in
// when nothing else wrote them); small parameter gradients likewise.
#include "../kernels/conv1d.hpp"
#include "../kernels/gated_rmsnorm.hpp"
#include "../kernels/repeat_groups.hpp"
#include "../kernels/selective_scan.hpp"
#include "../kernels/ssd_scan.hpp"
#if defined(__CUDACC__)
#include "../kernels/conv1d.cuh"
#include "../kernels/gated_rmsnorm.cuh"
#include "../kernels/repeat_groups.cuh"
#include "../kernels/selective_scan.cuh"
#include "../kernels/ssd_scan.cuh"
#endif
#include "ops.hpp"

namespace mil::ag {

struct Mamba2Dims {
  int64_t batch = 1, seq = 0, heads = 0, kv_heads = 0, head_dim = 0, conv_kernel = 4;
  float norm_eps = 1e-5f;
  int64_t d_inner() const { return heads * head_dim; }
  int64_t d_xb() const { return kv_heads * head_dim; }
  int64_t conv_channels() const { return 2 * d_xb() + d_inner(); }
  int64_t width() const { return 2 * d_inner() + 2 * d_xb() + heads; }  // in_proj rows
  int64_t rows() const { return batch * seq; }

  Conv1dShape conv() const { return {batch, seq, conv_channels(), conv_kernel, width(), 0, true}; }
  // x, B, C read from the conv output [rows, conv_channels]; dt from the projection.
  SsdShape ssd() const {
    SsdShape s{batch, seq, heads, kv_heads, head_dim, head_dim};
    s.x_stride = s.b_stride = s.c_stride = conv_channels();
    s.dt_stride = width();
    return s;
  }
  GatedNormShape norm() const { return {rows(), d_inner(), head_dim, width(), norm_eps}; }
  int64_t dt_offset() const { return d_inner() + conv_channels(); }
};

struct Mamba1Dims {
  int64_t batch = 1, seq = 0, d_inner = 0, d_xb = 0, d_state = 16, conv_kernel = 4;
  float bias_scale = 1.f;  // 2: the reference code's doubled dt bias
  int64_t width() const { return 2 * d_xb + 2 * d_inner; }  // in_proj rows [x|z|B|C]
  int64_t rows() const { return batch * seq; }

  RepeatGroupsShape repeat() const {
    return {rows(), d_xb / d_state, d_state, d_inner / d_xb, width()};
  }
  Conv1dShape conv() const { return {batch, seq, d_inner, conv_kernel, 0, 0, true}; }
  SelectiveScanShape scan() const {
    SelectiveScanShape s{batch, seq, d_inner, d_state, d_xb / d_state, d_inner / d_state};
    s.b_stride = s.c_stride = s.z_stride = width();
    s.bias_scale = bias_scale;
    return s;
  }
  int64_t z_offset() const { return d_xb; }
  int64_t b_offset() const { return d_xb + d_inner; }
  int64_t c_offset() const { return 2 * d_xb + d_inner; }
};

// A parameter gradient computed into a fresh tensor (overwrite), then handed to the parameter.
template <Element T, Device D>
struct ParamGrad {
  const Var<T, D>* param;
  Tensor<T, D> g;
  explicit ParamGrad(const Var<T, D>& p) : param(&p) {
    if (p.requires_grad()) g = Tensor<T, D>::empty(p.shape());
  }
  T* data() { return g.data(); }  // null when the parameter is frozen
  void give() {
    if (param->requires_grad()) give_grad(*param, std::move(g));
  }
};

template <Element T, Device D>
Var<T, D> mamba2_core(Tape& tape, const Var<T, D>& zxbcdt, const Var<T, D>& conv_w,
                      const Var<T, D>& conv_b, const Var<T, D>& dt_bias, const Var<T, D>& A_log,
                      const Var<T, D>& Dp, const Var<T, D>& norm_w, const Mamba2Dims& m) {
  check_rank2("mamba2_core", zxbcdt.shape());
  MIL_CHECK(zxbcdt.size(0) == m.rows() && zxbcdt.size(1) == m.width(), "mamba2_core: input ",
            zxbcdt.shape().str(), " is not [", m.rows(), ", ", m.width(), "]");
  MIL_CHECK(conv_w.numel() == m.conv_channels() * m.conv_kernel &&
                conv_b.numel() == m.conv_channels() && dt_bias.numel() == m.heads &&
                A_log.numel() == m.heads && Dp.numel() == m.heads && norm_w.numel() == m.d_inner(),
            "mamba2_core: parameter sizes do not match the mixer");
  const std::initializer_list<const Var<T, D>*> params{&conv_w, &conv_b, &dt_bias, &A_log, &Dp, &norm_w};
  bool grad = zxbcdt.requires_grad();
  for (auto* p : params) grad = grad || p->requires_grad();
  const int64_t rows = m.rows();
  Var<T, D> out(Tensor<T, D>::empty(Shape{rows, m.d_inner()}), grad);
  const bool record = tape.recording() && grad;
  auto xbc = Tensor<T, D>::empty(Shape{rows, m.conv_channels()});
  auto y = Tensor<T, D>::empty(Shape{rows, m.d_inner()});
  Acc<T, D> rstd = record ? Acc<T, D>::empty(Shape{rows * m.heads}) : Acc<T, D>();
  const T* in = zxbcdt.value().data();
  MIL_RUN(D, conv1d_forward, xbc.data(), in + m.d_inner(), conv_w.value().data(),
          conv_b.value().data(), m.conv(), Conv1dRing<T>{});
  const T* xp = xbc.data();
  MIL_RUN(D, ssd_scan_forward, y.data(), xp, xp + m.d_xb(), xp + 2 * m.d_xb(), in + m.dt_offset(),
          dt_bias.value().data(), A_log.value().data(), Dp.value().data(), m.ssd(), SsdStates{});
  MIL_RUN(D, gated_rmsnorm_forward, out.value().data(), rstd.data(), y.data(), in,
          norm_w.value().data(), m.norm());
  struct Node {
    Var<T, D> zxbcdt, conv_w, conv_b, dt_bias, A_log, Dp, norm_w, out;
    Tensor<T, D> xbc, y;
    Acc<T, D> rstd;
    Mamba2Dims m;
    void backward() {
      if (!out.has_grad()) return;
      const int64_t rows = m.rows();
      const T* in = zxbcdt.value().data();
      // Every column of din is written below: z by the norm, [x|B|C] by the conv, dt by the scan.
      auto din = Tensor<T, D>::empty(zxbcdt.shape());
      auto dy = Tensor<T, D>::empty(Shape{rows, m.d_inner()});
      T* dnorm = nullptr;
      bool acc_norm = false;
      if (norm_w.requires_grad()) {
        auto [g, acc] = norm_w.grad_for_write();
        dnorm = g.data(), acc_norm = acc;
      }
      MIL_RUN(D, gated_rmsnorm_backward, dy.data(), din.data(), dnorm, out.grad().data(), y.data(),
              in, norm_w.value().data(), rstd.data(), m.norm(), false, acc_norm);
      auto dxbc = Tensor<T, D>::empty(Shape{rows, m.conv_channels()});
      ParamGrad<T, D> g_bias(dt_bias), g_alog(A_log), g_d(Dp), g_w(conv_w), g_b(conv_b);
      SsdGrads<T> sg{dxbc.data(), dxbc.data() + m.d_xb(), dxbc.data() + 2 * m.d_xb(),
                     din.data() + m.dt_offset(), g_bias.data(), g_alog.data(), g_d.data()};
      const T* xp = xbc.data();
      MIL_RUN(D, ssd_scan_backward, sg, dy.data(), xp, xp + m.d_xb(), xp + 2 * m.d_xb(),
              in + m.dt_offset(), dt_bias.value().data(), A_log.value().data(), Dp.value().data(),
              m.ssd());
      MIL_RUN(D, conv1d_backward, din.data() + m.d_inner(), g_w.data(), g_b.data(), dxbc.data(),
              in + m.d_inner(), conv_w.value().data(), conv_b.value().data(), m.conv(), false,
              false);
      if (zxbcdt.requires_grad()) give_grad(zxbcdt, std::move(din));
      for (auto* p : {&g_bias, &g_alog, &g_d, &g_w, &g_b}) p->give();
    }
  };
  if (record)
    tape.record(Node{zxbcdt, conv_w, conv_b, dt_bias, A_log, Dp, norm_w, out, xbc, y, rstd, m});
  return out;
}

template <Element T, Device D>
Var<T, D> mamba1_core(Tape& tape, const Var<T, D>& proj, const Var<T, D>& dt,
                      const Var<T, D>& conv_w, const Var<T, D>& conv_b, const Var<T, D>& dt_bias,
                      const Var<T, D>& A_log, const Var<T, D>& Dp, const Mamba1Dims& m) {
  check_rank2("mamba1_core", proj.shape());
  MIL_CHECK(proj.size(0) == m.rows() && proj.size(1) == m.width() && dt.numel() == m.rows() * m.d_inner,
            "mamba1_core: inputs ", proj.shape().str(), " and ", dt.shape().str(),
            " do not match the mixer");
  MIL_CHECK(m.d_xb % m.d_state == 0 && m.d_inner % m.d_xb == 0, "mamba1_core: d_xb ", m.d_xb,
            " must divide d_inner ", m.d_inner, " and be a multiple of d_state ", m.d_state);
  MIL_CHECK(conv_w.numel() == m.d_inner * m.conv_kernel && conv_b.numel() == m.d_inner &&
                dt_bias.numel() == m.d_inner && A_log.numel() == m.d_inner * m.d_state &&
                Dp.numel() == m.d_inner,
            "mamba1_core: parameter sizes do not match the mixer");
  bool grad = proj.requires_grad() || dt.requires_grad();
  for (auto* p : {&conv_w, &conv_b, &dt_bias, &A_log, &Dp}) grad = grad || p->requires_grad();
  const int64_t rows = m.rows();
  Var<T, D> out(Tensor<T, D>::empty(Shape{rows, m.d_inner}), grad);
  auto xe = Tensor<T, D>::empty(Shape{rows, m.d_inner});
  auto u = Tensor<T, D>::empty(Shape{rows, m.d_inner});
  const T* in = proj.value().data();
  MIL_RUN(D, repeat_groups_forward, xe.data(), in, m.repeat());
  MIL_RUN(D, conv1d_forward, u.data(), xe.data(), conv_w.value().data(), conv_b.value().data(),
          m.conv(), Conv1dRing<T>{});
  MIL_RUN(D, selective_scan_forward, out.value().data(), u.data(), dt.value().data(),
          dt_bias.value().data(), A_log.value().data(), in + m.b_offset(), in + m.c_offset(),
          Dp.value().data(), in + m.z_offset(), m.scan(), SelectiveStates{});
  struct Node {
    Var<T, D> proj, dt, conv_w, conv_b, dt_bias, A_log, Dp, out;
    Tensor<T, D> xe, u;
    Mamba1Dims m;
    void backward() {
      if (!out.has_grad()) return;
      const int64_t rows = m.rows();
      const T* in = proj.value().data();
      // Every column of dproj is written: x by the repeat, z, B and C by the scan.
      auto dproj = Tensor<T, D>::empty(proj.shape());
      auto ddt = Tensor<T, D>::empty(dt.shape());
      auto du = Tensor<T, D>::empty(Shape{rows, m.d_inner});
      ParamGrad<T, D> g_bias(dt_bias), g_alog(A_log), g_d(Dp), g_w(conv_w), g_b(conv_b);
      SelectiveScanGrads<T> sg{du.data(), ddt.data(), dproj.data() + m.b_offset(),
                               dproj.data() + m.c_offset(), dproj.data() + m.z_offset(),
                               g_bias.data(), g_alog.data(), g_d.data()};
      MIL_RUN(D, selective_scan_backward, sg, out.grad().data(), u.data(), dt.value().data(),
              dt_bias.value().data(), A_log.value().data(), in + m.b_offset(), in + m.c_offset(),
              Dp.value().data(), in + m.z_offset(), m.scan());
      auto dxe = Tensor<T, D>::empty(Shape{rows, m.d_inner});
      MIL_RUN(D, conv1d_backward, dxe.data(), g_w.data(), g_b.data(), du.data(), xe.data(),
              conv_w.value().data(), conv_b.value().data(), m.conv(), false, false);
      MIL_RUN(D, repeat_groups_backward, dproj.data(), dxe.data(), m.repeat(), false);
      if (proj.requires_grad()) give_grad(proj, std::move(dproj));
      if (dt.requires_grad()) give_grad(dt, std::move(ddt));
      for (auto* p : {&g_bias, &g_alog, &g_d, &g_w, &g_b}) p->give();
    }
  };
  if (tape.recording() && grad)
    tape.record(Node{proj, dt, conv_w, conv_b, dt_bias, A_log, Dp, out, xe, u, m});
  return out;
}

}  // namespace mil::ag
