#pragma once
// A Llama-family model with its tokenizer and chat template from a path a user gives: a GGUF file
// (llama.cpp) or a Hugging Face folder (config.json, safetensors, tokenizer.json and
// tokenizer_config.json or chat_template.jinja). Weights come in as float on the CPU;
// convert_model() moves them on.
#include <filesystem>
#include <string>

#include "../text/gguf_tokenizer.hpp"
#include "../text/hf_tokenizer.hpp"
#include "llama_gguf.hpp"
#include "llama_hf.hpp"

namespace mil::nn {

struct LoadedLlama {
  LlamaModel<float, Cpu> model;
  text::Tokenizer tokenizer;
  std::string chat_template;  // Jinja source as stored with the model; "" if none
  std::string name;           // general.name, or the folder name
};

inline LoadedLlama load_llama_gguf(const std::string& path) {
  const auto f = io::GgufFile::open(path);
  LoadedLlama out{LlamaModel<float, Cpu>(llama_config_from_gguf(f)),
                  text::Tokenizer(text::tokenizer_data_from_gguf(f)),
                  text::chat_template_from_gguf(f),
                  f.find_string("general.name").value_or(std::filesystem::path(path).stem())};
  load_llama_weights(f, out.model);
  MIL_CHECK(out.tokenizer.vocab_size() <= out.model.config().vocab, "GGUF '", path, "': the ",
            "tokenizer has ", out.tokenizer.vocab_size(), " tokens, the model's vocabulary ",
            out.model.config().vocab);
  return out;
}

inline LoadedLlama load_llama_hf(const std::filesystem::path& dir) {
  auto tok = text::load_hf_tokenizer(dir);
  LoadedLlama out{load_llama_model_hf(dir), text::Tokenizer(std::move(tok.data)),
                  std::move(tok.chat_template), dir.filename().string()};
  if (out.name.empty()) out.name = dir.parent_path().filename().string();
  MIL_CHECK(out.tokenizer.vocab_size() <= out.model.config().vocab, "'", dir.string(), "': the ",
            "tokenizer has ", out.tokenizer.vocab_size(), " tokens, the model's vocabulary ",
            out.model.config().vocab);
  return out;
}

// A folder is a Hugging Face checkpoint; a file must be GGUF (checked by its magic bytes).
inline LoadedLlama load_llama(const std::string& path) {
  namespace fs = std::filesystem;
  MIL_CHECK(fs::exists(path), "model '", path, "' not found");
  return fs::is_directory(path) ? load_llama_hf(path) : load_llama_gguf(path);
}

}  // namespace mil::nn
