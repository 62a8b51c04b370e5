#pragma once
// Any model mil runs, from a path a user gives, as a HybridModel (float, CPU) with its tokenizer
// and chat template: a hybrid folder written by mil-convert / mil-distill or the reference code
// (mamba_config.json + safetensors + tokenizer.json), a Llama-family GGUF file (llama.cpp), or a
// Hugging Face folder (config.json, safetensors, tokenizer.json and tokenizer_config.json or
// chat_template.jinja). A Transformer loads as the hybrid whose every layer is attention.
// convert_model() moves the weights to another type or device. A GGUF model also keeps its
// quantised linear layers in their block formats (nn/block_weights.hpp), which the CPU decoder's
// products read instead of the float copies; LoadFor::cpu_inference keeps only those.
#include <filesystem>
#include <string>

#include "../text/gguf_tokenizer.hpp"
#include "../text/hf_tokenizer.hpp"
#include "bf16_block_weights.hpp"
#include "hybrid_checkpoint.hpp"
#include "llama_gguf.hpp"
#include "llama_hf.hpp"

namespace mil::nn {

// What a loaded model is for: anything (float weights, and a GGUF file's quantised matrices in
// block format beside them, which the CPU decoder reads), float weights only (work on the GPU or
// a conversion: no block copy, about the file's size less host memory), or CPU inference only (a
// GGUF file's quantised matrices in block format only, no gradient buffers: such a model decodes
// on the CPU but cannot be trained, converted or moved to the GPU; a folder stored in bf16 keeps
// its linear layers as BF16 blocks the same way, nn/bf16_block_weights.hpp).
enum class LoadFor { any, float_only, cpu_inference };

struct LoadedModel {
  HybridModel<float, Cpu> model;
  text::Tokenizer tokenizer;
  std::string chat_template;  // Jinja source as stored with the model; "" if none
  std::string name;           // general.name, or the folder's name
};

namespace load_detail {

inline void check_vocab(const LoadedModel& m, const std::string& path) {
  MIL_CHECK(m.tokenizer.vocab_size() <= m.model.config().llama.vocab, "'", path, "': the ",
            "tokenizer has ", m.tokenizer.vocab_size(), " tokens, the model's vocabulary ",
            m.model.config().llama.vocab);
}

inline std::string folder_name(const std::filesystem::path& dir) {
  const std::string name = dir.filename().string();
  return name.empty() ? dir.parent_path().filename().string() : name;
}

inline LoadedModel load_gguf(const std::string& path, LoadFor use) {
  const auto f = io::GgufFile::open(path);
  const GgufWeights held = use == LoadFor::cpu_inference ? GgufWeights::cpu_inference
                          : use == LoadFor::float_only  ? GgufWeights::float_only
                                                        : GgufWeights::float_and_blocks;
  LoadedModel out{load_gguf_model(f, held),
                  text::Tokenizer(text::tokenizer_data_from_gguf(f)),
                  text::chat_template_from_gguf(f),
                  f.find_string("general.name").value_or(std::filesystem::path(path).stem())};
  check_vocab(out, path);
  return out;
}

// A folder's model for CPU inference: its linear layers whose values are bf16 exactly (a bf16
// checkpoint) in BF16 blocks only, without their float copies or gradient buffers; a float32
// checkpoint keeps its float weights.
inline HybridModel<float, Cpu> held_for_cpu_inference(HybridModel<float, Cpu>&& full) {
  auto blocks = bf16_block_weights(full);
  if (!blocks) return std::move(full);
  const bool tied = full.config().llama.tied_embeddings;
  auto lean = HybridModel<float, Cpu>::inference(full.config(), [&](const ParamSlot& s) {
    const BlockMatrix* m = blocks->matrix_for(s, tied);
    return m && !m->empty();
  });
  for (const auto& e : lean.params().entries())
    if (e.var.value().defined() && e.var.numel() > 0) e.var.value().copy_from(full.params()[e.name].value());
  lean.set_block_weights(std::move(blocks));
  return lean;
}

inline LoadedModel load_folder(const std::filesystem::path& dir, LoadFor use) {
  auto tok = text::load_hf_tokenizer(dir);
  auto model = [&] {
    if (!is_hybrid_checkpoint(dir)) return load_llama_model_hf(dir);
    // The weights are checked against the configuration before the model is allocated: the
    // sizes in mamba_config.json / config.json are only bounded, not proven, until then.
    const HybridConfig cfg = hybrid_config_from_files(dir);
    check_hybrid_tensors(io::SafetensorsCheckpoint::open(dir), cfg);
    // For inference no gradient buffers: the float model is only the source of the blocks.
    HybridModel<float, Cpu> m = use == LoadFor::cpu_inference ? HybridModel<float, Cpu>::inference(cfg, nullptr)
                                                              : HybridModel<float, Cpu>(cfg);
    load_hybrid_weights(dir, m);
    return m;
  };
  LoadedModel out{use == LoadFor::cpu_inference ? held_for_cpu_inference(model()) : model(),
                  text::Tokenizer(std::move(tok.data)), std::move(tok.chat_template), folder_name(dir)};
  check_vocab(out, dir.string());
  return out;
}

}  // namespace load_detail

// A folder is a hybrid checkpoint (it has mamba_config.json) or a Hugging Face Transformer; a file
// must be GGUF (checked by its magic bytes).
inline LoadedModel load_model(const std::string& path, LoadFor use = LoadFor::any) {
  namespace fs = std::filesystem;
  MIL_CHECK(fs::exists(path), "model '", path, "' not found");
  return fs::is_directory(path) ? load_detail::load_folder(path, use) : load_detail::load_gguf(path, use);
}

// The context length stored with a model at `path`: GGUF <arch>.context_length, or config.json's
// max_position_embeddings (a hybrid folder holds its teacher's); 0 when it names none.
inline int64_t stored_context_length(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) {
    const fs::path config = fs::path(path) / "config.json";
    return fs::exists(config) ? hf_llama_config_file(config).max_position_embeddings : 0;
  }
  const auto f = io::GgufFile::open(path);
  const auto arch = f.find_string("general.architecture");
  return arch ? f.find_i64(*arch + ".context_length").value_or(0) : 0;
}

}  // namespace mil::nn
