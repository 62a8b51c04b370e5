#pragma once
// Block weights for a model whose float weights came from a bf16 checkpoint (mil-distill's and
// mil-convert's hybrid folders, most Hugging Face folders): its linear layers as BF16 block
// matrices, the same values in half of float's bytes, so the CPU decoder's products
// (cpu::quant_linear_rows, BF16) read 2 bytes a weight instead of 4. A matrix any of whose values
// is not exactly a bf16 (a float32 checkpoint, or weights changed since loading) stays empty and
// runs in float: the blocks never change a value. The Mamba mixers stay float.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "../core/dtype.hpp"
#include "block_weights.hpp"
#include "hybrid.hpp"

namespace mil::nn {

namespace bf16_blocks_detail {

// w [out, in] as one BF16 part, or an empty matrix if a value is not a bf16 or `in` is not a whole
// number of the product's 32-value units.
inline BlockMatrix exact_bf16(const float* w, int64_t out, int64_t in, const std::string& name) {
  BlockMatrix m(in);
  if (!w || out == 0 || !cpu::quant_rows_supports(io::GgmlType::BF16, in)) return m;
  std::vector<uint16_t> bits(size_t(checked_mul(out, in)));
  for (size_t i = 0; i < bits.size(); ++i) {
    const bf16 b(w[i]);
    if (float(b) != w[i] && !(std::isnan(w[i]) && std::isnan(float(b)))) return m;
    bits[i] = b.bits;
  }
  io::TensorInfo t;
  t.name = name;
  t.shape = {in, out};
  t.type = io::GgmlType::BF16;
  t.n_bytes = int64_t(bits.size() * sizeof(uint16_t));
  t.data = reinterpret_cast<const uint8_t*>(bits.data());
  m.append(t);
  return m;
}

}  // namespace bf16_blocks_detail

// The model's linear layers (attention q|k|v and output, MLP gate|up and down, the LM head, which
// is the embedding table when tied) as BF16 blocks where their float values are bf16 exactly;
// null when no matrix is.
inline std::shared_ptr<BlockWeights> bf16_block_weights(const HybridModel<float, Cpu>& model) {
  namespace d = bf16_blocks_detail;
  const LlamaConfig& c = model.config().llama;
  const auto& w = model.weights();
  auto matrix = [](const ag::Var<float, Cpu>& v, const std::string& name) {
    const Shape& s = v.shape();
    return s.rank() == 2 && v.value().defined() ? d::exact_bf16(v.value().data(), s[0], s[1], name)
                                                : BlockMatrix();
  };
  auto blocks = std::make_shared<BlockWeights>();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& layer = w.layers[size_t(l)];
    const std::string g = "layer " + std::to_string(l) + " ";
    BlockLayer b;
    if (layer.kind == LayerKind::attention) {
      b.wqkv = matrix(layer.attn.wqkv, g + "wqkv");
      b.wo = matrix(layer.attn.wo, g + "wo");
    }
    b.gate_up = matrix(layer.mlp.w_gate_up, g + "gate_up");
    b.down = matrix(layer.mlp.w_down, g + "down");
    blocks->layers.push_back(std::move(b));
  }
  blocks->lm_head = matrix(w.lm_head, "lm_head");
  if (blocks->n_bytes() == 0) return nullptr;
  return blocks;
}

}  // namespace mil::nn
