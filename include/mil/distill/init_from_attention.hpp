#pragma once
// A hybrid initialised from its teacher (METHOD.md §4): every parameter the two share by name
// (embeddings, norms, MLPs, LM head, the attention layers that stay) is copied, and each Mamba
// layer takes its projections from the attention it replaces, verbatim (no 1/sqrt(hd), no RoPE):
//   q_proj -> C,  k_proj -> B,  v_proj -> x,  o_proj -> out_proj
// (Mamba-2: row blocks of in_proj [z|x|B|C|dt]; Mamba-1: of in_proj [x|z|B|C]). The rest of the
// layer is fresh (nn::init_mamba_layer, seeded). Teacher q/k/v biases (Qwen2) have no place in a
// Mamba layer and are dropped.
//
// `previous` (optional) is a hybrid from an earlier step of a stepwise conversion (METHOD.md §5):
// layers that are Mamba in both take its weights instead of being converted again.
#include <cstring>
#include <string>

#include "../nn/hybrid.hpp"
#include "../nn/llama.hpp"

namespace mil::distill {

namespace detail {
// Copies rows [src_row, src_row + n) of matrix src into rows [dst_row, ...) of dst (same width).
inline void copy_rows(Tensor<float, Cpu> dst, int64_t dst_row, const Tensor<float, Cpu>& src,
                      int64_t src_row, int64_t n) {
  MIL_CHECK(dst.size(1) == src.size(1), "init_from_attention: row widths differ (", dst.size(1),
            " vs ", src.size(1), ")");
  const int64_t w = dst.size(1);
  std::memcpy(dst.data() + dst_row * w, src.data() + src_row * w, size_t(n * w) * sizeof(float));
}
}  // namespace detail

inline nn::HybridModel<float, Cpu> init_from_attention(
    const nn::LlamaModel<float, Cpu>& teacher, const nn::HybridConfig& config, uint64_t seed,
    const nn::HybridModel<float, Cpu>* previous = nullptr) {
  const nn::LlamaConfig& t = teacher.config();
  const nn::LlamaConfig& c = config.llama;
  MIL_CHECK(t.vocab == c.vocab && t.d_model == c.d_model && t.n_layers == c.n_layers &&
                t.n_heads == c.n_heads && t.n_kv_heads == c.n_kv_heads &&
                t.head_dim == c.head_dim && t.d_ff == c.d_ff &&
                t.tied_embeddings == c.tied_embeddings && t.attention_bias == c.attention_bias,
            "init_from_attention: the hybrid's shape differs from the teacher's");
  if (previous)
    MIL_CHECK(previous->config().llama.n_layers == c.n_layers &&
                  previous->config().mixer == config.mixer,
              "init_from_attention: the previous step's hybrid has another shape or mixer");
  nn::HybridModel<float, Cpu> out(config);
  auto& w = out.params();
  for (const auto& e : w.entries()) {
    // Shared by name with the teacher: copied; a Mamba parameter gets its values below.
    if (!teacher.params().has(e.name)) continue;
    w[e.name].value().copy_from(teacher.param(e.name).value());
  }
  const int64_t hd = c.head_dim, q_rows = c.n_heads * hd, kv_rows = c.n_kv_heads * hd;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (config.is_attention(l)) continue;
    const std::string p = "layers." + std::to_string(l) + ".";
    if (previous && !previous->config().is_attention(l)) {
      for (const auto& e : w.entries())
        if (e.name.starts_with(p)) w[e.name].value().copy_from(previous->param(e.name).value());
      continue;
    }
    nn::init_mamba_layer(w, config, l, seed);
    const auto& qkv = teacher.param(p + "wqkv").value();  // rows [q | k | v]
    auto in_proj = w[p + "in_proj"].value();
    const int64_t d_inner = config.d_inner(), d_xb = config.d_xb();
    if (config.mixer == nn::MixerKind::mamba2) {  // [z | x | B | C | dt]
      detail::copy_rows(in_proj, d_inner, qkv, q_rows + kv_rows, kv_rows);       // v -> x
      detail::copy_rows(in_proj, d_inner + d_xb, qkv, q_rows, kv_rows);          // k -> B
      detail::copy_rows(in_proj, d_inner + 2 * d_xb, qkv, 0, q_rows);            // q -> C
    } else {  // [x | z | B | C]
      detail::copy_rows(in_proj, 0, qkv, q_rows + kv_rows, kv_rows);            // v -> x
      detail::copy_rows(in_proj, d_xb + d_inner, qkv, q_rows, kv_rows);          // k -> B
      detail::copy_rows(in_proj, 2 * d_xb + d_inner, qkv, 0, q_rows);            // q -> C
    }
    w[p + "out_proj"].value().copy_from(teacher.param(p + "wo").value());       // o -> out
  }
  return out;
}

}  // namespace mil::distill
