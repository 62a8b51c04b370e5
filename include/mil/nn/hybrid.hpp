#pragma once
// The model: a Llama-family decoder in which the layers outside config.attn_layers use a Mamba-2
// or Mamba-1 mixer instead of attention (docs/METHOD.md), built from the blocks of nn/blocks.hpp,
// on the CPU or the GPU. A Llama-family Transformer (the teacher) is the hybrid whose every layer
// is attention: HybridModel(all_attention(llama_config)). One class, one parameter table, one
// initialisation, one conversion and one loader (nn/model_load.hpp) serve both.
#include <cmath>
#include <functional>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "blocks.hpp"

namespace mil::nn {

// Fresh values of a Mamba layer's own parameters (docs/METHOD.md §4), from Philox streams of
// `seed` (one stream per layer and parameter, so a layer's values do not depend on the others):
// in_proj rows and the dt path uniform(±1/sqrt(fan_in)) (the projections that come from
// attention are overwritten by the teacher's weights afterwards), conv uniform(±1/sqrt(kernel)),
// dt_bias = softplus^-1(dt) with dt = exp(U[ln 1e-3, ln 1e-1]) clamped to >= 1e-4, A_log = log U(1, 16)
// per head (Mamba-2) or log n for n = 1..N (Mamba-1), D = 1, norm weight 1. out_proj uniform too.
inline void init_mamba_layer(LayerWeights<float, Cpu>& w, const HybridConfig& c, int64_t layer,
                             uint64_t seed) {
  MIL_CHECK(w.kind != LayerKind::attention, "init_mamba_layer: layer ", layer, " is attention");
  const bool m2 = w.kind == LayerKind::mamba2;
  const uint64_t base = uint64_t(layer) * 16 + 1000;
  auto uniform = [&](const ag::Var<float, Cpu>& v, int k, float bound) {
    float* t = v.value().data();
    for (int64_t i = 0; i < v.numel(); ++i)
      t[i] = rng::uniform(seed, base + uint64_t(k), uint64_t(i), -bound, bound);
  };
  auto fill = [](const ag::Var<float, Cpu>& v, float value) {
    std::fill_n(v.value().data(), v.numel(), value);
  };
  const auto& in_proj = m2 ? w.mamba2.in_proj : w.mamba1.in_proj;
  const auto& out_proj = m2 ? w.mamba2.out_proj : w.mamba1.out_proj;
  const auto& conv_w = m2 ? w.mamba2.conv_w : w.mamba1.conv_w;
  const auto& conv_b = m2 ? w.mamba2.conv_b : w.mamba1.conv_b;
  const auto& dt_bias = m2 ? w.mamba2.dt_bias : w.mamba1.dt_bias;
  const auto& a_log = m2 ? w.mamba2.A_log : w.mamba1.A_log;
  const float d = float(c.llama.d_model);
  uniform(in_proj, 0, 1.f / std::sqrt(d));
  uniform(out_proj, 1, 1.f / std::sqrt(float(c.d_inner())));
  uniform(conv_w, 2, 1.f / std::sqrt(float(c.conv_kernel)));
  uniform(conv_b, 3, 1.f / std::sqrt(float(c.conv_kernel)));
  for (int64_t i = 0; i < dt_bias.numel(); ++i) {
    const double u = rng::uniform(seed, base + 4, uint64_t(i), 0.f, 1.f);
    const double dt = std::max(std::exp(std::log(1e-3) + u * (std::log(1e-1) - std::log(1e-3))), 1e-4);
    dt_bias.value().data()[i] = float(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
  }
  float* a = a_log.value().data();
  if (m2) {
    for (int64_t i = 0; i < a_log.numel(); ++i)
      a[i] = std::log(rng::uniform(seed, base + 5, uint64_t(i), 1.f, 16.f));
    fill(w.mamba2.ssm_norm, 1.f);
    fill(w.mamba2.D_skip, 1.f);
  } else {
    const int64_t N = c.mamba1_d_state;
    for (int64_t i = 0; i < a_log.numel(); ++i) a[i] = std::log(float(i % N + 1));
    uniform(w.mamba1.dt_down, 6, 1.f / std::sqrt(d));
    uniform(w.mamba1.dt_proj, 7, 1.f / std::sqrt(float(c.dt_rank())));
    fill(w.mamba1.D_skip, 1.f);
  }
}

template <Element T, Device D>
class HybridModel {
 public:
  using Var = ag::Var<T, D>;
  using Borrow = std::function<bool(const ParamSlot&)>;

  explicit HybridModel(const HybridConfig& cfg)
      : cfg_(cfg), params_(parameter_specs(cfg)), weights_(bind_weights(cfg_, params_)) {}

  // A model whose parameters for which borrow(slot) is true are `lender`'s tensors, shared and
  // frozen (a student keeps its teacher's MLPs, embeddings and norms without copying them); its
  // own store, gradients and optimizer moments cover the rest. The lender must have those
  // parameters with the same shapes.
  HybridModel(const HybridConfig& cfg, const HybridModel& lender, const Borrow& borrow)
      : cfg_(cfg), params_(borrowing_store(cfg, lender, borrow)),
        weights_(bind_weights(cfg_, params_)) {}

  // A model for inference only: no gradient buffers, and the parameters for which omit(slot) is
  // true hold no elements (their values are given afterwards in block format, set_block_weights).
  static HybridModel inference(const HybridConfig& cfg, const Borrow& omit) {
    std::vector<ParamSpec> specs;
    std::unordered_map<std::string, bool> omitted;
    for (const auto& s : parameter_table(cfg)) {
      specs.push_back({s.key(), s.shape});
      omitted[s.key()] = omit && omit(s);
    }
    return HybridModel(cfg, ParameterStore<T, D>::inference(
                                specs, [&](const std::string& name) { return omitted.at(name); }));
  }

  HybridModel(HybridModel&& o) noexcept = default;
  HybridModel& operator=(HybridModel&& o) noexcept = default;

  const HybridConfig& config() const { return cfg_; }
  // Whether every parameter holds its float values (false for an inference model whose quantised
  // matrices are kept in block format only): training, conversion and copies need them.
  bool has_float_weights() const {
    for (const auto& e : params_.entries())
      if (!e.var.value().defined() && e.var.numel() > 0) return false;
    return true;
  }
  ParameterStore<T, D>& params() { return params_; }
  const ParameterStore<T, D>& params() const { return params_; }
  const ModelWeights<T, D>& weights() const { return weights_; }
  // A parameter by its key (nn::param_key); code inside mil reaches weights through weights().
  const Var& param(const std::string& key) const { return params_[key]; }

  // Attention, MLP and embedding weights ~ N(0, std), norm weights 1, Mamba layers as
  // init_mamba_layer: drawn on the CPU, so CPU and GPU models start from the same numbers.
  // Borrowed parameters are the lender's and keep their values.
  void init_random(uint64_t seed, float std = 0.02f) {
    writable_floats("init_random");
    HybridModel<float, Cpu> host(cfg_);
    rng::fill_normal(host.params().values(), 0.f, std, seed);
    for (const auto& s : parameter_table(cfg_))
      if (is_norm(s.param)) {
        const auto& v = host.weights()[s];
        std::fill_n(v.value().data(), v.numel(), 1.f);
      }
    for (int64_t l = 0; l < cfg_.llama.n_layers; ++l)
      if (!cfg_.is_attention(l)) init_mamba_layer(host.layer(l), cfg_, l, seed);
    copy_owned_from(host);
  }

  // Logits [batch * seq, vocab] for token ids [batch * seq] at the given positions (used by the
  // attention layers' RoPE).
  Var forward(ag::Tape& tape, const Tensor<int32_t, D>& ids, const Tensor<int32_t, D>& positions,
              int64_t batch, int64_t seq) const {
    MIL_CHECK(ids.numel() == batch * seq, "HybridModel::forward: ", ids.numel(),
              " ids for batch ", batch, " x seq ", seq);
    MIL_CHECK(has_float_weights(), "HybridModel::forward: this model keeps some weights in block "
              "format only (loaded for CPU inference); load it with its float weights");
    const LlamaConfig& c = cfg_.llama;
    Var x = ag::embedding(tape, weights_.tok_embeddings, ids);
    for (const auto& w : weights_.layers) {
      x = w.kind == LayerKind::attention ? attention_block(tape, x, w, c, positions, batch, seq)
                                         : mamba_block(tape, x, w, cfg_, batch, seq);
      x = mlp_block(tape, x, w.mlp, c);
    }
    return logits_block(tape, x, weights_, c);
  }

  // The linear layers in their file's block formats (a GGUF model on the CPU): the decoder's
  // float CPU products use them (nn/block_weights.hpp). Copies and conversions of the model do not
  // carry them: they are bound to these weights' values as loaded.
  const std::shared_ptr<const BlockWeights>& block_weights() const { return blocks_; }
  void set_block_weights(std::shared_ptr<const BlockWeights> b) {
    MIL_CHECK(b || has_float_weights(), "set_block_weights: the model keeps some weights in block "
              "format only: it cannot drop its blocks");
    if (b) {
      const LlamaConfig& c = cfg_.llama;
      MIL_CHECK(int64_t(b->layers.size()) == c.n_layers, "set_block_weights: ", b->layers.size(),
                " layers for a model of ", c.n_layers);
      auto check = [&](const BlockMatrix& m, const Var& w, const char* what) {
        MIL_CHECK(m.empty() || (w.shape().rank() == 2 && m.out() == w.shape()[0] &&
                                m.in() == w.shape()[1]),
                  "set_block_weights: ", what, " is ", m.out(), " x ", m.in(), ", the model's ",
                  w.shape().str());
      };
      for (int64_t l = 0; l < c.n_layers; ++l) {
        const auto& bl = b->layers[size_t(l)];
        const auto& w = weights_.layers[size_t(l)];
        MIL_CHECK(w.kind == LayerKind::attention ||
                      (bl.wqkv.empty() && bl.wo.empty()),
                  "set_block_weights: layer ", l, " is a Mamba layer and has attention blocks");
        if (w.kind == LayerKind::attention) check(bl.wqkv, w.attn.wqkv, "wqkv"), check(bl.wo, w.attn.wo, "wo");
        check(bl.gate_up, w.mlp.w_gate_up, "gate_up");
        check(bl.down, w.mlp.w_down, "down");
      }
      check(b->lm_head, weights_.lm_head, "lm_head");
      // A weight without float values must be in the blocks.
      for (const auto& s : parameter_table(cfg_)) {
        const Var& v = weights_[s];
        const BlockMatrix* m = b->matrix_for(s, c.tied_embeddings);
        MIL_CHECK(v.value().defined() || v.numel() == 0 || (m && !m->empty()), "set_block_weights: ",
                  s.key(), " has no float values and no blocks");
      }
    }
    blocks_ = std::move(b);
  }

  // Writable views for initialisation and loading (the tensors themselves are shared).
  LayerWeights<T, D>& layer(int64_t l) { return weights_.layers.at(size_t(l)); }
  ModelWeights<T, D>& mutable_weights() { return weights_; }

  // This model's own parameters take the values of the same parameters of `src` (any element
  // type or device; rounded once on the host). Borrowed parameters are not touched.
  template <Element S, Device DS>
  void copy_owned_from(const HybridModel<S, DS>& src) {
    writable_floats("copy_owned_from");
    for (const auto& e : params_.entries()) {
      if (!e.owned()) continue;
      const auto& from = src.params()[e.name].value();
      MIL_CHECK(from.shape() == e.var.shape(), "copy_owned_from: '", e.name, "' has shape ",
                from.shape().str(), " in the source, ", e.var.shape().str(), " here");
      const auto host = from.template to<Cpu>();
      auto cast = Tensor<T, Cpu>::empty(host.shape());
      for (int64_t i = 0; i < host.numel(); ++i) cast[i] = T(to_acc(host[i]));
      e.var.value().copy_from(cast);
    }
  }

 private:
  // Before the float weights change: a model without them refuses, and blocks made from the old
  // values are dropped (the decoder then runs the float products on the new ones).
  void writable_floats(const char* what) {
    MIL_CHECK(has_float_weights(), "HybridModel::", what, ": the model keeps some weights in block "
              "format only (loaded for CPU inference): load it with its float weights");
    blocks_.reset();
  }

  HybridModel(const HybridConfig& cfg, ParameterStore<T, D>&& store)
      : cfg_(cfg), params_(std::move(store)), weights_(bind_weights(cfg_, params_)) {}

  static ParameterStore<T, D> borrowing_store(const HybridConfig& cfg, const HybridModel& lender,
                                              const Borrow& borrow) {
    std::vector<ParamSpec> specs;
    std::unordered_map<std::string, bool> borrowed;
    for (const auto& s : parameter_table(cfg)) {
      specs.push_back({s.key(), s.shape});
      borrowed[s.key()] = borrow && borrow(s);
    }
    return ParameterStore<T, D>(specs, &lender.params(),
                                [&](const std::string& name) { return borrowed.at(name); });
  }

  HybridConfig cfg_;
  ParameterStore<T, D> params_;
  ModelWeights<T, D> weights_;
  std::shared_ptr<const BlockWeights> blocks_;
};

// Layers `keep` (ascending, distinct) of a model, renumbered 0, 1, ..., with its embeddings, final
// norm and LM head: a small model of real structure. A layer keeps its kind. The paper's shrunk
// drafts take layers {0, L-1} or {0, L/3, 2L/3, L-1} of the teacher (draft_layers).
inline HybridModel<float, Cpu> select_layers(const HybridModel<float, Cpu>& m, std::span<const int64_t> keep) {
  const int64_t layers = m.config().llama.n_layers;
  MIL_CHECK(!keep.empty(), "select_layers: no layer kept");
  for (size_t i = 0; i < keep.size(); ++i)
    MIL_CHECK(keep[i] >= 0 && keep[i] < layers && (i == 0 || keep[i] > keep[i - 1]), "select_layers: ",
              "layer ", keep[i], " (layers must be ascending, distinct and below ", layers, ")");
  HybridConfig c = m.config();
  c.llama.n_layers = int64_t(keep.size());
  c.attn_layers.clear();
  for (size_t i = 0; i < keep.size(); ++i)
    if (m.config().is_attention(keep[i])) c.attn_layers.push_back(int64_t(i));
  HybridModel<float, Cpu> out(c);
  for (const ParamSlot& slot : parameter_table(c)) {
    ParamSlot from = slot;
    if (slot.layer >= 0) from.layer = keep[size_t(slot.layer)];
    out.params()[slot.key()].value().copy_from(m.params()[from.key()].value());
  }
  return out;
}

// The first `n` layers of a model (select_layers 0 .. n-1): tests, quick runs.
inline HybridModel<float, Cpu> first_layers(const HybridModel<float, Cpu>& m, int64_t n) {
  MIL_CHECK(n >= 1 && n <= m.config().llama.n_layers, "first_layers: ", n, " of a model of ",
            m.config().llama.n_layers, " layers");
  std::vector<int64_t> keep(static_cast<size_t>(n));
  std::iota(keep.begin(), keep.end(), int64_t(0));
  return select_layers(m, keep);
}

// The teacher layers of the paper's shrunk drafts: 2 -> {0, L-1}, 4 -> {0, L/3, 2L/3, L-1}.
inline std::vector<int64_t> draft_layers(int64_t n_layers, int64_t draft) {
  MIL_CHECK((draft == 2 || draft == 4) && n_layers >= draft, "a shrunk draft takes 2 or 4 of the ",
            "teacher's layers (asked for ", draft, " of ", n_layers, ")");
  if (draft == 2) return {0, n_layers - 1};
  return {0, n_layers / 3, 2 * n_layers / 3, n_layers - 1};
}

// The same model in another element type or on another device (e.g. float CPU weights loaded from
// a file -> bf16 on the GPU): every weight is rounded once, on the host.
template <Element To, Device DTo, Element T, Device D>
HybridModel<To, DTo> convert_model(const HybridModel<T, D>& m) {
  HybridModel<To, DTo> out(m.config());
  out.copy_owned_from(m);  // borrowed parameters of m are copied too: `out` owns everything
  return out;
}

}  // namespace mil::nn
