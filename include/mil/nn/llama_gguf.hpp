#pragma once
// A Llama model from a GGUF file (llama.cpp's format): the configuration from the metadata and
// the weights, dequantised to float, into an all-attention nn::HybridModel<float, Cpu>.
//
// GGUF stores a weight of PyTorch shape [out, in] with ne = [in, out], so its rows are the same
// contiguous rows. llama.cpp's converter permutes the rows of Q and K within each head for its
// interleaved RoPE: GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i. Loading moves whole
// rows back, so the model sees the Hugging Face (rotate_half) layout that mil's RoPE uses.
#include <memory>
#include <string>

#include "../io/gguf.hpp"
#include "../io/limits.hpp"
#include "hybrid.hpp"
#include "llama_gguf_tensors.hpp"

namespace mil::nn {

// The configuration in the file's metadata. Every count is checked against io/limits.hpp and
// against the tensors the file holds (check_llama_gguf_tensors) before it is returned, so a model
// built from it never allocates more than the file's weights describe.
inline LlamaConfig llama_config_from_gguf(const io::GgufFile& f) {
  const std::string src = f.source();
  MIL_CHECK(f.has("general.architecture"), "GGUF '", src, "': no general.architecture key: not a ",
            "model file written by llama.cpp's converter");
  const std::string arch = f.get_string("general.architecture");
  MIL_CHECK(arch == "llama", "GGUF '", src, "': architecture '", arch, "' is not supported (mil ",
            "loads 'llama' models such as SmolLM2 and Llama 2/3)");
  auto key = [](const char* k) { return std::string("llama.") + k; };
  namespace lim = io::limits;
  const std::string file = "GGUF '" + src + "'";
  // A count in [1, max]; any integer type (converters differ in u32 vs i32 for counts).
  auto count = [&](const char* k, int64_t max) {
    return lim::check_count(f.get_i64(key(k)), max, file, key(k));
  };

  LlamaConfig c;
  c.n_layers = count("block_count", lim::kMaxLayers);
  c.d_model = count("embedding_length", lim::kMaxModelDim);
  c.d_ff = count("feed_forward_length", lim::kMaxFfDim);
  c.n_heads = count("attention.head_count", lim::kMaxHeads);
  c.n_kv_heads = f.has(key("attention.head_count_kv"))
                     ? count("attention.head_count_kv", lim::kMaxHeads)
                     : c.n_heads;
  if (f.has(key("context_length"))) (void)count("context_length", lim::kMaxContext);
  if (auto experts = f.find_i64(key("expert_count")); experts && *experts != 0)
    MIL_FAIL(file, ": llama.expert_count = ", *experts, ": mixture-of-experts models are not ",
             "supported (mil runs dense Llama models)");
  c.rope_theta = f.find_f32(key("rope.freq_base")).value_or(10000.f);  // llama.cpp's default
  c.norm_eps = f.get_f32(key("attention.layer_norm_rms_epsilon"));
  MIL_CHECK(c.norm_eps > 0.f && c.rope_theta > 0.f, "GGUF '", src,
            "': rope.freq_base and layer_norm_rms_epsilon must be positive");

  if (f.has(key("attention.key_length"))) {
    c.head_dim = count("attention.key_length", lim::kMaxHeadDim);
  } else {
    MIL_CHECK(c.d_model % c.n_heads == 0, "GGUF '", src, "': embedding_length ", c.d_model,
              " is not a multiple of head_count ", c.n_heads);
    c.head_dim = c.d_model / c.n_heads;
  }
  if (auto rd = f.find_u32(key("rope.dimension_count")))
    MIL_CHECK(int64_t(*rd) == c.head_dim, "GGUF '", src, "': rope.dimension_count ", *rd,
              " differs from the head dimension ", c.head_dim, ": partial RoPE is not supported");
  if (auto st = f.find_string(key("rope.scaling.type")))
    MIL_CHECK(*st == "none", "GGUF '", src, "': RoPE scaling '", *st, "' is not supported");
  MIL_CHECK(!f.find_tensor("rope_freqs.weight"), "GGUF '", src,
            "': rope_freqs.weight (RoPE frequency factors) is not supported");

  const io::TensorInfo* emb = f.find_tensor("token_embd.weight");
  if (f.has("tokenizer.ggml.tokens")) {
    c.vocab = lim::check_count(f.array_size("tokenizer.ggml.tokens"), lim::kMaxVocab, file,
                               "the vocabulary (tokenizer.ggml.tokens)");
  } else {
    MIL_CHECK(emb && emb->shape.size() == 2, "GGUF '", src, "': no tokenizer.ggml.tokens and no ",
              "2-D token_embd.weight: cannot tell the vocabulary size");
    c.vocab = lim::check_count(emb->shape[1], lim::kMaxVocab, file,
                               "the vocabulary (token_embd.weight rows)");
  }
  c.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  c.validate();
  check_llama_gguf_tensors(f, c);  // layers, widths, heads and vocabulary against the weights
  return c;
}

namespace detail {

// Rows of GGUF tensor `name`, which must have ggml shape `ne`, into dst (row-major, rows of
// ne[0] floats). With permute_heads > 0, undo llama.cpp's Q/K row permutation for that many heads.
inline void load_gguf_rows(const io::GgufFile& f, const std::string& name,
                           std::vector<int64_t> ne, float* dst, int64_t permute_heads = 0) {
  if (!dst) return;  // a weight kept in block format only
  const io::TensorInfo& t = f.tensor(name);
  auto str = [](const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  };
  MIL_CHECK(t.shape == ne, "GGUF '", f.source(), "': tensor '", name, "' has shape ",
            t.shape_str(), ", expected ", str(ne), " (ggml order) for this model configuration");
  const int64_t cols = ne[0], rows = t.rows();
  if (permute_heads == 0) {
    io::dequantize_rows(t, 0, rows, dst);
    return;
  }
  const auto order = gguf_rope_order(f, name, permute_heads);
  for (int64_t hf = 0; hf < rows; ++hf) io::dequantize_rows(t, order[size_t(hf)], 1, dst + hf * cols);
}

}  // namespace detail

// How a GGUF model is held: float weights (training, conversion, the GPU), float weights and the
// file's blocks beside them (the CPU decoder reads the blocks), or for CPU inference the blocks
// alone where they exist (no float copy of those matrices, no gradient buffers: about the file's
// size in memory).
enum class GgufWeights { float_only, float_and_blocks, cpu_inference };

// The model of a GGUF file (CPU): the configuration from the metadata, then every weight
// dequantised into its view, except those kept in block format only (GgufWeights::cpu_inference).
inline HybridModel<float, Cpu> load_gguf_model(const io::GgufFile& f,
                                               GgufWeights held = GgufWeights::float_only) {
  const LlamaConfig c = llama_config_from_gguf(f);
  std::shared_ptr<BlockWeights> blocks;
  if (held != GgufWeights::float_only) {
    blocks = std::make_shared<BlockWeights>(block_weights_from_gguf(f, c));
    if (blocks->n_bytes() == 0) blocks.reset();  // no type with a block product: float throughout
  }
  auto in_blocks = [&](const ParamSlot& s) {
    const BlockMatrix* m = blocks ? blocks->matrix_for(s, c.tied_embeddings) : nullptr;
    return m && !m->empty();
  };
  HybridModel<float, Cpu> model = held == GgufWeights::cpu_inference
                                      ? HybridModel<float, Cpu>::inference(all_attention(c), in_blocks)
                                      : HybridModel<float, Cpu>(all_attention(c));
  const ModelWeights<float, Cpu>& w = model.weights();
  auto ptr = [](const ag::Var<float, Cpu>& v) { return v.value().data(); };
  const int64_t d = c.d_model, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;

  detail::load_gguf_rows(f, "token_embd.weight", {d, c.vocab}, ptr(w.tok_embeddings));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string g = "blk." + std::to_string(l) + ".";
    const LayerWeights<float, Cpu>& layer = w.layers[size_t(l)];
    detail::load_gguf_rows(f, g + "attn_norm.weight", {d}, ptr(layer.norm));
    float* wqkv = ptr(layer.attn.wqkv);
    detail::load_gguf_rows(f, g + "attn_q.weight", {d, q}, wqkv, c.n_heads);
    detail::load_gguf_rows(f, g + "attn_k.weight", {d, kv}, wqkv ? wqkv + q * d : nullptr, c.n_kv_heads);
    detail::load_gguf_rows(f, g + "attn_v.weight", {d, kv}, wqkv ? wqkv + (q + kv) * d : nullptr);
    detail::load_gguf_rows(f, g + "attn_output.weight", {q, d}, ptr(layer.attn.wo));
    detail::load_gguf_rows(f, g + "ffn_norm.weight", {d}, ptr(layer.mlp.norm));
    float* gate_up = ptr(layer.mlp.w_gate_up);
    detail::load_gguf_rows(f, g + "ffn_gate.weight", {d, c.d_ff}, gate_up);
    detail::load_gguf_rows(f, g + "ffn_up.weight", {d, c.d_ff}, gate_up ? gate_up + c.d_ff * d : nullptr);
    detail::load_gguf_rows(f, g + "ffn_down.weight", {c.d_ff, d}, ptr(layer.mlp.w_down));
  }
  detail::load_gguf_rows(f, "output_norm.weight", {d}, ptr(w.norm));
  if (!c.tied_embeddings) detail::load_gguf_rows(f, "output.weight", {d, c.vocab}, ptr(w.lm_head));
  if (blocks) model.set_block_weights(std::move(blocks));
  return model;
}

}  // namespace mil::nn
