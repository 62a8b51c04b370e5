#pragma once
// Any model mil runs, from a path a user gives, as a HybridModel (float, CPU) with its tokenizer
// and chat template: a hybrid folder written by mil-convert / mil-distill or the reference code
// (mamba_config.json + safetensors + tokenizer.json), or a Llama-family teacher (GGUF file or
// Hugging Face folder), which is a hybrid whose every layer is attention.
#include <filesystem>
#include <string>

#include "../text/hf_tokenizer.hpp"
#include "decoder.hpp"
#include "hybrid_checkpoint.hpp"
#include "llama_load.hpp"

namespace mil::nn {

struct LoadedModel {
  HybridModel<float, Cpu> model;
  text::Tokenizer tokenizer;
  std::string chat_template;  // Jinja source as stored with the model; "" if none
  std::string name;
};

inline LoadedModel load_model(const std::string& path) {
  namespace fs = std::filesystem;
  MIL_CHECK(fs::exists(path), "model '", path, "' not found");
  if (fs::is_directory(path) && is_hybrid_checkpoint(path)) {
    const HybridConfig cfg = hybrid_config_from_files(path);
    auto tok = text::load_hf_tokenizer(path);
    LoadedModel out{HybridModel<float, Cpu>(cfg), text::Tokenizer(std::move(tok.data)),
                    std::move(tok.chat_template), fs::path(path).filename().string()};
    if (out.name.empty()) out.name = fs::path(path).parent_path().filename().string();
    load_hybrid_weights(path, cfg, out.model.params());
    MIL_CHECK(out.tokenizer.vocab_size() <= cfg.llama.vocab, "'", path, "': the tokenizer has ",
              out.tokenizer.vocab_size(), " tokens, the model's vocabulary ", cfg.llama.vocab);
    return out;
  }
  auto teacher = load_llama(path);
  LoadedModel out{HybridModel<float, Cpu>(all_attention(teacher.model.config())),
                  std::move(teacher.tokenizer), std::move(teacher.chat_template),
                  std::move(teacher.name)};
  copy_converted(out.model.params(), teacher.model.params());
  return out;
}

}  // namespace mil::nn
