#pragma once
// Inference for a LlamaModel or a HybridModel: prefill and incremental decode, on the CPU or the
// GPU, for a batch of sequences ("slots") that each have their own length.
//
// Everything a step touches is allocated once, in the constructor: for attention layers the KV
// cache [attention layers, slots, max_seq, kv_heads * head_dim] for keys and for values; for Mamba
// layers a conv ring of the last inputs [slots, kernel - 1, channels] and the fp32 SSM state per
// slot (a prefill hands both to decode); activations for `max_chunk` tokens (a longer prompt is
// run in chunks). A Mamba layer keeps no past tokens, so a hybrid's sequence can be reset but not
// truncated to a shorter non-empty prefix (can_rewind() says which). A step calls the kernels directly, not
// the autograd, and fuses what the training graph keeps apart: q and k are rotated by one RoPE
// launch, the residual adds ride on the output projections (GEMM beta = 1), and only the rows that
// need logits go through the final norm and the LM head.
//
// On the GPU the decoder runs on its own stream. A decode step of n sequences is captured as a
// CUDA graph the first time n is seen (after one eager run that creates the cuBLASLt plans) and
// replayed after that: token ids, slots and positions go into fixed device buffers from pinned
// host memory, the kernels read them on the device, and the greedy argmax comes back in the graph.
// A fresh prompt (empty cache) uses the flash-attention kernel; later chunks and decode use
// attention_kv_cache.
#include <algorithm>
#include <cmath>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "../autograd/ops.hpp"
#include "../kernels/argmax.hpp"
#include "../kernels/kv_attention.hpp"
#if defined(__CUDACC__)
#include "../kernels/argmax.cuh"
#include "../kernels/kv_attention.cuh"
#endif
#include "hybrid.hpp"
#include "llama.hpp"

namespace mil::nn {

struct DecoderOptions {
  int64_t slots = 1;        // sequences held at once
  int64_t max_seq = 2048;   // tokens per sequence (prompt + generated)
  int64_t max_chunk = 512;  // tokens per prefill step; longer prompts run in chunks
  bool cuda_graphs = true;  // capture decode steps (GPU)
};

// An all-attention HybridConfig: a Llama model seen as a hybrid.
inline HybridConfig all_attention(const LlamaConfig& c) {
  HybridConfig h;
  h.llama = c;
  for (int64_t l = 0; l < c.n_layers; ++l) h.attn_layers.push_back(l);
  return h;
}

template <Element T, Device D>
class Decoder {
 public:
  Decoder(const LlamaModel<T, D>& model, DecoderOptions o = {})
      : Decoder(model.params(), all_attention(model.config()), o) {}
  Decoder(const HybridModel<T, D>& model, DecoderOptions o = {})
      : Decoder(model.params(), model.config(), o) {}

  Decoder(const ParameterStore<T, D>& weights, const HybridConfig& hybrid, DecoderOptions o)
      : weights_(weights), hybrid_(hybrid), cfg_(hybrid.llama), opt_(o) {
    MIL_CHECK(o.slots >= 1 && o.max_seq >= 1 && o.max_chunk >= 1, "Decoder: slots (", o.slots,
              "), max_seq (", o.max_seq, ") and max_chunk (", o.max_chunk, ") must be >= 1");
    hybrid_.validate();
    StreamScope scope(*this);
    const int64_t kvw = cfg_.n_kv_heads * cfg_.head_dim;
    const int64_t rows = std::max(o.max_chunk, o.slots);
    rows_ = rows;
    for (int64_t l = 0; l < cfg_.n_layers; ++l)
      state_index_.push_back(hybrid_.is_attention(l) ? n_attention_++ : n_mamba_++);
    Shape cache{std::max<int64_t>(n_attention_, 1), o.slots, n_attention_ ? o.max_seq : 1, kvw};
    k_cache_ = Tensor<T, D>::zeros(cache);
    v_cache_ = Tensor<T, D>::zeros(cache);
    x_ = Tensor<T, D>::empty(Shape{rows, cfg_.d_model});
    h_ = Tensor<T, D>::empty(Shape{rows, cfg_.d_model});
    qkv_ = Tensor<T, D>::empty(Shape{rows, cfg_.qkv_layout().width()});
    att_ = Tensor<T, D>::empty(Shape{rows, cfg_.n_heads * cfg_.head_dim});
    gate_up_ = Tensor<T, D>::empty(Shape{rows, 2 * cfg_.d_ff});
    mlp_ = Tensor<T, D>::empty(Shape{rows, cfg_.d_ff});
    if (n_mamba_) {
      const bool m2 = hybrid_.mixer == MixerKind::mamba2;
      ring_len_ = hybrid_.conv_kernel - 1;
      conv_ring_ = Tensor<T, D>::zeros(Shape{n_mamba_ * o.slots, ring_len_, hybrid_.conv_channels()});
      const int64_t state = m2 ? ag::Mamba2Dims{1, 1, cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim}.ssd().state_size()
                               : hybrid_.d_inner() * hybrid_.mamba1_d_state;
      ssm_state_ = Tensor<float, D>::zeros(Shape{n_mamba_ * o.slots, state});
      proj_ = Tensor<T, D>::empty(Shape{rows, hybrid_.in_proj_rows()});
      conv_out_ = Tensor<T, D>::empty(Shape{rows, hybrid_.conv_channels()});
      ssm_y_ = Tensor<T, D>::empty(Shape{rows, hybrid_.d_inner()});
      if (!m2) {
        expanded_ = Tensor<T, D>::empty(Shape{rows, hybrid_.d_inner()});
        dt_low_ = Tensor<T, D>::empty(Shape{rows, hybrid_.dt_rank()});
        dt_ = Tensor<T, D>::empty(Shape{rows, hybrid_.d_inner()});
      }
    }
    logits_ = Tensor<T, D>::empty(Shape{o.slots, cfg_.vocab});
    tokens_ = Tensor<int32_t, D>::empty(Shape{3, rows});  // ids | slots | positions
    argmax_ = Tensor<int32_t, D>::empty(Shape{o.slots});
    lengths_.assign(size_t(o.slots), 0);
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      // The split-key attention's workspace for the largest step of any row count.
      int64_t floats = 0;
      for (int64_t n = 1; n <= rows; ++n)
        floats = std::max(floats, cuda::kv_attention_workspace(KvAttentionShape{
                                      n, cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim,
                                      cfg_.qkv_layout().width(), o.slots, o.max_seq, 1.f}));
      workspace_ = Tensor<float, D>::empty(Shape{std::max<int64_t>(floats, 1)});
      MIL_CUDA_CHECK(cudaMallocHost(&pinned_tokens_, size_t(3 * rows) * sizeof(int32_t)));
      MIL_CUDA_CHECK(cudaMallocHost(&pinned_argmax_, size_t(o.slots) * sizeof(int32_t)));
    }
#endif
    if constexpr (std::is_same_v<D, Cpu>) {
      host_tokens_ = tokens_.data();
      host_argmax_ = argmax_.data();
    }
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      host_tokens_ = pinned_tokens_;
      host_argmax_ = pinned_argmax_;
    }
#endif
  }
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;
  ~Decoder() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      cudaStreamSynchronize(stream_);
      for (auto& [n, g] : graphs_) cudaGraphExecDestroy(g);
      cudaFreeHost(pinned_tokens_);
      cudaFreeHost(pinned_argmax_);
      // The tensors go back to the caching allocator; nothing runs on the stream any more.
      k_cache_ = {}, v_cache_ = {}, x_ = {}, h_ = {}, qkv_ = {}, att_ = {}, gate_up_ = {};
      mlp_ = {}, logits_ = {}, tokens_ = {}, argmax_ = {}, workspace_ = {};
      conv_ring_ = {}, proj_ = {}, conv_out_ = {}, ssm_y_ = {}, expanded_ = {}, dt_low_ = {};
      dt_ = {}, ssm_state_ = {};
      if (stream_) cudaStreamDestroy(stream_);
    }
#endif
  }

  const LlamaConfig& config() const { return cfg_; }
  const HybridConfig& hybrid_config() const { return hybrid_; }
  const DecoderOptions& options() const { return opt_; }
  int64_t length(int64_t slot) const { return lengths_.at(check_slot(slot)); }
  void reset(int64_t slot) { truncate(slot, 0); }
  // Whether truncate() can keep a non-empty prefix: only without Mamba layers, whose state holds
  // no past tokens to go back to.
  bool can_rewind() const { return n_mamba_ == 0; }
  // Forgets all but the first n tokens of a sequence (a chat turn that is re-rendered differently).
  void truncate(int64_t slot, int64_t n) {
    MIL_CHECK(n >= 0 && n <= lengths_.at(size_t(check_slot(slot))), "Decoder::truncate: ",
              n, " tokens of a sequence of ", lengths_[size_t(slot)]);
    MIL_CHECK(n == 0 || n == lengths_[size_t(slot)] || can_rewind(), "Decoder::truncate: a hybrid ",
              "with Mamba layers cannot go back to ", n, " of ", lengths_[size_t(slot)],
              " tokens (its state keeps no past tokens); reset the sequence and prefill again");
    lengths_[size_t(slot)] = n;
  }

  // Appends `ids` to sequence `slot`; afterwards logits row 0 (and argmax()[0]) is the
  // prediction after its last token.
  void prefill(int64_t slot, std::span<const int32_t> ids) {
    check_slot(slot);
    MIL_CHECK(!ids.empty(), "Decoder::prefill: no tokens");
    check_room(slot, int64_t(ids.size()));
    check_ids(ids);
    StreamScope scope(*this);
    if (lengths_[size_t(slot)] == 0)  // a fresh sequence starts from zero SSM states
      for (int64_t m = 0; m < n_mamba_; ++m) {
        const int64_t row = m * opt_.slots + slot;
        ssm_state_.slice(row, row + 1).zero_();
      }
    for (size_t first = 0; first < ids.size(); first += size_t(opt_.max_chunk)) {
      const int64_t n = std::min<int64_t>(opt_.max_chunk, int64_t(ids.size() - first));
      const int64_t start = lengths_[slot];
      for (int64_t i = 0; i < n; ++i) {
        host_tokens_[i] = ids[first + size_t(i)];
        host_tokens_[rows_ + i] = int32_t(slot);
        host_tokens_[2 * rows_ + i] = int32_t(start + i);
      }
      upload_tokens();
      forward(n, start == 0, n - 1, 1, /*prefill=*/true);
      lengths_[slot] += n;
    }
    logit_rows_ = 1;
    finish();
  }

  // One token per sequence: ids[i] is appended to slot slots[i] (distinct slots); afterwards
  // logits row i is the prediction for slots[i].
  void decode(std::span<const int32_t> slots, std::span<const int32_t> ids) {
    const int64_t n = int64_t(ids.size());
    MIL_CHECK(n >= 1 && slots.size() == ids.size(), "Decoder::decode: ", slots.size(),
              " slots for ", ids.size(), " tokens");
    MIL_CHECK(n <= opt_.slots, "Decoder::decode: ", n, " sequences, the decoder holds ",
              opt_.slots);
    std::vector<bool> seen(size_t(opt_.slots), false);
    for (int32_t s : slots) {
      check_slot(s);
      MIL_CHECK(!seen[size_t(s)], "Decoder::decode: slot ", s, " appears twice");
      seen[size_t(s)] = true;
      check_room(s, 1);
    }
    check_ids(ids);
    StreamScope scope(*this);
    for (int64_t i = 0; i < n; ++i) {
      host_tokens_[i] = ids[size_t(i)];
      host_tokens_[rows_ + i] = slots[size_t(i)];
      host_tokens_[2 * rows_ + i] = int32_t(lengths_[size_t(slots[size_t(i)])]);
    }
    upload_tokens();
    run_decode_step(n);
    for (int32_t s : slots) ++lengths_[size_t(s)];
    logit_rows_ = n;
    finish();
  }

  // Logits of the last prefill (1 row) or decode (one row per sequence): [rows, vocab] on D.
  Tensor<T, D> logits() const { return logits_.slice(0, logit_rows_); }
  int64_t logit_rows() const { return logit_rows_; }

  // The same, as floats on the host.
  std::vector<float> logits_host() const {
    const int64_t n = logit_rows_ * cfg_.vocab;
    std::vector<float> out(static_cast<size_t>(n));
    if constexpr (std::is_same_v<D, Cpu>) {
      for (int64_t i = 0; i < n; ++i) out[size_t(i)] = float(to_acc(logits_.data()[i]));
    } else {
      auto host = logits_.slice(0, logit_rows_).template to<Cpu>();
      for (int64_t i = 0; i < n; ++i) out[size_t(i)] = float(to_acc(host.data()[i]));
    }
    return out;
  }

  // Greedy choice for each logits row, computed on the device.
  std::span<const int32_t> argmax() const { return {host_argmax_, size_t(logit_rows_)}; }

 private:
  // Makes the decoder's stream current for the kernels and allocations of one call.
  struct StreamScope {
#if defined(__CUDACC__)
    cudaStream_t saved{};
    explicit StreamScope(Decoder& d) {
      if constexpr (std::is_same_v<D, Cuda>) {
        if (!d.stream_) MIL_CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream_, cudaStreamNonBlocking));
        saved = cuda::current_stream();
        cuda::current_stream() = d.stream_;
      }
    }
    ~StreamScope() {
      if constexpr (std::is_same_v<D, Cuda>) cuda::current_stream() = saved;
    }
#else
    explicit StreamScope(Decoder&) {}
#endif
  };

  int64_t check_slot(int64_t slot) const {
    MIL_CHECK(slot >= 0 && slot < opt_.slots, "Decoder: slot ", slot, " of ", opt_.slots);
    return slot;
  }
  void check_room(int64_t slot, int64_t n) const {
    MIL_CHECK(lengths_[size_t(slot)] + n <= opt_.max_seq, "Decoder: sequence ", slot, " has ",
              lengths_[size_t(slot)], " tokens; ", n, " more exceed the context of ", opt_.max_seq);
  }
  void check_ids(std::span<const int32_t> ids) const {
    for (size_t i = 0; i < ids.size(); ++i)
      MIL_CHECK(ids[i] >= 0 && ids[i] < cfg_.vocab, "Decoder: token id ", ids[i],
                " at position ", i, " is outside the vocabulary [0, ", cfg_.vocab, ")");
  }

  const T* weight(const std::string& name) const { return weights_[name].value().data(); }

  void upload_tokens() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>)
      MIL_CUDA_CHECK(cudaMemcpyAsync(tokens_.data(), pinned_tokens_,
                                     size_t(3 * rows_) * sizeof(int32_t), cudaMemcpyHostToDevice,
                                     stream_));
#endif
  }

  // Waits for the step and makes argmax() valid.
  void finish() {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) MIL_CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
  }

  void run_decode_step(int64_t n) {
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>) {
      if (opt_.cuda_graphs) {
        auto it = graphs_.find(n);
        if (it != graphs_.end()) {
          MIL_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
          return;
        }
        forward(n, false, 0, n);  // eager: creates the GEMM plans and workspaces
        cudaGraph_t graph{};
        MIL_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        try {
          forward(n, false, 0, n);
        } catch (...) {
          cudaStreamEndCapture(stream_, &graph);
          if (graph) cudaGraphDestroy(graph);
          throw;
        }
        MIL_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
        cudaGraphExec_t exec{};
        MIL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        cudaGraphDestroy(graph);
        graphs_[n] = exec;
        return;
      }
    }
#endif
    forward(n, false, 0, n);
  }

  static GemmShape residual_gemm(int64_t m, int64_t n, int64_t k) {
    GemmShape s{m, n, k, false, true};
    s.beta = 1.f;  // x += a W^T
    return s;
  }

  void mlp(const std::string& p, int64_t rows) {
    const LlamaConfig& c = cfg_;
    const int64_t d = c.d_model, ff = c.d_ff;
    T *x = x_.data(), *h = h_.data(), *gu = gate_up_.data(), *m = mlp_.data();
    MIL_RUN(D, rmsnorm_forward, h, nullptr, x, weight(p + "mlp_norm"), rows, d, c.norm_eps);
    MIL_RUN(D, matmul, GemmShape{rows, 2 * ff, d, false, true}, gu, h, weight(p + "w_gate_up"));
    MIL_RUN(D, swiglu_forward, m, gu, gu + ff, rows, ff, 2 * ff);
    MIL_RUN(D, matmul, residual_gemm(rows, d, ff), x, m, weight(p + "w_down"));
  }

  // x += mixer(rmsnorm(x)) for Mamba layer number `index` (among the Mamba layers), on batch x seq
  // staged tokens; its conv ring and SSM state carry the sequences across calls.
  void mamba_layer(const std::string& p, int64_t index, int64_t batch, int64_t seq,
                   const int32_t* slots, const int32_t* pos) {
    const LlamaConfig& c = cfg_;
    const int64_t rows = batch * seq, d = c.d_model, di = hybrid_.d_inner();
    const int64_t width = hybrid_.in_proj_rows(), channels = hybrid_.conv_channels();
    T *x = x_.data(), *h = h_.data(), *proj = proj_.data(), *y = ssm_y_.data();
    T* ring = conv_ring_.data() + index * opt_.slots * ring_len_ * channels;
    float* state = ssm_state_.data() + index * opt_.slots * ssm_state_.size(1);
    const Conv1dRing<T> conv_ring{ring, ring_len_, opt_.slots, slots, pos};
    MIL_RUN(D, rmsnorm_forward, h, nullptr, x, weight(p + "attn_norm"), rows, d, c.norm_eps);
    MIL_RUN(D, matmul, GemmShape{rows, width, d, false, true}, proj, h, weight(p + "in_proj"));
    if (hybrid_.mixer == MixerKind::mamba2) {
      const ag::Mamba2Dims m = mamba2_dims(hybrid_, batch, seq);
      T* xbc = conv_out_.data();
      MIL_RUN(D, conv1d_forward, xbc, proj + di, weight(p + "conv_w"), weight(p + "conv_b"),
              m.conv(), conv_ring);
      MIL_RUN(D, ssd_scan_forward, y, xbc, xbc + m.d_xb(), xbc + 2 * m.d_xb(),
              proj + m.dt_offset(), weight(p + "dt_bias"), weight(p + "A_log"), weight(p + "D"),
              m.ssd(), SsdStates{state, opt_.slots, slots});
      // The gated norm's output reuses the attention output buffer ([rows, d_inner]).
      MIL_RUN(D, gated_rmsnorm_forward, att_.data(), nullptr, y, proj, weight(p + "ssm_norm"),
              m.norm());
      MIL_RUN(D, matmul, residual_gemm(rows, d, di), x, att_.data(), weight(p + "out_proj"));
    } else {
      const ag::Mamba1Dims m = mamba1_dims(hybrid_, batch, seq);
      const int64_t rank = hybrid_.dt_rank();
      MIL_RUN(D, matmul, GemmShape{rows, rank, d, false, true}, dt_low_.data(), h, weight(p + "dt_down"));
      MIL_RUN(D, matmul, GemmShape{rows, di, rank, false, true}, dt_.data(), dt_low_.data(),
              weight(p + "dt_proj"));
      MIL_RUN(D, repeat_groups_forward, expanded_.data(), proj, m.repeat());
      MIL_RUN(D, conv1d_forward, conv_out_.data(), expanded_.data(), weight(p + "conv_w"),
              weight(p + "conv_b"), m.conv(), conv_ring);
      MIL_RUN(D, selective_scan_forward, y, conv_out_.data(), dt_.data(), weight(p + "dt_bias"),
              weight(p + "A_log"), proj + m.b_offset(), proj + m.c_offset(), weight(p + "D"),
              proj + m.z_offset(), m.scan(), SelectiveStates{state, opt_.slots, slots});
      MIL_RUN(D, matmul, residual_gemm(rows, d, di), x, y, weight(p + "out_proj"));
    }
  }

  // One step over `rows` staged tokens: a prefill chunk of one sequence (batch 1 x rows tokens) or
  // a decode step (rows sequences x 1 token); logits for rows [first, first + n_logits).
  void forward(int64_t rows, bool fresh, int64_t first, int64_t n_logits, bool prefill = false) {
    const LlamaConfig& c = cfg_;
    const int64_t d = c.d_model, hd = c.head_dim, H = c.n_heads, Hkv = c.n_kv_heads;
    const int64_t qkvw = c.qkv_layout().width(), kvw = Hkv * hd;
    const int32_t* ids = tokens_.data();
    const int32_t* slots = ids + rows_;
    const int32_t* pos = ids + 2 * rows_;
    T *x = x_.data(), *h = h_.data(), *qkv = qkv_.data(), *att = att_.data();
    const RopeConfig rope = c.rope();
    const KvAttentionShape ks{rows, H, Hkv, hd, qkvw, opt_.slots, opt_.max_seq,
                              float(1.0 / std::sqrt(double(hd)))};
    const int64_t layer_cache = opt_.slots * opt_.max_seq * kvw;

    MIL_RUN(D, embedding_forward, x, weight("tok_embeddings"), ids, rows, d, c.vocab);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      if (!hybrid_.is_attention(l)) {
        mamba_layer(p, state_index_[size_t(l)], prefill ? 1 : rows, prefill ? rows : 1, slots, pos);
        mlp(p, rows);
        continue;
      }
      const int64_t a = state_index_[size_t(l)];
      T* kc = k_cache_.data() + a * layer_cache;
      T* vc = v_cache_.data() + a * layer_cache;
      MIL_RUN(D, rmsnorm_forward, h, nullptr, x, weight(p + "attn_norm"), rows, d, c.norm_eps);
      MIL_RUN(D, matmul, GemmShape{rows, qkvw, d, false, true}, qkv, h, weight(p + "wqkv"));
      if (c.attention_bias) MIL_RUN(D, bias_add, qkv, weight(p + "bqkv"), rows, qkvw);
      // q and k heads are adjacent in a row: one launch rotates both.
      MIL_RUN(D, rope_apply, qkv, qkv, pos, rows, H + Hkv, qkvw, rope, false);
      MIL_RUN(D, kv_cache_append, kc, vc, qkv + H * hd, qkv + (H + Hkv) * hd, qkvw, slots, pos,
              rows, kvw, opt_.slots, opt_.max_seq);
      // The GPU flash-attention kernel (bf16, head_dim 64 or 128) runs a fresh prompt faster;
      // everything else reads the cache.
      bool flash = false;
      if constexpr (std::is_same_v<D, Cuda> && std::is_same_v<T, bf16>) {
        flash = fresh && (hd == 64 || hd == 128);
        if (flash)
          MIL_RUN(D, attention_forward, att, nullptr, qkv, qkv + H * hd, qkv + (H + Hkv) * hd,
                  attention_shape_fused(1, rows, H, Hkv, hd));
      }
      if (!flash) MIL_RUN(D, attention_kv_cache, att, qkv, kc, vc, slots, pos, ks, workspace_.data());
      MIL_RUN(D, matmul, residual_gemm(rows, d, H * hd), x, att, weight(p + "wo"));
      mlp(p, rows);
    }
    MIL_RUN(D, rmsnorm_forward, h, nullptr, x + first * d, weight("norm"), n_logits, d, c.norm_eps);
    const T* head = weight(c.tied_embeddings ? "tok_embeddings" : "lm_head");
    MIL_RUN(D, matmul, GemmShape{n_logits, c.vocab, d, false, true}, logits_.data(), h, head);
    MIL_RUN(D, argmax_rows, argmax_.data(), logits_.data(), n_logits, c.vocab);
#if defined(__CUDACC__)
    if constexpr (std::is_same_v<D, Cuda>)
      MIL_CUDA_CHECK(cudaMemcpyAsync(pinned_argmax_, argmax_.data(),
                                     size_t(n_logits) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                     stream_));
#endif
  }

  const ParameterStore<T, D>& weights_;
  HybridConfig hybrid_;
  LlamaConfig cfg_;
  DecoderOptions opt_;
  int64_t rows_ = 0, logit_rows_ = 0;
  Tensor<T, D> k_cache_, v_cache_, x_, h_, qkv_, att_, gate_up_, mlp_, logits_;
  // Mamba layers: conv rings [mamba layers * slots, ring_len, channels], fp32 SSM states
  // [mamba layers * slots, state], and the mixer's activations.
  Tensor<T, D> conv_ring_, proj_, conv_out_, ssm_y_, expanded_, dt_low_, dt_;
  Tensor<float, D> ssm_state_;
  int64_t n_attention_ = 0, n_mamba_ = 0, ring_len_ = 0;
  std::vector<int64_t> state_index_;  // per layer: its index among the attention or Mamba layers
  Tensor<int32_t, D> tokens_, argmax_;
  Tensor<float, D> workspace_;  // GPU attention_kv_cache's (empty on the CPU)
  std::vector<int64_t> lengths_;
  int32_t* host_tokens_ = nullptr;
  int32_t* host_argmax_ = nullptr;
#if defined(__CUDACC__)
  cudaStream_t stream_ = nullptr;
  int32_t* pinned_tokens_ = nullptr;
  int32_t* pinned_argmax_ = nullptr;
  std::map<int64_t, cudaGraphExec_t> graphs_;
#endif
};

}  // namespace mil::nn
