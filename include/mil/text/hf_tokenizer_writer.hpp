#pragma once
// Writes a tokenizer as Hugging Face files (tokenizer.json + tokenizer_config.json) that
// text/hf_tokenizer.hpp reads back and the `tokenizers` / `transformers` Python packages load, so
// a model folder saved by mil carries its tokenizer and chat template (mil-chat -m DIR, the
// reference code, transformers' AutoTokenizer).
//
// - "gpt2" (byte-level BPE): model BPE with the merges as "a b" strings, the pre-tokenizer that
//   hf_tokenizer.hpp recognises for d.pre (gpt2: ByteLevel; smollm: Digits(individual) +
//   ByteLevel; llama3 / llama-bpe and qwen2: their Split regex + ByteLevel(use_regex = false)),
//   a ByteLevel decoder, ignore_merges as given. No normaliser (mil applies none; Qwen2's own
//   files have NFC).
// - "llama" (SentencePiece BPE with byte fallback): SentencePiece merges by score, so the merges
//   are derived: every piece that SentencePiece can build (not control, unused or byte) gets one
//   merge per split into two such pieces, ordered by the piece's score (highest first), then
//   id. The normaliser is Replace(' ', U+2581), with Prepend(U+2581) in front when
//   add_space_prefix; the decoder undoes both.
// - Control tokens are added tokens with special = true, user-defined ones with special = false
//   (never normalised, never stripped); every token is also in model.vocab.
// - BOS: add_bos with a BOS token gives a TemplateProcessing post-processor that puts it first;
//   tokenizer_config.json names bos/eos/unk/pad and add_bos_token and holds the chat template.
// What reads back differently (hf_tokenizer.hpp derives it): "llama" scores become -(rank of the
// piece's first merge) and pieces no merge builds become unused; pre "llama-bpe" reads as
// "llama3", "default" as "gpt2"; a "gpt2" model's add_space_prefix (unused by byte-level BPE;
// llama.cpp's converter writes false) reads as TokenizerData's default, true, and token types
// other than normal / control / user-defined / unknown as normal. None of these changes the ids
// mil encodes. Token texts must be distinct (model.vocab is a map).
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "mil/io/safetensors_writer.hpp"  // write_text_file_atomic
#include "mil/text/tokenizer.hpp"

namespace mil::text {

namespace hf_writer_detail {

using ojson = nlohmann::ordered_json;

inline ojson byte_level(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

inline ojson split_regex(const std::string& regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// The pre_tokenizer of a byte-level model with mil's pre-tokenizer `pre`.
inline ojson byte_level_pre_tokenizer(const std::string& pre) {
  // The regexes as Llama-3's and Qwen2's tokenizer.json files spell them.
  const std::string head = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|";
  const std::string tail = "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  if (pre == "gpt2" || pre == "default" || pre.empty()) return byte_level(true);
  if (pre == "smollm")
    return {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  if (pre == "llama3" || pre == "llama-bpe")
    return {{"type", "Sequence"},
            {"pretokenizers", {split_regex(head + "\\p{N}{1,3}" + tail), byte_level(false)}}};
  if (pre == "qwen2")
    return {{"type", "Sequence"},
            {"pretokenizers", {split_regex(head + "\\p{N}" + tail), byte_level(false)}}};
  MIL_FAIL("save_hf_tokenizer: pre-tokenizer '", pre, "' has no tokenizer.json form in mil");
}

inline ojson added_token(int32_t id, const std::string& text, bool special) {
  return {{"id", id},          {"content", text},       {"single_word", false},
          {"lstrip", false},   {"rstrip", false},       {"normalized", false},
          {"special", special}};
}

inline int32_t type_of(const TokenizerData& d, size_t i) {
  return d.token_types.empty() ? int32_t(kTokenNormal) : d.token_types[i];
}

// SentencePiece's merges as a ranked list (see the header comment).
inline std::vector<std::pair<std::string, std::string>> sentencepiece_merges(
    const TokenizerData& d) {
  std::unordered_map<std::string, int32_t> piece;  // what SentencePiece can merge into
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const int32_t t = type_of(d, i);
    if (t != kTokenControl && t != kTokenUnused && t != kTokenByte)
      piece.try_emplace(d.tokens[i], int32_t(i));
  }
  std::vector<int32_t> order;
  for (const auto& [text, id] : piece)
    if (size_t(utf8_decode_one(text).length) < text.size()) order.push_back(id);  // 2+ code points
  auto score = [&](int32_t id) { return d.scores.empty() ? 0.f : d.scores[size_t(id)]; };
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return score(a) != score(b) ? score(a) > score(b) : a < b;
  });
  std::vector<std::pair<std::string, std::string>> out;
  for (int32_t id : order) {
    const std::string& p = d.tokens[size_t(id)];
    for (size_t k = size_t(utf8_decode_one(p).length); k < p.size();
         k += size_t(utf8_decode_one(std::string_view(p).substr(k)).length)) {
      std::string a = p.substr(0, k), b = p.substr(k);
      if (piece.count(a) && piece.count(b)) out.emplace_back(std::move(a), std::move(b));
    }
  }
  return out;
}

inline nlohmann::ordered_json special_or_null(const TokenizerData& d, int32_t id) {
  return id >= 0 ? nlohmann::ordered_json(d.tokens[size_t(id)]) : nlohmann::ordered_json(nullptr);
}

}  // namespace hf_writer_detail

// tokenizer.json for `d` (validated first).
inline nlohmann::ordered_json hf_tokenizer_json(const TokenizerData& d) {
  using hf_writer_detail::ojson;
  validate(d);
  const bool spm = d.model == "llama";
  ojson vocab = ojson::object(), added = ojson::array();
  std::unordered_map<std::string, size_t> seen;
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    MIL_CHECK(is_valid_utf8(d.tokens[i]), "save_hf_tokenizer: token ", i,
              " is not valid UTF-8, which JSON cannot hold");
    const auto [it, fresh] = seen.try_emplace(d.tokens[i], i);
    MIL_CHECK(fresh, "save_hf_tokenizer: tokens ", it->second, " and ", i, " are both '",
              d.tokens[i], "': tokenizer.json's vocabulary cannot hold a text twice");
    vocab[d.tokens[i]] = int32_t(i);
    const int32_t t = hf_writer_detail::type_of(d, i);
    if (t == kTokenControl || t == kTokenUserDefined)
      added.push_back(hf_writer_detail::added_token(int32_t(i), d.tokens[i], t == kTokenControl));
  }
  ojson merges = ojson::array();
  if (spm) {
    const auto pairs = hf_writer_detail::sentencepiece_merges(d);
    bool spaces = false;  // "a b" is ambiguous then: [a, b] pairs (tokenizers >= 0.20)
    for (const auto& [a, b] : pairs)
      spaces = spaces || a.find(' ') != std::string::npos || b.find(' ') != std::string::npos;
    for (const auto& [a, b] : pairs)
      merges.push_back(spaces ? ojson::array({a, b}) : ojson(a + " " + b));
  } else {
    for (const std::string& m : d.merges) merges.push_back(m);  // already "a b"
  }

  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  if (spm) {
    const ojson replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}},
                           {"content", "\xE2\x96\x81"}};
    ojson steps = ojson::array();
    if (d.add_space_prefix) steps.push_back({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}});
    steps.push_back(replace);
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", steps}};
    j["pre_tokenizer"] = nullptr;
  } else {
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = hf_writer_detail::byte_level_pre_tokenizer(d.pre);
  }
  if (d.add_bos && d.bos >= 0) {
    const std::string& bos = d.tokens[size_t(d.bos)];
    auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
    auto sequence = [](const char* id, int type_id) {
      return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
    };
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {special(0), sequence("A", 0)}},
        {"pair", {special(0), sequence("A", 0), special(1), sequence("B", 1)}},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", {d.bos}}, {"tokens", {bos}}}}}}};
  } else if (!spm) {
    j["post_processor"] = {{"type", "ByteLevel"},
                           {"add_prefix_space", true},
                           {"trim_offsets", false},
                           {"use_regex", true}};
  } else {
    j["post_processor"] = nullptr;
  }
  if (spm) {
    ojson steps = {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                   {{"type", "ByteFallback"}},
                   {{"type", "Fuse"}}};
    if (d.add_space_prefix)
      steps.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    j["decoder"] = {{"type", "Sequence"}, {"decoders", steps}};
  } else {
    j["decoder"] = {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}};
  }
  // An unk of type "unknown" is the model's own (hf_tokenizer.hpp reads it back as such); others
  // are named in tokenizer_config.json only.
  const bool model_unk =
      d.unk >= 0 && (spm || hf_writer_detail::type_of(d, size_t(d.unk)) == kTokenUnknown);
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", model_unk ? ojson(d.tokens[size_t(d.unk)]) : ojson(nullptr)},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", spm},
                {"byte_fallback", spm},
                {"ignore_merges", !spm && d.ignore_merges},
                {"vocab", vocab},
                {"merges", merges}};
  return j;
}

// tokenizer_config.json for `d`: the special tokens, add_bos_token and the chat template, with
// the generic fast tokenizer class (it takes everything from tokenizer.json).
inline nlohmann::ordered_json hf_tokenizer_config_json(const TokenizerData& d,
                                                       const std::string& chat_template) {
  using hf_writer_detail::ojson;
  validate(d);
  ojson decoder = ojson::object();
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const int32_t t = hf_writer_detail::type_of(d, i);
    if (t != kTokenControl && t != kTokenUserDefined) continue;
    ojson e = hf_writer_detail::added_token(int32_t(i), d.tokens[i], t == kTokenControl);
    e.erase("id");
    decoder[std::to_string(i)] = e;
  }
  ojson j;
  j["add_bos_token"] = d.add_bos;
  j["add_eos_token"] = false;
  j["added_tokens_decoder"] = decoder;
  j["bos_token"] = hf_writer_detail::special_or_null(d, d.bos);
  if (!chat_template.empty()) j["chat_template"] = chat_template;
  j["clean_up_tokenization_spaces"] = false;
  j["eos_token"] = hf_writer_detail::special_or_null(d, d.eos);
  j["pad_token"] = hf_writer_detail::special_or_null(d, d.pad);
  j["unk_token"] = hf_writer_detail::special_or_null(d, d.unk);
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  return j;
}

// Writes tokenizer.json and tokenizer_config.json into `dir` (created if needed), each under a
// temporary name renamed into place.
inline void save_hf_tokenizer(const std::filesystem::path& dir, const TokenizerData& d,
                              const std::string& chat_template) {
  std::string tokenizer, config;
  try {
    tokenizer = hf_tokenizer_json(d).dump(2);
    config = hf_tokenizer_config_json(d, chat_template).dump(2);
  } catch (const nlohmann::json::exception& e) {  // the chat template is not UTF-8
    MIL_FAIL("save_hf_tokenizer: a string is not valid UTF-8 (", e.what(), ")");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MIL_CHECK(std::filesystem::is_directory(dir), "save_hf_tokenizer: cannot create the folder '",
            dir.string(), "': ", ec.message());
  io::write_text_file_atomic(dir / "tokenizer.json", tokenizer + "\n");
  io::write_text_file_atomic(dir / "tokenizer_config.json", config + "\n");
}

}  // namespace mil::text
