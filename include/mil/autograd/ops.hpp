#pragma once
// Differentiable ops. Each op validates shapes, runs its forward kernel on the tensor's device and,
// when the tape records and an input needs a gradient, records a node whose backward calls the
// hand-written backward kernel with an explicit write mode (overwrite the first time, then
// accumulate). Frozen inputs (requires_grad = false) get no gradient work at all.
#include <cmath>
#include <type_traits>

#include "../kernels/add.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/bias.hpp"
#include "../kernels/cross_entropy.hpp"
#include "../kernels/embedding.hpp"
#include "../kernels/matmul.hpp"
#include "../kernels/rmsnorm.hpp"
#include "../kernels/rope.hpp"
#include "../kernels/swiglu.hpp"
#if defined(__CUDACC__)
#include "../kernels/add.cuh"
#include "../kernels/attention.cuh"
#include "../kernels/bias.cuh"
#include "../kernels/cross_entropy.cuh"
#include "../kernels/embedding.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/rmsnorm.cuh"
#include "../kernels/rope.cuh"
#include "../kernels/swiglu.cuh"
#endif
#include "tape.hpp"
#include "variable.hpp"

namespace mil::ag {

template <class>
inline constexpr bool cuda_needs_nvcc = false;

// MIL_RUN(D, kernel, args...): mil::cpu::kernel(args...) on the CPU, mil::cuda::kernel(args...,
// current stream) on the GPU. CUDA ops are only available in translation units built by nvcc.
#if defined(__CUDACC__)
#define MIL_RUN(D, kernel, ...)                                          \
  do {                                                                   \
    if constexpr (std::is_same_v<D, ::mil::Cpu>) ::mil::cpu::kernel(__VA_ARGS__); \
    else ::mil::cuda::kernel(__VA_ARGS__, ::mil::cuda::current_stream()); \
  } while (0)
#else
#define MIL_RUN(D, kernel, ...)                                                            \
  do {                                                                                     \
    if constexpr (std::is_same_v<D, ::mil::Cpu>) ::mil::cpu::kernel(__VA_ARGS__);          \
    else static_assert(::mil::ag::cuda_needs_nvcc<D>, "CUDA ops need a .cu translation unit"); \
  } while (0)
#endif

template <Element T, Device D>
using Acc = Tensor<acc_t<T>, D>;

// Hands a finished gradient to v: moved in on the first write when no buffer is bound, else added.
template <Element T, Device D>
void give_grad(const Var<T, D>& v, Tensor<T, D>&& g) {
  if (v.adopt_grad(std::move(g))) return;
  auto [grad, accumulate] = v.grad_for_write();
  MIL_RUN(D, add_into, grad.data(), g.data(), g.numel(), accumulate);
}

// A loss computes its input's gradient in the same pass as its value (it seeds the backward
// pass): records a node that hands that gradient over when the tape runs backward.
template <Element T, Device D>
void record_loss_grad(Tape& tape, const Var<T, D>& input, Tensor<T, D>&& grad) {
  struct Node {
    Var<T, D> input;
    Tensor<T, D> grad;
    void backward() { give_grad(input, std::move(grad)); }
  };
  tape.record(Node{input, std::move(grad)});
}

inline void check_rank2(const char* op, const Shape& s) {
  MIL_CHECK(s.rank() == 2, op, ": expected a [rows, features] tensor, got ", s.str());
}

// ---- embedding: out[i] = table[ids[i]] --------------------------------------------------------
template <Element T, Device D>
Var<T, D> embedding(Tape& tape, const Var<T, D>& table, const Tensor<int32_t, D>& ids) {
  check_rank2("embedding", table.shape());
  int64_t n = ids.numel(), dim = table.size(1), vocab = table.size(0);
  Var<T, D> out(Tensor<T, D>::empty(Shape{n, dim}), table.requires_grad());
  MIL_RUN(D, embedding_forward, out.value().data(), table.value().data(), ids.data(), n, dim, vocab);
  struct Node {
    Var<T, D> table, out;
    Tensor<int32_t, D> ids;
    void backward() {
      if (!out.has_grad()) return;
      auto [g, acc] = table.grad_for_write();
      MIL_RUN(D, embedding_backward, g.data(), out.grad().data(), ids.data(), ids.numel(),
              table.size(1), table.size(0), acc);
    }
  };
  if (tape.recording() && table.requires_grad()) tape.record(Node{table, out, ids});
  return out;
}

// ---- linear: y = x W^T, W stored [out_features, in_features] ---------------------------------
template <Element T, Device D>
Var<T, D> linear(Tape& tape, const Var<T, D>& x, const Var<T, D>& w) {
  check_rank2("linear input", x.shape());
  check_rank2("linear weight", w.shape());
  MIL_CHECK(x.size(1) == w.size(1), "linear: input has ", x.size(1), " features, weight expects ",
            w.size(1), " (weight ", w.shape().str(), ")");
  int64_t rows = x.size(0), in = w.size(1), outf = w.size(0);
  Var<T, D> y(Tensor<T, D>::empty(Shape{rows, outf}), x.requires_grad() || w.requires_grad());
  MIL_RUN(D, matmul, GemmShape{rows, outf, in, false, true}, y.value().data(), x.value().data(),
          w.value().data());
  struct Node {
    Var<T, D> x, w, y;
    void backward() {
      if (!y.has_grad()) return;
      int64_t rows = x.size(0), in = w.size(1), outf = w.size(0);
      if (x.requires_grad()) {  // dx = dy W
        auto [g, acc] = x.grad_for_write();
        GemmShape s{rows, in, outf};
        s.beta = acc ? 1.f : 0.f;
        MIL_RUN(D, matmul, s, g.data(), y.grad().data(), w.value().data());
      }
      if (w.requires_grad()) {  // dW = dy^T x
        auto [g, acc] = w.grad_for_write();
        GemmShape s{outf, in, rows, true, false};
        s.beta = acc ? 1.f : 0.f;
        MIL_RUN(D, matmul, s, g.data(), y.grad().data(), x.value().data());
      }
    }
  };
  if (tape.recording() && y.requires_grad()) tape.record(Node{x, w, y});
  return y;
}

// ---- RMSNorm over the last dimension ---------------------------------------------------------
template <Element T, Device D>
Var<T, D> rmsnorm(Tape& tape, const Var<T, D>& x, const Var<T, D>& w, float eps) {
  check_rank2("rmsnorm", x.shape());
  MIL_CHECK(w.numel() == x.size(1), "rmsnorm: weight has ", w.numel(), " elements for rows of ",
            x.size(1));
  int64_t rows = x.size(0), dim = x.size(1);
  Var<T, D> out(Tensor<T, D>::empty(x.shape()), x.requires_grad() || w.requires_grad());
  bool record = tape.recording() && out.requires_grad();
  Acc<T, D> rstd = record ? Acc<T, D>::empty(Shape{rows}) : Acc<T, D>();
  MIL_RUN(D, rmsnorm_forward, out.value().data(), rstd.data(), x.value().data(), w.value().data(),
          rows, dim, eps);
  struct Node {
    Var<T, D> x, w, out;
    Acc<T, D> rstd;
    void backward() {
      if (!out.has_grad()) return;
      T* dx = nullptr;
      T* dw = nullptr;
      bool acc_x = false, acc_w = false;
      if (x.requires_grad()) std::tie(dx, acc_x) = unpack(x.grad_for_write());
      if (w.requires_grad()) std::tie(dw, acc_w) = unpack(w.grad_for_write());
      MIL_RUN(D, rmsnorm_backward, dx, dw, out.grad().data(), x.value().data(), w.value().data(),
              rstd.data(), x.size(0), x.size(1), acc_x, acc_w);
    }
    static std::pair<T*, bool> unpack(std::pair<Tensor<T, D>&, bool> p) {
      return {p.first.data(), p.second};
    }
  };
  if (record) tape.record(Node{x, w, out, rstd});
  return out;
}

// ---- RoPE on the q and k parts of a fused [tokens, (H + 2 Hkv) hd] QKV tensor -------------------
struct QkvLayout {
  int64_t heads, kv_heads, head_dim;
  int64_t width() const { return (heads + 2 * kv_heads) * head_dim; }
};

template <Element T, Device D>
void rotate_qk(Tensor<T, D>& x, const Tensor<int32_t, D>& positions, const QkvLayout& l,
               const RopeConfig& cfg, bool inverse) {
  int64_t tokens = x.size(0), stride = l.width();
  T* q = x.data();
  T* k = x.data() + l.heads * l.head_dim;
  MIL_RUN(D, rope_apply, q, q, positions.data(), tokens, l.heads, stride, cfg, inverse);
  MIL_RUN(D, rope_apply, k, k, positions.data(), tokens, l.kv_heads, stride, cfg, inverse);
}

template <Element T, Device D>
Var<T, D> rope_qk(Tape& tape, const Var<T, D>& qkv, const Tensor<int32_t, D>& positions,
                  const QkvLayout& layout, const RopeConfig& cfg) {
  check_rank2("rope_qk", qkv.shape());
  MIL_CHECK(qkv.size(1) == layout.width(), "rope_qk: QKV rows have ", qkv.size(1),
            " features, the layout needs ", layout.width());
  MIL_CHECK(positions.numel() == qkv.size(0), "rope_qk: ", positions.numel(), " positions for ",
            qkv.size(0), " tokens");
  MIL_CHECK(cfg.head_dim == layout.head_dim, "rope_qk: RoPE head_dim ", cfg.head_dim,
            " differs from the attention head_dim ", layout.head_dim);
  Var<T, D> out(Tensor<T, D>::empty(qkv.shape()), qkv.requires_grad());
  MIL_RUN(D, add_into, out.value().data(), qkv.value().data(), qkv.numel(), false);
  rotate_qk(out.value(), positions, layout, cfg, false);
  struct Node {
    Var<T, D> qkv, out;
    Tensor<int32_t, D> positions;
    QkvLayout layout;
    RopeConfig cfg;
    void backward() {
      if (!out.has_grad()) return;
      // out's gradient is ours alone now: un-rotate it in place, then hand it to qkv.
      Tensor<T, D> g = out.grad();
      rotate_qk(g, positions, layout, cfg, true);
      auto [dq, acc] = qkv.grad_for_write();
      MIL_RUN(D, add_into, dq.data(), g.data(), g.numel(), acc);
    }
  };
  if (tape.recording() && qkv.requires_grad()) tape.record(Node{qkv, out, positions, layout, cfg});
  return out;
}

// ---- causal self-attention with GQA over a fused QKV tensor [batch * seq, (H + 2 Hkv) hd] ----------
template <Element T, Device D>
Var<T, D> attention(Tape& tape, const Var<T, D>& qkv, int64_t batch, int64_t seq,
                    const QkvLayout& l) {
  check_rank2("attention", qkv.shape());
  MIL_CHECK(qkv.size(0) == batch * seq && qkv.size(1) == l.width(), "attention: QKV ",
            qkv.shape().str(), " does not match batch ", batch, " x seq ", seq, " x width ",
            l.width());
  AttentionShape s = attention_shape_fused(batch, seq, l.heads, l.kv_heads, l.head_dim);
  Var<T, D> out(Tensor<T, D>::empty(Shape{batch * seq, l.heads * l.head_dim}), qkv.requires_grad());
  bool record = tape.recording() && qkv.requires_grad();
  // The log-sum-exp rows are only kept for backward; both kernels accept a null lse.
  Acc<T, D> lse = record ? Acc<T, D>::empty(Shape{batch * l.heads * seq}) : Acc<T, D>();
  const T* base = qkv.value().data();
  MIL_RUN(D, attention_forward, out.value().data(), lse.data(), base, base + l.heads * l.head_dim,
          base + (l.heads + l.kv_heads) * l.head_dim, s);
  struct Node {
    Var<T, D> qkv, out;
    Acc<T, D> lse;
    AttentionShape s;
    QkvLayout l;
    void backward() {
      if (!out.has_grad()) return;
      auto [g, acc] = qkv.grad_for_write();
      const T* x = qkv.value().data();
      int64_t ko = l.heads * l.head_dim, vo = (l.heads + l.kv_heads) * l.head_dim;
      MIL_RUN(D, attention_backward, g.data(), g.data() + ko, g.data() + vo, out.grad().data(), x,
              x + ko, x + vo, out.value().data(), lse.data(), s, acc);
    }
  };
  if (record) tape.record(Node{qkv, out, lse, s, l});
  return out;
}

// ---- SwiGLU over a fused [rows, 2 F] gate|up tensor -> [rows, F] -------------------------------
template <Element T, Device D>
Var<T, D> swiglu(Tape& tape, const Var<T, D>& gate_up) {
  check_rank2("swiglu", gate_up.shape());
  MIL_CHECK(gate_up.size(1) % 2 == 0, "swiglu: width ", gate_up.size(1), " is not 2 * hidden");
  int64_t rows = gate_up.size(0), hidden = gate_up.size(1) / 2;
  Var<T, D> out(Tensor<T, D>::empty(Shape{rows, hidden}), gate_up.requires_grad());
  const T* g = gate_up.value().data();
  MIL_RUN(D, swiglu_forward, out.value().data(), g, g + hidden, rows, hidden, 2 * hidden);
  struct Node {
    Var<T, D> gate_up, out;
    void backward() {
      if (!out.has_grad()) return;
      int64_t rows = out.size(0), hidden = out.size(1);
      auto [d, acc] = gate_up.grad_for_write();
      const T* g = gate_up.value().data();
      MIL_RUN(D, swiglu_backward, d.data(), d.data() + hidden, out.grad().data(), g, g + hidden,
              rows, hidden, 2 * hidden, acc);
    }
  };
  if (tape.recording() && gate_up.requires_grad()) tape.record(Node{gate_up, out});
  return out;
}

// ---- residual add -----------------------------------------------------------------------------
template <Element T, Device D>
Var<T, D> add(Tape& tape, const Var<T, D>& a, const Var<T, D>& b) {
  check_same_shape("add", a.value(), b.value());
  Var<T, D> out(Tensor<T, D>::empty(a.shape()), a.requires_grad() || b.requires_grad());
  MIL_RUN(D, add, out.value().data(), a.value().data(), b.value().data(), a.numel());
  struct Node {
    Var<T, D> a, b, out;
    void backward() {
      if (!out.has_grad()) return;
      for (const Var<T, D>* in : {&a, &b}) {
        if (!in->requires_grad()) continue;
        auto [g, acc] = in->grad_for_write();
        MIL_RUN(D, add_into, g.data(), out.grad().data(), out.numel(), acc);
      }
    }
  };
  if (tape.recording() && out.requires_grad()) tape.record(Node{a, b, out});
  return out;
}

// ---- bias: out[r, :] = x[r, :] + b --------------------------------------------------------------
template <Element T, Device D>
Var<T, D> bias_add(Tape& tape, const Var<T, D>& x, const Var<T, D>& b) {
  check_rank2("bias_add", x.shape());
  MIL_CHECK(b.numel() == x.size(1), "bias_add: bias has ", b.numel(), " elements for rows of ",
            x.size(1));
  Var<T, D> out(Tensor<T, D>::empty(x.shape()), x.requires_grad() || b.requires_grad());
  MIL_RUN(D, add_into, out.value().data(), x.value().data(), x.numel(), false);
  MIL_RUN(D, bias_add, out.value().data(), b.value().data(), x.size(0), x.size(1));
  struct Node {
    Var<T, D> x, b, out;
    void backward() {
      if (!out.has_grad()) return;
      if (x.requires_grad()) {
        auto [g, acc] = x.grad_for_write();
        MIL_RUN(D, add_into, g.data(), out.grad().data(), out.numel(), acc);
      }
      if (b.requires_grad()) {
        auto [g, acc] = b.grad_for_write();
        MIL_RUN(D, bias_backward, g.data(), out.grad().data(), out.size(0), out.size(1), acc);
      }
    }
  };
  if (tape.recording() && out.requires_grad()) tape.record(Node{x, b, out});
  return out;
}

// ---- softmax cross-entropy, mean over non-ignored targets, scaled by `weight` -------------------
// A loss is a seed of the backward pass: its gradient (weight / count per target) is computed in
// the same pass as the loss and handed to the logits when the tape runs backward.
template <Element T, Device D>
struct Loss {
  Acc<T, D> per_row;   // loss of each row (0 where the target is ignored)
  int64_t count = 0;   // rows that count
  // Mean over counted rows, on the host (synchronises on the GPU).
  double mean() const {
    auto v = per_row.to_vector();
    double s = 0;
    for (auto x : v) s += double(x);
    return count ? s / double(count) : 0.0;
  }
};

template <Element T, Device D>
Loss<T, D> cross_entropy(Tape& tape, const Var<T, D>& logits, const Tensor<int32_t, D>& targets,
                         float weight = 1.f, int32_t ignore_index = -100) {
  check_rank2("cross_entropy", logits.shape());
  int64_t rows = logits.size(0), vocab = logits.size(1);
  MIL_CHECK(targets.numel() == rows, "cross_entropy: ", targets.numel(), " targets for ", rows,
            " rows of logits");
  Loss<T, D> loss;
  auto host_targets = targets.to_vector();
  loss.count = cpu::count_targets(host_targets.data(), rows, ignore_index);
  for (int64_t r = 0; r < rows; ++r)
    MIL_CHECK(host_targets[r] == ignore_index || (host_targets[r] >= 0 && host_targets[r] < vocab),
              "cross_entropy: target ", host_targets[r], " at row ", r, " is outside the vocabulary [0, ",
              vocab, ")");
  loss.per_row = Acc<T, D>::empty(Shape{rows});
  bool record = tape.recording() && logits.requires_grad();
  Tensor<T, D> dlogits = record ? Tensor<T, D>::empty(logits.shape()) : Tensor<T, D>();
  float dloss = loss.count ? weight / float(loss.count) : 0.f;
  MIL_RUN(D, cross_entropy_forward_backward, loss.per_row.data(), dlogits.data(),
          logits.value().data(), targets.data(), rows, vocab, dloss, ignore_index);
  if (record) record_loss_grad(tape, logits, std::move(dlogits));
  return loss;
}

}  // namespace mil::ag
