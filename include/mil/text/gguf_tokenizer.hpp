#pragma once
// TokenizerData from a GGUF file's tokenizer.ggml.* metadata, as llama.cpp's converter writes it.
// Every array is checked against the vocabulary size by text::validate() when the Tokenizer is
// built; here only the keys' presence and types are checked (GgufFile's typed getters throw).
#include <string>

#include "mil/io/gguf.hpp"
#include "mil/io/limits.hpp"
#include "mil/text/tokenizer.hpp"

namespace mil::text {

inline TokenizerData tokenizer_data_from_gguf(const io::GgufFile& f) {
  MIL_CHECK(f.has("tokenizer.ggml.model") && f.has("tokenizer.ggml.tokens"), "GGUF '", f.source(),
            "': no tokenizer (tokenizer.ggml.model and tokenizer.ggml.tokens are required)");
  TokenizerData d;
  d.model = f.get_string("tokenizer.ggml.model");
  d.pre = f.find_string("tokenizer.ggml.pre").value_or(d.model == "gpt2" ? "gpt2" : "");
  if (d.pre == "default") d.pre = d.model == "gpt2" ? "gpt2" : "";
  const auto& tokens = f.get_string_array("tokenizer.ggml.tokens");
  io::limits::check_count(int64_t(tokens.size()), io::limits::kMaxVocab, "GGUF '" + f.source() + "'",
                          "the vocabulary (tokenizer.ggml.tokens)");
  d.tokens.assign(tokens.begin(), tokens.end());
  if (f.has("tokenizer.ggml.scores")) d.scores = f.get_f32_array("tokenizer.ggml.scores");
  if (f.has("tokenizer.ggml.token_type"))
    for (int64_t t : f.get_i64_array("tokenizer.ggml.token_type")) {
      MIL_CHECK(t >= INT32_MIN && t <= INT32_MAX, "GGUF '", f.source(), "': token type ", t,
                " out of range");
      d.token_types.push_back(int32_t(t));
    }
  if (f.has("tokenizer.ggml.merges"))
    for (std::string_view m : f.get_string_array("tokenizer.ggml.merges")) d.merges.emplace_back(m);
  auto id = [&](const char* key) -> int32_t {
    auto v = f.find_i64(key);
    if (!v) return -1;
    MIL_CHECK(*v >= 0 && *v < int64_t(d.tokens.size()), "GGUF '", f.source(), "': ", key, " = ",
              *v, " is outside the vocabulary of ", d.tokens.size(), " tokens");
    return int32_t(*v);
  };
  d.bos = id("tokenizer.ggml.bos_token_id");
  d.eos = id("tokenizer.ggml.eos_token_id");
  d.unk = id("tokenizer.ggml.unknown_token_id");
  d.pad = id("tokenizer.ggml.padding_token_id");
  // llama.cpp's defaults when the key is absent: SentencePiece models add BOS, byte-level do not.
  d.add_bos = f.find_bool("tokenizer.ggml.add_bos_token").value_or(d.model == "llama");
  d.add_space_prefix = f.find_bool("tokenizer.ggml.add_space_prefix").value_or(true);
  // GGUF has no key for it; llama.cpp takes whole-word tokens for the Llama-3 pre-tokenizer.
  d.ignore_merges = d.model == "gpt2" && (d.pre == "llama3" || d.pre == "llama-bpe");
  return d;
}

// The chat template stored in the file, or "" when there is none.
inline std::string chat_template_from_gguf(const io::GgufFile& f) {
  return f.find_string("tokenizer.chat_template").value_or("");
}

}  // namespace mil::text
