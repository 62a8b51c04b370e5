#pragma once
// Typed views of a model's weights, bound once from its ParameterStore through the parameter
// table (nn/param_table.hpp), so that the model, the decoder, initialisation and checkpoints reach
// a weight as `w.layers[l].attn.wqkv` instead of by a name string.
//
// A view is an ag::Var: a handle to a tensor (and its gradient) that may live in this model's
// store or in another's (a borrowed, frozen parameter: ParameterStore's lender). Products take
// weights through these views, so a later view type can hold a quantised block format (GGUF
// blocks kept on the CPU) without the callers' code changing shape.
#include <vector>

#include "param_table.hpp"
#include "parameters.hpp"

namespace mil::nn {

template <Element T, Device D>
struct AttentionWeights {
  ag::Var<T, D> wqkv, bqkv, wo;  // bqkv is empty unless the model has q/k/v biases (Qwen2)
};

template <Element T, Device D>
struct Mamba2Weights {
  ag::Var<T, D> in_proj, conv_w, conv_b, dt_bias, A_log, D_skip, ssm_norm, out_proj;
};

template <Element T, Device D>
struct Mamba1Weights {
  ag::Var<T, D> in_proj, dt_down, dt_proj, dt_bias, conv_w, conv_b, A_log, D_skip, out_proj;
};

template <Element T, Device D>
struct MlpWeights {
  ag::Var<T, D> norm, w_gate_up, w_down;
};

// One decoder layer: the mixer's input norm, one of the three mixers (the one `kind` names is
// bound, the others are empty) and the MLP.
enum class LayerKind { attention, mamba2, mamba1 };

template <Element T, Device D>
struct LayerWeights {
  LayerKind kind = LayerKind::attention;
  ag::Var<T, D> norm;
  AttentionWeights<T, D> attn;
  Mamba2Weights<T, D> mamba2;
  Mamba1Weights<T, D> mamba1;
  MlpWeights<T, D> mlp;
};

template <Element T, Device D>
struct ModelWeights {
  ag::Var<T, D> tok_embeddings, norm;
  ag::Var<T, D> lm_head;  // the embeddings themselves when they are tied
  std::vector<LayerWeights<T, D>> layers;

  // The view of one parameter of the table.
  ag::Var<T, D>& operator[](const ParamSlot& s) {
    using P = Param;
    if (s.layer < 0) {
      switch (s.param) {
        case P::tok_embeddings: return tok_embeddings;
        case P::norm: return norm;
        case P::lm_head: return lm_head;
        default: break;
      }
      MIL_FAIL("weights: '", s.key(), "' is not a model-level parameter");
    }
    MIL_CHECK(s.layer < int64_t(layers.size()), "weights: no layer ", s.layer);
    LayerWeights<T, D>& l = layers[size_t(s.layer)];
    const bool m2 = l.kind == LayerKind::mamba2;
    switch (s.param) {
      case P::attn_norm: return l.norm;
      case P::wqkv: return l.attn.wqkv;
      case P::bqkv: return l.attn.bqkv;
      case P::wo: return l.attn.wo;
      case P::in_proj: return m2 ? l.mamba2.in_proj : l.mamba1.in_proj;
      case P::conv_w: return m2 ? l.mamba2.conv_w : l.mamba1.conv_w;
      case P::conv_b: return m2 ? l.mamba2.conv_b : l.mamba1.conv_b;
      case P::dt_bias: return m2 ? l.mamba2.dt_bias : l.mamba1.dt_bias;
      case P::A_log: return m2 ? l.mamba2.A_log : l.mamba1.A_log;
      case P::D: return m2 ? l.mamba2.D_skip : l.mamba1.D_skip;
      case P::out_proj: return m2 ? l.mamba2.out_proj : l.mamba1.out_proj;
      case P::ssm_norm: return l.mamba2.ssm_norm;
      case P::dt_down: return l.mamba1.dt_down;
      case P::dt_proj: return l.mamba1.dt_proj;
      case P::mlp_norm: return l.mlp.norm;
      case P::w_gate_up: return l.mlp.w_gate_up;
      case P::w_down: return l.mlp.w_down;
      default: break;
    }
    MIL_FAIL("weights: '", s.key(), "' is not a layer parameter");
  }
  const ag::Var<T, D>& operator[](const ParamSlot& s) const {
    return const_cast<ModelWeights&>(*this)[s];
  }
};

inline LayerKind layer_kind(const HybridConfig& c, int64_t layer) {
  if (c.is_attention(layer)) return LayerKind::attention;
  return c.mixer == MixerKind::mamba2 ? LayerKind::mamba2 : LayerKind::mamba1;
}

// The store's specs of configuration `c` (names and shapes from the parameter table).
inline std::vector<ParamSpec> parameter_specs(const HybridConfig& c) {
  std::vector<ParamSpec> out;
  for (const auto& s : parameter_table(c)) out.push_back({s.key(), s.shape});
  return out;
}

// Views of every parameter of `c` in `store`, which must hold exactly the table's parameters.
template <Element T, Device D>
ModelWeights<T, D> bind_weights(const HybridConfig& c, const ParameterStore<T, D>& store) {
  const auto table = parameter_table(c);
  MIL_CHECK(table.size() == store.entries().size(), "bind_weights: the parameter store has ",
            store.entries().size(), " parameters, the model's configuration ", table.size());
  ModelWeights<T, D> w;
  w.layers.resize(size_t(c.llama.n_layers));
  for (int64_t l = 0; l < c.llama.n_layers; ++l) w.layers[size_t(l)].kind = layer_kind(c, l);
  for (const auto& s : table) {
    const std::string key = s.key();
    MIL_CHECK(store.has(key), "bind_weights: the parameter store has no '", key, "'");
    const ag::Var<T, D>& v = store[key];
    MIL_CHECK(v.shape() == s.shape, "bind_weights: parameter '", key, "' has shape ",
              v.shape().str(), ", the configuration says ", s.shape.str());
    w[s] = v;
  }
  if (c.llama.tied_embeddings) w.lm_head = w.tok_embeddings;
  return w;
}

}  // namespace mil::nn
