#pragma once
// Shape of a hybrid model (docs/METHOD.md §1-3): a Llama-family teacher whose decoder layers
// outside `attn_layers` have their attention replaced by a Mamba mixer. Every layer keeps the teacher's
// structure  x += Mixer(rmsnorm(x)); x += W_down swiglu(W_gate_up rmsnorm(x)).
// A Llama-family model is the hybrid whose every layer is attention (all_attention()). The
// parameters of a configuration are listed in nn/param_table.hpp.
#include <algorithm>
#include <string>
#include <vector>

#include "llama_config.hpp"

namespace mil::nn {

enum class MixerKind { mamba2, mamba1 };

inline const char* mixer_name(MixerKind k) { return k == MixerKind::mamba2 ? "mamba2" : "mamba1"; }
inline MixerKind parse_mixer(const std::string& s) {
  if (s == "mamba2") return MixerKind::mamba2;
  if (s == "mamba1") return MixerKind::mamba1;
  MIL_CHECK(false, "unknown mixer '", s, "': expected mamba2 or mamba1");
  return MixerKind::mamba2;
}

struct HybridConfig {
  LlamaConfig llama;                  // the teacher's shape (embeddings, attention, MLP, norms)
  std::vector<int64_t> attn_layers;   // layers that keep attention, ascending
  MixerKind mixer = MixerKind::mamba2;
  int64_t conv_kernel = 4;
  int64_t mamba1_d_state = 16;        // Mamba-1 state per channel (Mamba-2 uses head_dim)
  float ssm_norm_eps = 1e-5f;         // Mamba-2 gated norm (the reference fixes it at 1e-5)
  // Mamba-1 reference-code quirk: dt_proj's bias is added twice (softplus(W u + 2 b)).
  bool mamba1_double_dt_bias = false;

  // Sizes of docs/METHOD.md §2-3.
  int64_t d_inner() const { return llama.n_heads * llama.head_dim; }
  int64_t d_xb() const { return llama.n_kv_heads * llama.head_dim; }
  int64_t d_state() const { return mixer == MixerKind::mamba2 ? llama.head_dim : mamba1_d_state; }
  int64_t dt_rank() const { return (llama.d_model + 15) / 16; }
  // Mamba-2: conv over [x|B|C]; Mamba-1: over the expanded x.
  int64_t conv_channels() const {
    return mixer == MixerKind::mamba2 ? 2 * d_xb() + d_inner() : d_inner();
  }
  int64_t in_proj_rows() const {
    return mixer == MixerKind::mamba2 ? 2 * d_inner() + 2 * d_xb() + llama.n_heads
                                      : 2 * d_xb() + 2 * d_inner();
  }
  bool is_attention(int64_t layer) const {
    return std::binary_search(attn_layers.begin(), attn_layers.end(), layer);
  }
  int64_t n_mamba_layers() const { return llama.n_layers - int64_t(attn_layers.size()); }

  void validate() const {
    llama.validate();
    MIL_CHECK(std::is_sorted(attn_layers.begin(), attn_layers.end()) &&
                  std::adjacent_find(attn_layers.begin(), attn_layers.end()) == attn_layers.end(),
              "hybrid config: attention layers must be ascending and distinct");
    for (int64_t l : attn_layers)
      MIL_CHECK(l >= 0 && l < llama.n_layers, "hybrid config: attention layer ", l,
                " is outside the model's ", llama.n_layers, " layers");
    MIL_CHECK(conv_kernel >= 2 && conv_kernel <= 8, "hybrid config: conv kernel ", conv_kernel,
              " outside 2..8");
    if (mixer == MixerKind::mamba1) {
      MIL_CHECK(mamba1_d_state > 0 && d_inner() % mamba1_d_state == 0 &&
                    d_xb() % mamba1_d_state == 0,
                "hybrid config: Mamba-1 needs d_inner (", d_inner(), ") and d_xb (", d_xb(),
                ") to be multiples of d_state ", mamba1_d_state);
      MIL_CHECK(d_inner() == llama.d_model, "hybrid config: Mamba-1 needs heads * head_dim (",
                d_inner(), ") == d_model (", llama.d_model, ")");
    }
  }
};

// A Llama-family model seen as a hybrid: every layer keeps attention.
inline HybridConfig all_attention(const LlamaConfig& c) {
  HybridConfig h;
  h.llama = c;
  for (int64_t l = 0; l < c.n_layers; ++l) h.attn_layers.push_back(l);
  return h;
}

// The standard layouts (docs/METHOD.md §1), generalised by spacing: a fraction 1/every of the
// layers keeps attention, the last of each group of `every` layers (every = 2: 1,3,5,...; 4: 3,7,...;
// 8: 7,15,...). every = 0 means no attention at all.
inline std::vector<int64_t> attention_every(int64_t n_layers, int64_t every) {
  MIL_CHECK(n_layers > 0 && every >= 0, "attention_every: bad arguments ", n_layers, ", ", every);
  std::vector<int64_t> out;
  if (every == 0) return out;
  for (int64_t l = every - 1; l < n_layers; l += every) out.push_back(l);
  return out;
}
// Named layouts: "50%", "25%", "12.5%", "0%" (also "50", "25", "12.5", "0").
inline std::vector<int64_t> attention_layout(int64_t n_layers, std::string name) {
  if (!name.empty() && name.back() == '%') name.pop_back();
  if (name == "50") return attention_every(n_layers, 2);
  if (name == "25") return attention_every(n_layers, 4);
  if (name == "12.5") return attention_every(n_layers, 8);
  if (name == "0") return {};
  MIL_CHECK(false, "unknown attention layout '", name, "': expected 50%, 25%, 12.5% or 0%");
  return {};
}

}  // namespace mil::nn
