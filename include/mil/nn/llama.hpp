#pragma once
// A Llama-family decoder (GQA attention with RoPE, RMSNorm, SwiGLU MLP, tied or separate LM head)
// built from autograd ops, on the CPU or the GPU. Every layer is
//   x += Wo · attention(rope(Wqkv · rmsnorm(x)));  x += Wdown · swiglu(Wgate_up · rmsnorm(x))
// with q, k, v (and gate, up) fused into one weight each so each is one matrix product.
#include <cmath>
#include <string>
#include <vector>

#include "../autograd/ops.hpp"
#include "parameters.hpp"

namespace mil::nn {

struct LlamaConfig {
  int64_t vocab = 49152, d_model = 576, n_layers = 30, n_heads = 9, n_kv_heads = 3, head_dim = 64;
  int64_t d_ff = 1536;
  float norm_eps = 1e-5f;
  float rope_theta = 100000.f;
  bool tied_embeddings = true;
  bool attention_bias = false;  // biases on q, k and v (Qwen2): parameter layers.N.bqkv
  // Llama-3.1 RoPE frequency scaling ("rope_scaling": {"rope_type": "llama3", ...}).
  bool rope_llama3_scaling = false;
  float rope_factor = 8.f, rope_low_freq_factor = 1.f, rope_high_freq_factor = 4.f;
  float rope_original_max_positions = 8192.f;

  // SmolLM2-135M (the default teacher; METHOD.md).
  static LlamaConfig smollm2_135m() { return {}; }

  RopeConfig rope() const {
    RopeConfig r{head_dim};
    r.theta = rope_theta;
    r.llama3_scaling = rope_llama3_scaling;
    r.factor = rope_factor;
    r.low_freq_factor = rope_low_freq_factor;
    r.high_freq_factor = rope_high_freq_factor;
    r.original_max_positions = rope_original_max_positions;
    return r;
  }
  ag::QkvLayout qkv_layout() const { return {n_heads, n_kv_heads, head_dim}; }

  void validate() const {
    MIL_CHECK(vocab > 0 && d_model > 0 && n_layers > 0 && d_ff > 0 && head_dim > 0,
              "Llama config: sizes must be positive");
    MIL_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "Llama config: ",
              n_heads, " heads are not a multiple of ", n_kv_heads, " KV heads");
    MIL_CHECK(head_dim % 2 == 0, "Llama config: RoPE needs an even head_dim, got ", head_dim);
    MIL_CHECK(std::isfinite(norm_eps) && norm_eps > 0.f && std::isfinite(rope_theta) &&
                  rope_theta > 0.f,
              "Llama config: norm_eps and rope_theta must be positive and finite");
    rope_check_config(rope());
  }

  std::vector<ParamSpec> parameter_specs() const {
    validate();
    std::vector<ParamSpec> s{{"tok_embeddings", Shape{vocab, d_model}}};
    int64_t qkv = (n_heads + 2 * n_kv_heads) * head_dim;
    for (int64_t l = 0; l < n_layers; ++l) {
      std::string p = "layers." + std::to_string(l) + ".";
      s.push_back({p + "attn_norm", Shape{d_model}});
      s.push_back({p + "wqkv", Shape{qkv, d_model}});
      if (attention_bias) s.push_back({p + "bqkv", Shape{qkv}});
      s.push_back({p + "wo", Shape{d_model, n_heads * head_dim}});
      s.push_back({p + "mlp_norm", Shape{d_model}});
      s.push_back({p + "w_gate_up", Shape{2 * d_ff, d_model}});
      s.push_back({p + "w_down", Shape{d_model, d_ff}});
    }
    s.push_back({"norm", Shape{d_model}});
    if (!tied_embeddings) s.push_back({"lm_head", Shape{vocab, d_model}});
    return s;
  }
};

// x + Wo attention(rope(Wqkv rmsnorm(x) [+ bqkv])) with the parameters of layer prefix p.
template <Element T, Device D>
ag::Var<T, D> attention_block(ag::Tape& tape, const ag::Var<T, D>& x,
                              const ParameterStore<T, D>& params, const std::string& p,
                              const LlamaConfig& c, const Tensor<int32_t, D>& positions,
                              int64_t batch, int64_t seq) {
  const auto layout = c.qkv_layout();
  auto h = ag::rmsnorm(tape, x, params[p + "attn_norm"], c.norm_eps);
  auto qkv = ag::linear(tape, h, params[p + "wqkv"]);
  if (c.attention_bias) qkv = ag::bias_add(tape, qkv, params[p + "bqkv"]);
  qkv = ag::rope_qk(tape, qkv, positions, layout, c.rope());
  auto a = ag::attention(tape, qkv, batch, seq, layout);
  return ag::add(tape, x, ag::linear(tape, a, params[p + "wo"]));
}

// x + Wdown swiglu(Wgate_up rmsnorm(x)) with the parameters of layer prefix p.
template <Element T, Device D>
ag::Var<T, D> mlp_block(ag::Tape& tape, const ag::Var<T, D>& x, const ParameterStore<T, D>& params,
                        const std::string& p, const LlamaConfig& c) {
  auto h = ag::rmsnorm(tape, x, params[p + "mlp_norm"], c.norm_eps);
  auto m = ag::swiglu(tape, ag::linear(tape, h, params[p + "w_gate_up"]));
  return ag::add(tape, x, ag::linear(tape, m, params[p + "w_down"]));
}

// lm_head(rmsnorm(x)): the final norm and the (tied or separate) output projection.
template <Element T, Device D>
ag::Var<T, D> logits_block(ag::Tape& tape, const ag::Var<T, D>& x,
                           const ParameterStore<T, D>& params, const LlamaConfig& c) {
  auto h = ag::rmsnorm(tape, x, params["norm"], c.norm_eps);
  return ag::linear(tape, h, params[c.tied_embeddings ? "tok_embeddings" : "lm_head"]);
}

template <Element T, Device D>
class LlamaModel {
 public:
  using Var = ag::Var<T, D>;

  explicit LlamaModel(const LlamaConfig& cfg) : cfg_(cfg), params_(cfg.parameter_specs()) {}

  const LlamaConfig& config() const { return cfg_; }
  ParameterStore<T, D>& params() { return params_; }
  const ParameterStore<T, D>& params() const { return params_; }
  const Var& param(const std::string& name) const { return params_[name]; }

  // Weights ~ N(0, std) and norm weights 1, drawn on the CPU from Philox stream `seed` so the
  // CPU and the GPU models start from the same numbers.
  void init_random(uint64_t seed, float std = 0.02f) {
    auto host = Tensor<float, Cpu>::empty(Shape{params_.numel()});
    rng::fill_normal(host, 0.f, std, seed);
    for (const auto& e : params_.entries()) {
      if (e.name.ends_with("norm"))
        for (int64_t i = 0; i < e.var.numel(); ++i) host[e.offset + i] = 1.f;
    }
    auto cast = Tensor<T, Cpu>::empty(host.shape());
    for (int64_t i = 0; i < host.numel(); ++i) cast[i] = T(host[i]);
    params_.values().copy_from(cast);
  }

  // Logits [batch * seq, vocab] for token ids [batch * seq] at the given positions.
  Var forward(ag::Tape& tape, const Tensor<int32_t, D>& ids, const Tensor<int32_t, D>& positions,
              int64_t batch, int64_t seq) const {
    MIL_CHECK(ids.numel() == batch * seq, "LlamaModel::forward: ", ids.numel(), " ids for batch ",
              batch, " x seq ", seq);
    Var x = ag::embedding(tape, param("tok_embeddings"), ids);
    for (int64_t l = 0; l < cfg_.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      x = attention_block(tape, x, params_, p, cfg_, positions, batch, seq);
      x = mlp_block(tape, x, params_, p, cfg_);
    }
    return logits_block(tape, x, params_, cfg_);
  }

 private:
  LlamaConfig cfg_;
  ParameterStore<T, D> params_;
};

// The same model in another element type or on another device (e.g. float CPU weights loaded from
// a file -> bf16 on the GPU): every weight is rounded once, on the host.
template <Element To, Device DTo, Element T, Device D>
LlamaModel<To, DTo> convert_model(const LlamaModel<T, D>& m) {
  LlamaModel<To, DTo> out(m.config());
  copy_converted(out.params(), m.params());
  return out;
}

// Positions 0..seq-1 for each sequence of a batch, on device D.
template <Device D>
Tensor<int32_t, D> sequence_positions(int64_t batch, int64_t seq) {
  auto p = Tensor<int32_t, Cpu>::empty(Shape{batch * seq});
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) p[b * seq + t] = int32_t(t);
  if constexpr (std::is_same_v<D, Cpu>) return p;
  else return p.template to<D>();
}

}  // namespace mil::nn
