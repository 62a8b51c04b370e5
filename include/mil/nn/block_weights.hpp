#pragma once
// The linear layers of a GGUF model kept in the file's block formats (Q8_0, Q4_0, Q4_1, Q4_K,
// Q6_K) for inference on the CPU: the decoder's products read 20-34 bytes per 32 weights
// (cpu::quant_linear_rows) instead of 128 for a float copy, so decoding, which is bound by the
// weight read, reads 4-6x less memory per token.
//
// A BlockMatrix is one [out, in] weight in the decoder's row order: the fused q|k|v and gate|up
// matrices join several tensors, and Q and K rows go back from llama.cpp's RoPE order to the Hugging
// Face order the model uses (llama_gguf.hpp) by moving whole rows, which leaves every block intact.
// Joined tensors may differ in type (llama.cpp's Q4_K_M keeps some attn_v and ffn_down in Q6_K),
// so a matrix is a list of parts, each a run of rows of one type. The bytes are copied out of the
// file: the matrix does not depend on the file staying open.
//
// A model holds its block weights beside its float parameters (HybridModel::block_weights), or, when
// loaded for CPU inference, instead of the float copies of the matrices they hold; the decoder
// uses them on the CPU in float (DecoderOptions::block_weights), the embedding lookup included when
// the embeddings are the tied LM head. Matrices whose tensors are in a type without a block product
// (F32, F16, BF16, Q5_*) stay empty and run in float.
#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../kernels/quant_rows.hpp"
#include "../kernels/quant_rows_q8.hpp"
#include "llama_gguf_tensors.hpp"
#include "param_table.hpp"

namespace mil::nn {

class BlockMatrix {
 public:
  struct Part {
    io::GgmlType type;
    int64_t first_row, rows;  // output rows [first_row, first_row + rows)
    int64_t offset;           // of its first row in bytes()
    int64_t row_bytes;
  };

  BlockMatrix() = default;
  explicit BlockMatrix(int64_t in) : in_(in) {}

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  bool empty() const { return out_ == 0; }
  const std::vector<Part>& parts() const { return parts_; }
  int64_t n_bytes() const { return int64_t(bytes_.size()); }

  // Appends the rows of 2-D tensor t (ne = [in, rows]); `order`, when given, lists for each new row
  // the tensor row it copies (a permutation of 0 .. rows - 1).
  void append(const io::TensorInfo& t, std::span<const int64_t> order = {}) {
    MIL_CHECK(cpu::quant_rows_supports(t.type, in_), "BlockMatrix: tensor '", t.name, "' is ",
              io::ggml_type_info_or_throw(t.type).name, ", which has no block product for rows of ",
              in_);
    MIL_CHECK(t.shape.size() == 2 && t.shape[0] == in_, "BlockMatrix: tensor '", t.name,
              "' has shape ", t.shape_str(), ", expected rows of ", in_);
    const int64_t rows = t.rows(), rb = io::ggml_row_bytes(t.type, in_);
    MIL_CHECK(t.n_bytes == checked_mul(rows, rb), "BlockMatrix: tensor '", t.name, "' holds ",
              t.n_bytes, " bytes, not ", rows, " rows of ", rb);
    MIL_CHECK(order.empty() || int64_t(order.size()) == rows, "BlockMatrix: an order of ",
              order.size(), " rows for tensor '", t.name, "' of ", rows);
    for (int64_t from : order)  // checked before anything changes
      MIL_CHECK(from >= 0 && from < rows, "BlockMatrix: order names row ", from, " of ", rows);
    const int64_t offset = n_bytes();
    bytes_.resize(size_t(checked_add(offset, t.n_bytes)));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t from = order.empty() ? r : order[size_t(r)];
      std::memcpy(bytes_.data() + offset + r * rb, t.data + from * rb, size_t(rb));
    }
    if (!parts_.empty() && parts_.back().type == t.type) {
      parts_.back().rows += rows;  // one run of rows: one product call
    } else {
      parts_.push_back({t.type, out_, rows, offset, rb});
    }
    out_ += rows;
  }

  // y[r, :] (+)= x[r, :] W^T for `rows` rows of x ([rows, in]) into y ([rows, out]): row-invariant
  // as cpu::quant_linear_rows (each part is one call on its columns of y).
  // With `q8` (scratch for the option of 8-bit activations, kernels/quant_rows_q8.hpp), x is
  // quantised into it once and the parts with integer codes multiply the codes; F16 / BF16 parts
  // keep float x. Row-invariant either way.
  void apply(const float* x, int64_t rows, float* y, bool accumulate,
             cpu::QuantRowsPath path = cpu::QuantRowsPath::automatic, cpu::Q8Rows* q8 = nullptr) const {
    bool quantised = false;
    for (const Part& p : parts_) {
      if (q8 && cpu::quant_rows_q8_supports(p.type)) {
        if (!quantised) q8->quantize(x, rows, in_), quantised = true;
        cpu::quant_linear_rows_q8(p.type, bytes_.data() + p.offset, p.rows, *q8, y + p.first_row,
                                  accumulate, path, out_);
      } else {
        cpu::quant_linear_rows(p.type, bytes_.data() + p.offset, p.rows, in_, x, rows,
                               y + p.first_row, accumulate, path, out_);
      }
    }
  }

  // Whether some part has integer codes (8-bit activations apply to it; F16 / BF16 parts have none).
  bool has_q8_parts() const {
    return std::any_of(parts_.begin(), parts_.end(), [](const Part& p) { return cpu::quant_rows_q8_supports(p.type); });
  }

  // Row `row` of the weights as floats (dst[0 .. in)): an embedding lookup in a tied LM head.
  void dequantize_row(int64_t row, float* dst) const {
    MIL_CHECK(row >= 0 && row < out_, "BlockMatrix: row ", row, " of ", out_);
    for (const Part& p : parts_)
      if (row < p.first_row + p.rows) {
        io::dequantize_row(p.type, bytes_.data() + p.offset + (row - p.first_row) * p.row_bytes,
                           dst, in_);
        return;
      }
  }

 private:
  int64_t in_ = 0, out_ = 0;
  std::vector<Part> parts_;
  std::vector<uint8_t> bytes_;
};

struct BlockLayer {
  BlockMatrix wqkv, wo, gate_up, down;
};

struct BlockWeights {
  std::vector<BlockLayer> layers;
  BlockMatrix lm_head;  // with tied embeddings also the embedding table (rows dequantised on lookup)

  // The matrix that holds parameter `s` of a model (tied: whether its embeddings are its LM head),
  // or null for a parameter kept only in float (norms, biases, Mamba mixers).
  const BlockMatrix* matrix_for(const ParamSlot& s, bool tied) const {
    if (s.layer < 0)
      return s.param == Param::lm_head || (tied && s.param == Param::tok_embeddings) ? &lm_head : nullptr;
    if (size_t(s.layer) >= layers.size()) return nullptr;
    const BlockLayer& l = layers[size_t(s.layer)];
    switch (s.param) {
      case Param::wqkv: return &l.wqkv;
      case Param::wo: return &l.wo;
      case Param::w_gate_up: return &l.gate_up;
      case Param::w_down: return &l.down;
      default: return nullptr;
    }
  }

  // Whether 8-bit activations change any product (some matrix has a part with integer codes).
  bool has_q8_parts() const {
    if (lm_head.has_q8_parts()) return true;
    for (const auto& l : layers)
      if (l.wqkv.has_q8_parts() || l.wo.has_q8_parts() || l.gate_up.has_q8_parts() || l.down.has_q8_parts())
        return true;
    return false;
  }

  int64_t n_bytes() const {
    int64_t n = lm_head.n_bytes();
    for (const auto& l : layers) n += l.wqkv.n_bytes() + l.wo.n_bytes() + l.gate_up.n_bytes() + l.down.n_bytes();
    return n;
  }
};

// The block weights of a Llama GGUF file whose configuration is `c` (llama_config_from_gguf, which
// has checked every tensor's shape). A matrix with a tensor of a type without a block product
// stays empty (it runs in float).
inline BlockWeights block_weights_from_gguf(const io::GgufFile& f, const LlamaConfig& c) {
  auto matrix = [&](std::initializer_list<std::string> names, int64_t in,
                    std::initializer_list<int64_t> rope_heads) {
    BlockMatrix m(in);
    for (const auto& name : names)
      if (!cpu::quant_rows_supports(f.tensor(name).type, in)) return m;
    auto heads = rope_heads.begin();
    for (const auto& name : names) {
      const io::TensorInfo& t = f.tensor(name);
      const int64_t n_heads = *heads++;
      const auto order = n_heads > 0 ? gguf_rope_order(f, name, n_heads) : std::vector<int64_t>{};
      m.append(t, order);
    }
    return m;
  };
  BlockWeights w;
  const int64_t d = c.d_model, q = c.n_heads * c.head_dim;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string g = "blk." + std::to_string(l) + ".";
    w.layers.push_back(
        {matrix({g + "attn_q.weight", g + "attn_k.weight", g + "attn_v.weight"}, d,
                {c.n_heads, c.n_kv_heads, 0}),
         matrix({g + "attn_output.weight"}, q, {0}),
         matrix({g + "ffn_gate.weight", g + "ffn_up.weight"}, d, {0, 0}),
         matrix({g + "ffn_down.weight"}, c.d_ff, {0})});
  }
  w.lm_head = matrix({c.tied_embeddings ? "token_embd.weight" : "output.weight"}, d, {0});
  return w;
}

}  // namespace mil::nn
