#pragma once
// Upper limits of the counts that model files declare (layers, widths, heads, vocabulary,
// context, shards). A count is checked against what the file itself holds wherever the file
// holds it; these limits are the second check, for counts the file cannot contradict (or not
// before much work), so that a small hostile file cannot make mil allocate or loop without end.
// Each is far above every public model (the largest named beside it) and far below what would
// exhaust a machine. Used by the GGUF, config.json, mamba_config.json and tokenizer readers.
#include <cstdint>
#include <string>

#include "../core/error.hpp"

namespace mil::io::limits {

// Transformer blocks: Llama-3.1-405B has 126.
inline constexpr int64_t kMaxLayers = 1024;
// Model width (d_model): Llama-3.1-405B has 16384.
inline constexpr int64_t kMaxModelDim = int64_t(1) << 16;
// MLP width (intermediate size): Llama-3.1-405B has 53248.
inline constexpr int64_t kMaxFfDim = int64_t(1) << 18;
// Attention heads (query or key/value): Llama-3.1-405B has 128.
inline constexpr int64_t kMaxHeads = 1024;
// Head dimension: Gemma has 256.
inline constexpr int64_t kMaxHeadDim = 4096;
// Vocabulary: Gemma has 256000; 2^24 also keeps every id exact in a float.
inline constexpr int64_t kMaxVocab = int64_t(1) << 24;
// Context length (max_position_embeddings, context_length): Llama-4-Scout claims 10M.
inline constexpr int64_t kMaxContext = int64_t(1) << 24;
// Mixture-of-experts experts per layer: DeepSeek-V3 has 256 (mil runs dense models only, so any
// expert count is refused; the limit applies where a count is only read).
inline constexpr int64_t kMaxExperts = 4096;
// Safetensors shards of one checkpoint: Llama-3.1-405B in bf16 has 191; each is one mapping.
inline constexpr int64_t kMaxShards = 16384;
// Mamba state size per channel (Mamba-1 d_state): the papers use 16 to 128.
inline constexpr int64_t kMaxStateDim = 4096;

// `value` of `field` in `file` (a description such as "GGUF 'x.gguf'") within [1, max], or a
// mil::Error that names the field, the value and the limit.
inline int64_t check_count(int64_t value, int64_t max, const std::string& file,
                           const std::string& field) {
  MIL_CHECK(value >= 1, file, ": ", field, " = ", value, " must be positive");
  MIL_CHECK(value <= max, file, ": ", field, " = ", value, " is more than mil's limit of ", max,
            " (io/limits.hpp; the largest public models stay far below it): the file is corrupt "
            "or hostile");
  return value;
}

}  // namespace mil::io::limits
