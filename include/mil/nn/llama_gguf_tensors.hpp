#pragma once
// The tensors of a Llama model in a GGUF file (llama.cpp's names, ggml shapes) for a
// configuration, and the check that the file holds them: llama_config_from_gguf runs it, so
// metadata that claims more or fewer layers, other head counts or other widths than the weights
// have is refused when only the header has been read, before any model memory is allocated.
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "llama_config.hpp"

namespace mil::nn {

struct GgufTensorShape {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous dimension
};

// For each Hugging Face row of Q or K tensor `name` (`heads` heads), the GGUF row that holds it:
// llama.cpp's converter stores HF row h*hd + j*hd/2 + i at h*hd + 2i + j (its interleaved RoPE).
inline std::vector<int64_t> gguf_rope_order(const io::GgufFile& f, const std::string& name,
                                            int64_t heads) {
  const int64_t rows = f.tensor(name).rows(), hd = heads > 0 ? rows / heads : 0;
  MIL_CHECK(heads > 0 && hd * heads == rows && hd % 2 == 0, "GGUF '", f.source(), "': tensor '",
            name, "' has ", rows, " rows, not ", heads, " heads of an even size");
  std::vector<int64_t> order(static_cast<size_t>(rows));
  for (int64_t hf = 0; hf < rows; ++hf) {
    const int64_t r = hf % hd, half = hd / 2;
    order[size_t(hf)] = hf - r + 2 * (r % half) + r / half;
  }
  return order;
}

// Every tensor the model of `c` reads (output.weight only for untied embeddings).
inline std::vector<GgufTensorShape> llama_gguf_tensor_shapes(const LlamaConfig& c) {
  const int64_t d = c.d_model, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  std::vector<GgufTensorShape> s{{"token_embd.weight", {d, c.vocab}}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string g = "blk." + std::to_string(l) + ".";
    s.push_back({g + "attn_norm.weight", {d}});
    s.push_back({g + "attn_q.weight", {d, q}});
    s.push_back({g + "attn_k.weight", {d, kv}});
    s.push_back({g + "attn_v.weight", {d, kv}});
    s.push_back({g + "attn_output.weight", {q, d}});
    s.push_back({g + "ffn_norm.weight", {d}});
    s.push_back({g + "ffn_gate.weight", {d, c.d_ff}});
    s.push_back({g + "ffn_up.weight", {d, c.d_ff}});
    s.push_back({g + "ffn_down.weight", {c.d_ff, d}});
  }
  s.push_back({"output_norm.weight", {d}});
  if (!c.tied_embeddings) s.push_back({"output.weight", {d, c.vocab}});
  return s;
}

// The file's blk.N layers are exactly 0 .. c.n_layers - 1 (checked first, against the tensor
// infos, so the table above is only built for a layer count the file backs), and every tensor of
// the table is there with its shape.
inline void check_llama_gguf_tensors(const io::GgufFile& f, const LlamaConfig& c) {
  const auto layers = f.layer_indices("blk.");
  MIL_CHECK(layers.distinct == c.n_layers && layers.largest == c.n_layers - 1, "GGUF '",
            f.source(), "': llama.block_count = ", c.n_layers, " but the file holds tensors of ",
            layers.distinct, " layer(s)",
            layers.distinct ? " (largest index blk." + std::to_string(layers.largest) + ")" : "",
            ": the metadata and the weights disagree (corrupt or hostile file)");
  for (const auto& t : llama_gguf_tensor_shapes(c)) (void)f.tensor(t.name, t.ne);
}

}  // namespace mil::nn
