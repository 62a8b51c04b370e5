#pragma once
// HybridModel: a Llama-family decoder in which the layers outside config.attn_layers use a Mamba-2
// or Mamba-1 mixer instead of attention (METHOD.md §1-3), built from autograd ops, on the CPU or
// the GPU. Attention layers, MLPs, norms, embeddings and the LM head are the Llama model's own
// blocks (nn/llama.hpp), with the same parameter names, so a hybrid with every layer attention
// holds exactly a LlamaModel's parameters.
//
//   Mamba-2 mixer:  out_proj · mamba2_core(in_proj · u)          (autograd/mamba_ops.hpp)
//   Mamba-1 mixer:  out_proj · mamba1_core(in_proj · u, dt_proj · (dt_down · u))
// Mamba layers take no positions (no RoPE).
#include <cmath>
#include <string>

#include "../autograd/mamba_ops.hpp"
#include "hybrid_config.hpp"
#include "llama.hpp"

namespace mil::nn {

inline ag::Mamba2Dims mamba2_dims(const HybridConfig& c, int64_t batch, int64_t seq) {
  return {batch, seq, c.llama.n_heads, c.llama.n_kv_heads, c.llama.head_dim, c.conv_kernel,
          c.ssm_norm_eps};
}
inline ag::Mamba1Dims mamba1_dims(const HybridConfig& c, int64_t batch, int64_t seq) {
  return {batch,        seq, c.d_inner(), c.d_xb(), c.mamba1_d_state, c.conv_kernel,
          c.mamba1_double_dt_bias ? 2.f : 1.f};
}

// x + mixer(rmsnorm(x)) for the Mamba layer with parameter prefix p.
template <Element T, Device D>
ag::Var<T, D> mamba_block(ag::Tape& tape, const ag::Var<T, D>& x, const ParameterStore<T, D>& w,
                          const std::string& p, const HybridConfig& c, int64_t batch, int64_t seq) {
  auto h = ag::rmsnorm(tape, x, w[p + "attn_norm"], c.llama.norm_eps);
  auto proj = ag::linear(tape, h, w[p + "in_proj"]);
  ag::Var<T, D> y;
  if (c.mixer == MixerKind::mamba2) {
    y = ag::mamba2_core(tape, proj, w[p + "conv_w"], w[p + "conv_b"], w[p + "dt_bias"],
                        w[p + "A_log"], w[p + "D"], w[p + "ssm_norm"], mamba2_dims(c, batch, seq));
  } else {
    auto dt = ag::linear(tape, ag::linear(tape, h, w[p + "dt_down"]), w[p + "dt_proj"]);
    y = ag::mamba1_core(tape, proj, dt, w[p + "conv_w"], w[p + "conv_b"], w[p + "dt_bias"],
                        w[p + "A_log"], w[p + "D"], mamba1_dims(c, batch, seq));
  }
  return ag::add(tape, x, ag::linear(tape, y, w[p + "out_proj"]));
}

// Fresh values of a Mamba layer's own parameters (METHOD.md §4), from Philox streams of `seed`
// (one stream per layer and parameter, so a layer's values do not depend on the others):
// in_proj rows and the dt path uniform(±1/sqrt(fan_in)) (the projections that come from
// attention are overwritten by the teacher's weights afterwards), conv uniform(±1/sqrt(kernel)),
// dt_bias = softplus^-1(dt) with dt = exp(U[ln 1e-3, ln 1e-1]) clamped to >= 1e-4, A_log = log U(1, 16)
// per head (Mamba-2) or log n for n = 1..N (Mamba-1), D = 1, norm weight 1. out_proj uniform too.
inline void init_mamba_layer(ParameterStore<float, Cpu>& w, const HybridConfig& c, int64_t layer,
                             uint64_t seed) {
  const std::string p = "layers." + std::to_string(layer) + ".";
  const uint64_t base = uint64_t(layer) * 16 + 1000;
  auto uniform = [&](const std::string& name, int k, float bound) {
    auto t = w[p + name].value();
    for (int64_t i = 0; i < t.numel(); ++i)
      t.data()[i] = rng::uniform(seed, base + uint64_t(k), uint64_t(i), -bound, bound);
  };
  auto fill = [&](const std::string& name, float v) {
    auto t = w[p + name].value();
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = v;
  };
  const float d = float(c.llama.d_model);
  uniform("in_proj", 0, 1.f / std::sqrt(d));
  uniform("out_proj", 1, 1.f / std::sqrt(float(c.d_inner())));
  uniform("conv_w", 2, 1.f / std::sqrt(float(c.conv_kernel)));
  uniform("conv_b", 3, 1.f / std::sqrt(float(c.conv_kernel)));
  auto dt_bias = w[p + "dt_bias"].value();
  for (int64_t i = 0; i < dt_bias.numel(); ++i) {
    const double u = rng::uniform(seed, base + 4, uint64_t(i), 0.f, 1.f);
    const double dt = std::max(std::exp(std::log(1e-3) + u * (std::log(1e-1) - std::log(1e-3))), 1e-4);
    dt_bias.data()[i] = float(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
  }
  auto a_log = w[p + "A_log"].value();
  if (c.mixer == MixerKind::mamba2) {
    for (int64_t i = 0; i < a_log.numel(); ++i)
      a_log.data()[i] = std::log(rng::uniform(seed, base + 5, uint64_t(i), 1.f, 16.f));
    fill("ssm_norm", 1.f);
  } else {
    const int64_t N = c.mamba1_d_state;
    for (int64_t i = 0; i < a_log.numel(); ++i) a_log.data()[i] = std::log(float(i % N + 1));
    uniform("dt_down", 6, 1.f / std::sqrt(d));
    uniform("dt_proj", 7, 1.f / std::sqrt(float(c.dt_rank())));
  }
  fill("D", 1.f);
}

template <Element T, Device D>
class HybridModel {
 public:
  using Var = ag::Var<T, D>;

  explicit HybridModel(const HybridConfig& cfg) : cfg_(cfg), params_(cfg.parameter_specs()) {}

  const HybridConfig& config() const { return cfg_; }
  ParameterStore<T, D>& params() { return params_; }
  const ParameterStore<T, D>& params() const { return params_; }
  const Var& param(const std::string& name) const { return params_[name]; }

  // Attention, MLP and embedding weights ~ N(0, std), norm weights 1, Mamba layers as
  // init_mamba_layer: drawn on the CPU, so CPU and GPU models start from the same numbers.
  void init_random(uint64_t seed, float std = 0.02f) {
    ParameterStore<float, Cpu> host(cfg_.parameter_specs());
    rng::fill_normal(host.values(), 0.f, std, seed);
    for (const auto& e : host.entries())
      if (e.name.ends_with("norm"))
        for (int64_t i = 0; i < e.var.numel(); ++i) host.values()[e.offset + i] = 1.f;
    for (int64_t l = 0; l < cfg_.llama.n_layers; ++l)
      if (!cfg_.is_attention(l)) init_mamba_layer(host, cfg_, l, seed);
    copy_converted(params_, host);
  }

  // Logits [batch * seq, vocab] for token ids [batch * seq] at the given positions (used by the
  // attention layers' RoPE).
  Var forward(ag::Tape& tape, const Tensor<int32_t, D>& ids, const Tensor<int32_t, D>& positions,
              int64_t batch, int64_t seq) const {
    MIL_CHECK(ids.numel() == batch * seq, "HybridModel::forward: ", ids.numel(),
              " ids for batch ", batch, " x seq ", seq);
    const LlamaConfig& c = cfg_.llama;
    Var x = ag::embedding(tape, param("tok_embeddings"), ids);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      x = cfg_.is_attention(l) ? attention_block(tape, x, params_, p, c, positions, batch, seq)
                               : mamba_block(tape, x, params_, p, cfg_, batch, seq);
      x = mlp_block(tape, x, params_, p, c);
    }
    return logits_block(tape, x, params_, c);
  }

 private:
  HybridConfig cfg_;
  ParameterStore<T, D> params_;
};

template <Element To, Device DTo, Element T, Device D>
HybridModel<To, DTo> convert_model(const HybridModel<T, D>& m) {
  HybridModel<To, DTo> out(m.config());
  copy_converted(out.params(), m.params());
  return out;
}

}  // namespace mil::nn
