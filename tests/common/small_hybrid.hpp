#pragma once
// A 3-layer model of each layer kind, small enough for exhaustive decoding tests: all attention,
// or attention in layer 1 and Mamba-2 / Mamba-1 in layers 0 and 2 (d_xb 16, d_inner 32: Mamba-1
// with 8 states per channel is valid). Vocabulary 61.
#include <mil/nn/hybrid_config.hpp>
#include <mil/nn/weights.hpp>

namespace mil::test {

inline nn::HybridConfig small_hybrid_config(nn::LayerKind kind) {
  nn::LlamaConfig c;
  c.vocab = 61;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.d_ff = 40;
  c.rope_theta = 500.f;
  nn::HybridConfig h = nn::all_attention(c);
  if (kind == nn::LayerKind::attention) return h;
  h.attn_layers = {1};
  h.mixer = kind == nn::LayerKind::mamba2 ? nn::MixerKind::mamba2 : nn::MixerKind::mamba1;
  h.mamba1_d_state = 8;
  return h;
}

inline const char* layer_kind_name(nn::LayerKind k) {
  return k == nn::LayerKind::attention ? "attention" : k == nn::LayerKind::mamba2 ? "mamba2" : "mamba1";
}

inline constexpr nn::LayerKind kLayerKinds[] = {nn::LayerKind::attention, nn::LayerKind::mamba2,
                                                nn::LayerKind::mamba1};

}  // namespace mil::test
