#pragma once
// A hybrid initialised from its teacher (docs/METHOD.md §4): every parameter the two share by name
// (embeddings, norms, MLPs, LM head, the attention layers that stay) is copied, and each Mamba
// layer takes its projections from the attention it replaces, verbatim (no 1/sqrt(hd), no RoPE):
//   q_proj -> C,  k_proj -> B,  v_proj -> x,  o_proj -> out_proj
// (Mamba-2: row blocks of in_proj [z|x|B|C|dt]; Mamba-1: of in_proj [x|z|B|C]). The rest of the
// layer is fresh (nn::init_mamba_layer, seeded). Teacher q/k/v biases (Qwen2) have no place in a
// Mamba layer and are dropped.
//
// `previous` (optional) is a hybrid from an earlier step of a stepwise conversion (docs/METHOD.md
// §5): layers that are Mamba in both take its weights instead of being converted again.
#include <cstring>
#include <string>

#include "../nn/hybrid.hpp"

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
    const nn::HybridModel<float, Cpu>& teacher, const nn::HybridConfig& config, uint64_t seed,
    const nn::HybridModel<float, Cpu>* previous = nullptr) {
  const nn::LlamaConfig& t = teacher.config().llama;
  const nn::LlamaConfig& c = config.llama;
  MIL_CHECK(teacher.config().n_mamba_layers() == 0, "init_from_attention: the teacher has ",
            teacher.config().n_mamba_layers(), " Mamba layers; it must be a Transformer");
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
  const auto& tw = teacher.weights();
  auto& w = out.mutable_weights();
  const auto table = nn::parameter_table(config);
  auto copy = [](const ag::Var<float, Cpu>& dst, const ag::Var<float, Cpu>& src) {
    dst.value().copy_from(src.value());
  };
  // Shared with the teacher: embeddings, the final norm, the LM head, every layer's norms and
  // MLP, and the attention layers that stay.
  copy(w.tok_embeddings, tw.tok_embeddings);
  copy(w.norm, tw.norm);
  if (!c.tied_embeddings) copy(w.lm_head, tw.lm_head);
  const int64_t hd = c.head_dim, q_rows = c.n_heads * hd, kv_rows = c.n_kv_heads * hd;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    nn::LayerWeights<float, Cpu>& dst = w.layers[size_t(l)];
    const nn::LayerWeights<float, Cpu>& src = tw.layers[size_t(l)];
    copy(dst.norm, src.norm);
    copy(dst.mlp.norm, src.mlp.norm);
    copy(dst.mlp.w_gate_up, src.mlp.w_gate_up);
    copy(dst.mlp.w_down, src.mlp.w_down);
    if (dst.kind == nn::LayerKind::attention) {
      copy(dst.attn.wqkv, src.attn.wqkv);
      if (c.attention_bias) copy(dst.attn.bqkv, src.attn.bqkv);
      copy(dst.attn.wo, src.attn.wo);
      continue;
    }
    if (previous && previous->weights().layers[size_t(l)].kind == dst.kind) {
      for (const auto& s : table)  // the whole layer, as the earlier step left it
        if (s.layer == l) copy(w[s], previous->weights()[s]);
      continue;
    }
    nn::init_mamba_layer(dst, config, l, seed);
    const auto& qkv = src.attn.wqkv.value();  // rows [q | k | v]
    const bool m2 = dst.kind == nn::LayerKind::mamba2;
    auto in_proj = (m2 ? dst.mamba2.in_proj : dst.mamba1.in_proj).value();
    const int64_t d_inner = config.d_inner(), d_xb = config.d_xb();
    if (m2) {  // [z | x | B | C | dt]
      detail::copy_rows(in_proj, d_inner, qkv, q_rows + kv_rows, kv_rows);       // v -> x
      detail::copy_rows(in_proj, d_inner + d_xb, qkv, q_rows, kv_rows);          // k -> B
      detail::copy_rows(in_proj, d_inner + 2 * d_xb, qkv, 0, q_rows);            // q -> C
    } else {  // [x | z | B | C]
      detail::copy_rows(in_proj, 0, qkv, q_rows + kv_rows, kv_rows);             // v -> x
      detail::copy_rows(in_proj, d_xb + d_inner, qkv, q_rows, kv_rows);          // k -> B
      detail::copy_rows(in_proj, 2 * d_xb + d_inner, qkv, 0, q_rows);            // q -> C
    }
    copy(m2 ? dst.mamba2.out_proj : dst.mamba1.out_proj, src.attn.wo);         // o -> out
  }
  return out;
}

}  // namespace mil::distill
