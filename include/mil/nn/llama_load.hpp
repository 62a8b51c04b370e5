#pragma once
// A Llama-family model with its tokenizer and chat template from a path a user gives: a GGUF file
// (llama.cpp) or a Hugging Face folder (config.json, safetensors, tokenizer.json and
// tokenizer_config.json). Weights come in as float on the CPU; convert_model() moves them on.
#include <filesystem>
#include <string>

#include "../text/gguf_tokenizer.hpp"
#include "llama_gguf.hpp"

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

// A GGUF file, by its magic bytes (any file name).
inline LoadedLlama load_llama(const std::string& path) {
  namespace fs = std::filesystem;
  MIL_CHECK(fs::exists(path), "model '", path, "' not found");
  MIL_CHECK(!fs::is_directory(path), "model '", path, "' is a folder: Hugging Face folders ",
            "(config.json + safetensors) cannot be loaded by this build yet; use a GGUF file");
  return load_llama_gguf(path);
}

}  // namespace mil::nn
