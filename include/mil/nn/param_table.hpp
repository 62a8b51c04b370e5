#pragma once
// The one table of a model's parameters: which parameters a configuration has, their shapes and
// their names. Everything else (the parameter store, the typed weight views, initialisation,
// checkpoint readers and writers) takes its parameters from here, so a name string lives in one
// place (param_name) and a parameter is otherwise named by its kind and layer.
//
// Names (mil's own; checkpoint code maps them to other formats):
//   tok_embeddings, norm, [lm_head]                                     the model's ends
//   layers.N.attn_norm                                                  the mixer's input norm
//   attention layer:  layers.N.{wqkv [q|k|v], [bqkv], wo}
//   Mamba-2 layer:    layers.N.{in_proj [z|x|B|C|dt], conv_w, conv_b, dt_bias, A_log, D,
//                     ssm_norm, out_proj}
//   Mamba-1 layer:    layers.N.{in_proj [x|z|B|C], dt_down, dt_proj, dt_bias, conv_w, conv_b,
//                     A_log, D, out_proj}
//   every layer:      layers.N.{mlp_norm, w_gate_up [gate|up], w_down}
#include <cstdint>
#include <string>
#include <vector>

#include "../core/shape.hpp"
#include "hybrid_config.hpp"

namespace mil::nn {

enum class Param : uint8_t {
  tok_embeddings, norm, lm_head,                                      // model
  attn_norm,                                                          // every layer
  wqkv, bqkv, wo,                                                     // attention
  in_proj, conv_w, conv_b, dt_bias, A_log, D, ssm_norm, dt_down, dt_proj, out_proj,  // Mamba
  mlp_norm, w_gate_up, w_down,                                        // MLP
};

inline const char* param_name(Param p) {
  static constexpr const char* names[] = {
      "tok_embeddings", "norm", "lm_head", "attn_norm", "wqkv", "bqkv", "wo",
      "in_proj", "conv_w", "conv_b", "dt_bias", "A_log", "D", "ssm_norm", "dt_down", "dt_proj",
      "out_proj", "mlp_norm", "w_gate_up", "w_down"};
  static_assert(sizeof(names) / sizeof(names[0]) == size_t(Param::w_down) + 1);
  return names[size_t(p)];
}

// Norm weights (initialised to 1, never decayed).
inline bool is_norm(Param p) {
  return p == Param::norm || p == Param::attn_norm || p == Param::ssm_norm ||
         p == Param::mlp_norm;
}

// One parameter of a model: its kind, its layer (-1 for the model's ends) and its shape.
struct ParamSlot {
  Param param;
  int64_t layer = -1;
  Shape shape;
  std::string key() const {
    return layer < 0 ? std::string(param_name(param))
                     : "layers." + std::to_string(layer) + "." + param_name(param);
  }
};

inline std::string param_key(Param p, int64_t layer = -1) { return ParamSlot{p, layer, {}}.key(); }

// Every parameter of a model of configuration `c`, in storage order (a layer's parameters are
// contiguous, the mixer's before the MLP's).
inline std::vector<ParamSlot> parameter_table(const HybridConfig& c) {
  c.validate();
  const LlamaConfig& m = c.llama;
  using P = Param;
  std::vector<ParamSlot> s{{P::tok_embeddings, -1, Shape{m.vocab, m.d_model}}};
  for (int64_t l = 0; l < m.n_layers; ++l) {
    auto add = [&](Param p, Shape shape) { s.push_back({p, l, shape}); };
    add(P::attn_norm, Shape{m.d_model});
    if (c.is_attention(l)) {
      add(P::wqkv, Shape{m.qkv_layout().width(), m.d_model});
      if (m.attention_bias) add(P::bqkv, Shape{m.qkv_layout().width()});
      add(P::wo, Shape{m.d_model, c.d_inner()});
    } else if (c.mixer == MixerKind::mamba2) {
      add(P::in_proj, Shape{c.in_proj_rows(), m.d_model});
      add(P::conv_w, Shape{c.conv_channels(), c.conv_kernel});
      add(P::conv_b, Shape{c.conv_channels()});
      add(P::dt_bias, Shape{m.n_heads});
      add(P::A_log, Shape{m.n_heads});
      add(P::D, Shape{m.n_heads});
      add(P::ssm_norm, Shape{c.d_inner()});
      add(P::out_proj, Shape{m.d_model, c.d_inner()});
    } else {
      add(P::in_proj, Shape{c.in_proj_rows(), m.d_model});
      add(P::dt_down, Shape{c.dt_rank(), m.d_model});
      add(P::dt_proj, Shape{c.d_inner(), c.dt_rank()});
      add(P::dt_bias, Shape{c.d_inner()});
      add(P::conv_w, Shape{c.conv_channels(), c.conv_kernel});
      add(P::conv_b, Shape{c.conv_channels()});
      add(P::A_log, Shape{c.d_inner(), c.mamba1_d_state});
      add(P::D, Shape{c.d_inner()});
      add(P::out_proj, Shape{m.d_model, c.d_inner()});
    }
    add(P::mlp_norm, Shape{m.d_model});
    add(P::w_gate_up, Shape{2 * m.d_ff, m.d_model});
    add(P::w_down, Shape{m.d_model, m.d_ff});
  }
  s.push_back({P::norm, -1, Shape{m.d_model}});
  if (!m.tied_embeddings) s.push_back({P::lm_head, -1, Shape{m.vocab, m.d_model}});
  return s;
}

}  // namespace mil::nn
