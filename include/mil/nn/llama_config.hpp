#pragma once
// The shape of a Llama-family Transformer (GQA attention with RoPE, RMSNorm, SwiGLU MLP, tied or
// separate LM head): the teacher, and the part of every hybrid that comes from it. Every layer is
//   x += Wo · attention(rope(Wqkv · rmsnorm(x)));  x += Wdown · swiglu(Wgate_up · rmsnorm(x))
// with q, k, v (and gate, up) fused into one weight each so each is one matrix product.
#include <cmath>
#include <string>
#include <vector>

#include "../autograd/ops.hpp"
#include "../core/tensor.hpp"

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

  // SmolLM2-135M (the default teacher; docs/METHOD.md).
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
};

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
