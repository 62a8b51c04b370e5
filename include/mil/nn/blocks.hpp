#pragma once
// The blocks of a model, each written twice side by side: once from autograd ops for the tape
// (training, evaluation with gradients) and once from kernel calls for the step plan (inference,
// nn/decoder.hpp). Both take their weights from the same typed views and their sizes and offsets
// from the same helpers, so the two paths cannot drift apart in what they compute; the inference
// form fuses what the tape keeps apart (one RoPE launch for q and k, residual adds as the output
// product's accumulate, the final norm and LM head only on the rows that need logits).
// tests/nn/test_decoder.cpp keeps the two paths equal.
//
//   attention:  x += Wo · attention(rope(Wqkv · rmsnorm(x) [+ bqkv]))
//   Mamba-2:    x += out_proj · gated_norm(ssd(silu(conv([x|B|C])), dt), z),  [z|x|B|C|dt] = in_proj · rmsnorm(x)
//   Mamba-1:    x += out_proj · scan(silu(conv(repeat(x))), dt_proj · dt_down · h, B, C, z),
//               [x|z|B|C] = in_proj · h,  h = rmsnorm(x)
//   MLP:        x += Wdown · swiglu(Wgate_up · rmsnorm(x))
//   logits:     lm_head · rmsnorm(x)
#include <cmath>
#include <vector>

#include "../autograd/mamba_ops.hpp"
#include "../kernels/argmax.hpp"
#include "../kernels/fused_rows.hpp"
#include "../kernels/kv_attention.hpp"
#include "../kernels/matmul.hpp"
#if defined(__CUDACC__)
#include "../kernels/argmax.cuh"
#include "../kernels/fused_rows.cuh"
#include "../kernels/kv_attention.cuh"
#include "../kernels/matmul.cuh"
#endif
#include "block_weights.hpp"
#include "weights.hpp"

namespace mil::nn {

inline ag::Mamba2Dims mamba2_dims(const HybridConfig& c, int64_t batch, int64_t seq) {
  return {batch, seq, c.llama.n_heads, c.llama.n_kv_heads, c.llama.head_dim, c.conv_kernel,
          c.ssm_norm_eps};
}
inline ag::Mamba1Dims mamba1_dims(const HybridConfig& c, int64_t batch, int64_t seq) {
  return {batch,        seq, c.d_inner(), c.d_xb(), c.mamba1_d_state, c.conv_kernel,
          c.mamba1_double_dt_bias ? 2.f : 1.f};
}

// ---------------------------------------------------------------------------------------------
// Autograd form: [batch * seq, d_model] activations, whole sequences.

template <Element T, Device D>
ag::Var<T, D> attention_block(ag::Tape& tape, const ag::Var<T, D>& x, const LayerWeights<T, D>& w,
                              const LlamaConfig& c, const Tensor<int32_t, D>& positions,
                              int64_t batch, int64_t seq) {
  const auto layout = c.qkv_layout();
  auto h = ag::rmsnorm(tape, x, w.norm, c.norm_eps);
  auto qkv = ag::linear(tape, h, w.attn.wqkv);
  if (c.attention_bias) qkv = ag::bias_add(tape, qkv, w.attn.bqkv);
  qkv = ag::rope_qk(tape, qkv, positions, layout, c.rope());
  auto a = ag::attention(tape, qkv, batch, seq, layout);
  return ag::add(tape, x, ag::linear(tape, a, w.attn.wo));
}

// Mamba layers take no positions (no RoPE).
template <Element T, Device D>
ag::Var<T, D> mamba_block(ag::Tape& tape, const ag::Var<T, D>& x, const LayerWeights<T, D>& w,
                          const HybridConfig& c, int64_t batch, int64_t seq) {
  auto h = ag::rmsnorm(tape, x, w.norm, c.llama.norm_eps);
  ag::Var<T, D> y, out_proj;
  if (w.kind == LayerKind::mamba2) {
    const auto& m = w.mamba2;
    y = ag::mamba2_core(tape, ag::linear(tape, h, m.in_proj), m.conv_w, m.conv_b, m.dt_bias,
                        m.A_log, m.D_skip, m.ssm_norm, mamba2_dims(c, batch, seq));
    out_proj = m.out_proj;
  } else {
    const auto& m = w.mamba1;
    auto dt = ag::linear(tape, ag::linear(tape, h, m.dt_down), m.dt_proj);
    y = ag::mamba1_core(tape, ag::linear(tape, h, m.in_proj), dt, m.conv_w, m.conv_b, m.dt_bias,
                        m.A_log, m.D_skip, mamba1_dims(c, batch, seq));
    out_proj = m.out_proj;
  }
  return ag::add(tape, x, ag::linear(tape, y, out_proj));
}

template <Element T, Device D>
ag::Var<T, D> mlp_block(ag::Tape& tape, const ag::Var<T, D>& x, const MlpWeights<T, D>& w,
                        const LlamaConfig& c) {
  auto h = ag::rmsnorm(tape, x, w.norm, c.norm_eps);
  auto m = ag::swiglu(tape, ag::linear(tape, h, w.w_gate_up));
  return ag::add(tape, x, ag::linear(tape, m, w.w_down));
}

template <Element T, Device D>
ag::Var<T, D> logits_block(ag::Tape& tape, const ag::Var<T, D>& x, const ModelWeights<T, D>& w,
                           const LlamaConfig& c) {
  return ag::linear(tape, ag::rmsnorm(tape, x, w.norm, c.norm_eps), w.lm_head);
}

// ---------------------------------------------------------------------------------------------
// Step-plan form: the tokens of one step, in row order (a row = consecutive tokens of one
// sequence slot). Token arrays and row arrays are device memory; row groups (consecutive rows of
// equal length, which a Mamba scan runs as one batch) are known on the host.

struct RowGroup {
  int64_t first_token = 0, first_row = 0, batch = 0, seq = 0;
};

struct StepTokens {
  int64_t count = 0;                 // tokens in the step
  const int32_t* ids = nullptr;      // per token
  const int32_t* slots = nullptr;    // per token: its sequence slot
  const int32_t* positions = nullptr;  // per token: its position in the sequence
  const int32_t* row_slots = nullptr;  // per row
  const int32_t* row_starts = nullptr; // per row: position of its first token
  std::vector<RowGroup> groups;
  bool fresh_single_row = false;     // one row starting at position 0 (a new prompt)
};

// Scratch activations of a step, sized for the most tokens a step may hold.
template <Element T, Device D>
struct StepScratch {
  Tensor<T, D> h, qkv, att, gate_up, mlp;
  std::optional<cpu::Q8Rows> q8;  // 8-bit activations of the block products, when asked for
  cpu::Q8Rows* q8_rows() { return q8 ? &*q8 : nullptr; }
  bool fused_rows = true;  // GPU: the fused decode products where a step fits them
  Tensor<T, D> proj, conv_out, ssm_y, expanded, dt_low, dt;  // Mamba layers

  StepScratch() = default;
  StepScratch(const HybridConfig& c, int64_t tokens) {
    const LlamaConfig& m = c.llama;
    h = Tensor<T, D>::empty(Shape{tokens, m.d_model});
    qkv = Tensor<T, D>::empty(Shape{tokens, m.qkv_layout().width()});
    att = Tensor<T, D>::empty(Shape{tokens, c.d_inner()});
    gate_up = Tensor<T, D>::empty(Shape{tokens, 2 * m.d_ff});
    mlp = Tensor<T, D>::empty(Shape{tokens, m.d_ff});
    if (c.n_mamba_layers() == 0) return;
    proj = Tensor<T, D>::empty(Shape{tokens, c.in_proj_rows()});
    conv_out = Tensor<T, D>::empty(Shape{tokens, c.conv_channels()});
    ssm_y = Tensor<T, D>::empty(Shape{tokens, c.d_inner()});
    if (c.mixer == MixerKind::mamba1) {
      expanded = Tensor<T, D>::empty(Shape{tokens, c.d_inner()});
      dt_low = Tensor<T, D>::empty(Shape{tokens, c.dt_rank()});
      dt = Tensor<T, D>::empty(Shape{tokens, c.d_inner()});
    }
  }
};

// y (=|+=) x W^T over `rows` rows: the inference product (row-invariant on the CPU), on W's
// block-format copy where the caller has one (float on the CPU; nn/block_weights.hpp).
// `q8`: scratch for 8-bit activations on the blocks (DecoderOptions::q8_activations), or null.
template <Element T, Device D>
void linear_step(T* y, const T* x, const ag::Var<T, D>& w, int64_t rows, bool accumulate,
                 const BlockMatrix* blocks = nullptr, cpu::Q8Rows* q8 = nullptr) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<D, Cpu>) {
    if (blocks && !blocks->empty())
      return blocks->apply(x, rows, y, accumulate, cpu::QuantRowsPath::automatic, q8);
  }
  const Shape& s = w.shape();
  MIL_RUN(D, linear_rows, y, x, w.value().data(), rows, s[0], s[1], accumulate);
}

// Whether a step's rows of k elements take the GPU's fused decode products
// (kernels/fused_rows.cuh: the norm, the product and what follows it in one launch): steps of at
// most 8 rows (decode, verification), unless the scratch's owner turned them off. The CPU keeps
// its own products (block weights, row tiles).
template <Element T, Device D>
bool fused_rows_step(const StepScratch<T, D>& s, int64_t rows, int64_t k, const T* x,
                     const ag::Var<T, D>& norm, const ag::Var<T, D>& weight) {
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<D, Cuda>)
    return s.fused_rows && cuda::fused_rows_fit<T>(rows, k, x, norm.value().data(),
                                                   weight.value().data());
#endif
  (void)s, (void)rows, (void)k, (void)x, (void)norm, (void)weight;
  return false;
}

// The KV cache of one attention layer: [slots, max_seq, kv_width] for keys and for values.
template <Element T>
struct KvLayer {
  T *k = nullptr, *v = nullptr;
  int64_t slots = 0, max_seq = 0;
};

template <Element T, Device D>
void attention_step(T* x, StepScratch<T, D>& s, const LayerWeights<T, D>& w, const LlamaConfig& c,
                    const StepTokens& t, const KvLayer<T>& cache, KvWorkspace workspace,
                    const BlockLayer* blocks = nullptr) {
  const int64_t rows = t.count, d = c.d_model, hd = c.head_dim, H = c.n_heads;
  const int64_t Hkv = c.n_kv_heads, qkvw = c.qkv_layout().width(), kvw = Hkv * hd;
  T *h = s.h.data(), *qkv = s.qkv.data(), *att = s.att.data();
  const T* bias = c.attention_bias ? w.attn.bqkv.value().data() : nullptr;
  if (fused_rows_step(s, rows, d, x, w.norm, w.attn.wqkv)) {
    const QkvCacheShape qs{H, Hkv, hd, c.rope(), cache.slots, cache.max_seq};
    MIL_RUN(D, norm_qkv_rope_cache_rows, qkv, cache.k, cache.v, x, w.norm.value().data(),
            c.norm_eps, w.attn.wqkv.value().data(), bias, t.slots, t.positions, rows, d, qs);
  } else {
    MIL_RUN(D, rmsnorm_forward, h, nullptr, x, w.norm.value().data(), rows, d, c.norm_eps);
    linear_step(qkv, h, w.attn.wqkv, rows, false, blocks ? &blocks->wqkv : nullptr, s.q8_rows());
    if (bias) MIL_RUN(D, bias_add, qkv, bias, rows, qkvw);
    // q and k heads are adjacent in a row: one launch rotates both.
    MIL_RUN(D, rope_apply, qkv, qkv, t.positions, rows, H + Hkv, qkvw, c.rope(), false);
    MIL_RUN(D, kv_cache_append, cache.k, cache.v, qkv + H * hd, qkv + (H + Hkv) * hd, qkvw,
            t.slots, t.positions, rows, kvw, cache.slots, cache.max_seq);
  }
  // The GPU flash-attention kernel (bf16, head_dim 64 or 128) runs a fresh prompt faster;
  // everything else reads the cache.
  bool flash = false;
  if constexpr (std::is_same_v<D, Cuda> && std::is_same_v<T, bf16>) {
    flash = t.fresh_single_row && (hd == 64 || hd == 128);
    if (flash)
      MIL_RUN(D, attention_forward, att, nullptr, qkv, qkv + H * hd, qkv + (H + Hkv) * hd,
              attention_shape_fused(1, rows, H, Hkv, hd));
  }
  if (!flash) {
    const KvAttentionShape ks{rows, H, Hkv, hd, qkvw, cache.slots, cache.max_seq,
                              float(1.0 / std::sqrt(double(hd)))};
    MIL_RUN(D, attention_kv_cache, att, qkv, cache.k, cache.v, t.slots, t.positions, ks, workspace);
  }
  linear_step(x, att, w.attn.wo, rows, true, blocks ? &blocks->wo : nullptr, s.q8_rows());
}

// The recurrent state of one Mamba layer: conv rings [slots, ring_len, channels] and fp32 SSM
// states [slots, state].
template <Element T>
struct MambaLayerState {
  T* ring = nullptr;
  int64_t ring_len = 0;
  float* ssm = nullptr;
  int64_t slots = 0;
};

template <Element T, Device D>
void mamba_step(T* x, StepScratch<T, D>& s, const LayerWeights<T, D>& w, const HybridConfig& c,
                const StepTokens& t, const MambaLayerState<T>& st) {
  const int64_t rows = t.count, d = c.llama.d_model, di = c.d_inner();
  const int64_t width = c.in_proj_rows(), channels = c.conv_channels();
  T *h = s.h.data(), *proj = s.proj.data(), *y = s.ssm_y.data(), *conv = s.conv_out.data();
  const bool mamba2 = w.kind == LayerKind::mamba2;
  const bool fused = mamba2 ? fused_rows_step(s, rows, d, x, w.norm, w.mamba2.in_proj)
                            : fused_rows_step(s, rows, d, x, w.norm, w.mamba1.in_proj) &&
                                  fused_rows_step(s, rows, d, x, w.norm, w.mamba1.dt_down);
  const T* norm = w.norm.value().data();
  const float eps = c.llama.norm_eps;
  // proj (or another output) = rmsnorm(x) W^T: fused, or through h.
  auto normed_product = [&](T* out, const ag::Var<T, D>& weight) {
    if (fused)
      MIL_RUN(D, norm_linear_rows, out, x, norm, eps, weight.value().data(), rows,
              weight.shape()[0], d);
    else
      linear_step(out, h, weight, rows, false);
  };
  if (!fused) MIL_RUN(D, rmsnorm_forward, h, nullptr, x, norm, rows, d, eps);
  if (mamba2) {
    const auto& m = w.mamba2;
    normed_product(proj, m.in_proj);
    for (const RowGroup& g : t.groups) {  // one scan per group of equally long rows
      const ag::Mamba2Dims dims = mamba2_dims(c, g.batch, g.seq);
      const int64_t t0 = g.first_token;
      const Conv1dRing<T> ring{st.ring, st.ring_len, st.slots, t.row_slots + g.first_row,
                               t.row_starts + g.first_row};
      T* xbc = conv + t0 * channels;
      MIL_RUN(D, conv1d_forward, xbc, proj + t0 * width + di, m.conv_w.value().data(),
              m.conv_b.value().data(), dims.conv(), ring);
      MIL_RUN(D, ssd_scan_forward, y + t0 * di, xbc, xbc + dims.d_xb(), xbc + 2 * dims.d_xb(),
              proj + t0 * width + dims.dt_offset(), m.dt_bias.value().data(),
              m.A_log.value().data(), m.D_skip.value().data(), dims.ssd(),
              SsdStates{st.ssm, st.slots, t.row_slots + g.first_row});
    }
    // The gated norm's output reuses the attention output buffer ([rows, d_inner]).
    MIL_RUN(D, gated_rmsnorm_forward, s.att.data(), nullptr, y, proj, m.ssm_norm.value().data(),
            mamba2_dims(c, 1, rows).norm());
    linear_step(x, s.att.data(), m.out_proj, rows, true);
  } else {
    const auto& m = w.mamba1;
    normed_product(proj, m.in_proj);
    normed_product(s.dt_low.data(), m.dt_down);
    linear_step(s.dt.data(), s.dt_low.data(), m.dt_proj, rows, false);
    MIL_RUN(D, repeat_groups_forward, s.expanded.data(), proj, mamba1_dims(c, 1, rows).repeat());
    for (const RowGroup& g : t.groups) {
      const ag::Mamba1Dims dims = mamba1_dims(c, g.batch, g.seq);
      const int64_t t0 = g.first_token;
      const Conv1dRing<T> ring{st.ring, st.ring_len, st.slots, t.row_slots + g.first_row,
                               t.row_starts + g.first_row};
      T* u = conv + t0 * channels;
      T* p = proj + t0 * width;
      MIL_RUN(D, conv1d_forward, u, s.expanded.data() + t0 * di, m.conv_w.value().data(),
              m.conv_b.value().data(), dims.conv(), ring);
      MIL_RUN(D, selective_scan_forward, y + t0 * di, u, s.dt.data() + t0 * di,
              m.dt_bias.value().data(), m.A_log.value().data(), p + dims.b_offset(),
              p + dims.c_offset(), m.D_skip.value().data(), p + dims.z_offset(), dims.scan(),
              SelectiveStates{st.ssm, st.slots, t.row_slots + g.first_row});
    }
    linear_step(x, y, m.out_proj, rows, true);
  }
}

template <Element T, Device D>
void mlp_step(T* x, StepScratch<T, D>& s, const MlpWeights<T, D>& w, const LlamaConfig& c,
              int64_t rows, const BlockLayer* blocks = nullptr) {
  const int64_t d = c.d_model, ff = c.d_ff;
  T *h = s.h.data(), *gu = s.gate_up.data(), *m = s.mlp.data();
  if (fused_rows_step(s, rows, d, x, w.norm, w.w_gate_up)) {
    MIL_RUN(D, norm_swiglu_rows, m, x, w.norm.value().data(), c.norm_eps,
            w.w_gate_up.value().data(), rows, ff, d);
  } else {
    MIL_RUN(D, rmsnorm_forward, h, nullptr, x, w.norm.value().data(), rows, d, c.norm_eps);
    linear_step(gu, h, w.w_gate_up, rows, false, blocks ? &blocks->gate_up : nullptr, s.q8_rows());
    MIL_RUN(D, swiglu_forward, m, gu, gu + ff, rows, ff, 2 * ff);
  }
  linear_step(x, m, w.w_down, rows, true, blocks ? &blocks->down : nullptr, s.q8_rows());
}

// logits [n, vocab] and their argmax for n rows of final activations `x` ([n, d_model]).
template <Element T, Device D>
void logits_step(T* logits, int32_t* argmax, const T* x, StepScratch<T, D>& s,
                 const ModelWeights<T, D>& w, const LlamaConfig& c, int64_t n,
                 const BlockMatrix* lm_head_blocks = nullptr) {
  T* h = s.h.data();
  if (fused_rows_step(s, n, c.d_model, x, w.norm, w.lm_head)) {
    MIL_RUN(D, norm_linear_rows, logits, x, w.norm.value().data(), c.norm_eps,
            w.lm_head.value().data(), n, c.vocab, c.d_model);
  } else {
    MIL_RUN(D, rmsnorm_forward, h, nullptr, x, w.norm.value().data(), n, c.d_model, c.norm_eps);
    linear_step(logits, h, w.lm_head, n, false, lm_head_blocks, s.q8_rows());
  }
  MIL_RUN(D, argmax_rows, argmax, logits, n, c.vocab);
}

}  // namespace mil::nn
