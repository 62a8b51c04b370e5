#pragma once
// TokenizerData from Hugging Face files: tokenizer.json (the `tokenizers` library's format) and,
// when present, tokenizer_config.json (special tokens, add_bos_token, chat_template). The JSON is
// read as data and mapped onto the same TokenizerData a GGUF file gives, so both sources share
// one validated Tokenizer. Anything this mapping cannot reproduce is a mil::Error naming the
// file and the field, never a silent approximation.
//
// Supported (model.type "BPE"):
// - byte-level BPE (a ByteLevel pre-tokenizer) -> model "gpt2"; the pre-tokenizer is recognised
//   by structure: ByteLevel(use_regex) -> "gpt2"; Sequence[Digits(individual_digits),
//   ByteLevel(use_regex)] -> "smollm"; Sequence[Split(Llama-3 or Qwen2 regex, Isolated),
//   ByteLevel(use_regex = false)] -> "llama3" / "qwen2". Merges may be "a b" strings or [a, b]
//   pairs; model.ignore_merges (Llama-3) is kept. An NFC normaliser (Qwen2) is accepted but not
//   applied: mil, like a GGUF of the same model, tokenizes the text as given.
// - SentencePiece-style BPE with byte_fallback -> model "llama": each merge result gets the
//   score -(rank of its first merge), so SentencePiece's highest-score-first order is the merge
//   list's order; pieces of two or more code points that no merge produces are marked unused,
//   so they are never merged into (HF's BPE cannot make them either). Spaces become U+2581 by a
//   Replace normaliser or a Metaspace pre-tokenizer; a Prepend normaliser or Metaspace
//   prepend_scheme first/always sets add_space_prefix. mil puts that prefix only before the
//   first text that follows nothing but control tokens (llama.cpp's rule), so it agrees with
//   HF on text whose special tokens, if any, all come first (Prepend) and, for Metaspace, on
//   text that also starts with no space.
// Token types: added tokens with special = true are control tokens, other added tokens
// user-defined; <0xHH> pieces of a byte-fallback model are byte tokens; an unk token that is not an
// added token is unknown.
// bos / eos / unk / pad come from tokenizer_config.json (a string or {"content": ...}); without
// it, bos and add_bos come from a TemplateProcessing post-processor that starts with a special
// token, unk from model.unk_token. tokenizer_config's add_bos_token overrides the
// post-processor.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mil/core/error.hpp"
#include "mil/io/json.hpp"
#include "mil/io/limits.hpp"
#include "mil/text/tokenizer.hpp"

namespace mil::text {

namespace hf_detail {
using nlohmann::json;

// The member `key` of an object, or nullptr when absent or null.
inline const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

inline std::string excerpt(const json& j) { return io::json_excerpt(j); }

inline const std::string& string_at(const json& obj, const char* key, std::string_view source,
                                    std::string_view where) {
  const json* v = member(obj, key);
  MIL_CHECK(v && v->is_string(), "tokenizer.json '", source, "': ", where, ".", key,
            " must be a string (found ", v ? excerpt(*v) : std::string("nothing"), ")");
  return v->get_ref<const std::string&>();
}

// An optional boolean member: `fallback` when absent or null.
inline bool bool_at(const json& obj, const char* key, bool fallback, std::string_view source,
                    std::string_view where) {
  const json* v = member(obj, key);
  if (!v) return fallback;
  MIL_CHECK(v->is_boolean(), "tokenizer.json '", source, "': ", where, ".", key,
            " must be true or false (found ", excerpt(*v), ")");
  return v->get<bool>();
}

inline int32_t token_id_at(const json& v, std::string_view source, std::string_view where) {
  MIL_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 &&
                v.get<int64_t>() < std::numeric_limits<int32_t>::max(),
            "tokenizer.json '", source, "': ", where,
            " must be a token id in [0, 2^31 - 1) (found ", excerpt(v), ")");
  return static_cast<int32_t>(v.get<int64_t>());
}

inline bool is_type(const json& j, std::string_view type) {
  const json* t = member(j, "type");
  return t && t->is_string() && t->get_ref<const std::string&>() == type;
}

// The pre-tokenizers of a Sequence (or the one pre-tokenizer itself) in order.
inline std::vector<const json*> flatten(const json* j, const char* list_key) {
  std::vector<const json*> out;
  if (!j) return out;
  if (is_type(*j, "Sequence")) {
    const json* items = member(*j, list_key);
    if (items && items->is_array())
      for (const json& item : *items) out.push_back(&item);
    return out;
  }
  out.push_back(j);
  return out;
}

// The split regexes of Llama-3 and Qwen2 (as their tokenizer.json files spell them, with the
// contractions either case-folded or spelled out), which pretokenize.hpp implements by hand.
inline std::string_view pretokenizer_for_regex(std::string_view re) {
  static const std::string tail_llama3 =
      "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
      "|\\s+(?!\\S)|\\s+";
  static const std::string tail_qwen2 =
      "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
      "|\\s+(?!\\S)|\\s+";
  for (const std::string head : {"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
                                 "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"}) {
    if (re == head + tail_llama3) return "llama3";
    if (re == head + tail_qwen2) return "qwen2";
  }
  return {};
}

// Whether j is ByteLevel without a prefix space, with use_regex as asked.
inline bool is_byte_level(const json& j, bool use_regex, std::string_view source) {
  if (!is_type(j, "ByteLevel")) return false;
  MIL_CHECK(!bool_at(j, "add_prefix_space", false, source, "pre_tokenizer.ByteLevel"),
            "tokenizer.json '", source, "': ByteLevel add_prefix_space = true is not supported");
  return bool_at(j, "use_regex", true, source, "pre_tokenizer.ByteLevel") == use_regex;
}

// mil's pre-tokenizer name for a byte-level model's pre_tokenizer.
inline std::string byte_level_pretokenizer(const json& pre, std::string_view source) {
  const std::vector<const json*> steps = flatten(&pre, "pretokenizers");
  if (steps.size() == 1 && is_byte_level(*steps[0], true, source)) return "gpt2";
  if (steps.size() == 2 && is_type(*steps[0], "Digits") &&
      bool_at(*steps[0], "individual_digits", false, source, "pre_tokenizer.Digits") &&
      is_byte_level(*steps[1], true, source))
    return "smollm";
  if (steps.size() == 2 && is_type(*steps[0], "Split") && is_byte_level(*steps[1], false, source)) {
    const json& split = *steps[0];
    const json* pattern = member(split, "pattern");
    const json* regex = pattern ? member(*pattern, "Regex") : nullptr;
    const json* behavior = member(split, "behavior");
    if (regex && regex->is_string() && behavior && *behavior == "Isolated" &&
        !bool_at(split, "invert", false, source, "pre_tokenizer.Split")) {
      const std::string_view name = pretokenizer_for_regex(regex->get_ref<const std::string&>());
      MIL_CHECK(!name.empty(), "tokenizer.json '", source, "': the Split regex ", excerpt(*regex),
                " is not one mil implements (Llama-3's or Qwen2's)");
      return std::string(name);
    }
  }
  MIL_FAIL("tokenizer.json '", source, "': unsupported byte-level pre_tokenizer ", excerpt(pre),
           " (supported: ByteLevel; Sequence[Digits(individual_digits), ByteLevel]; "
           "Sequence[Split(Llama-3 or Qwen2 regex), ByteLevel(use_regex = false)])");
}

inline constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// add_space_prefix of a SentencePiece-style model, from its normaliser and pre-tokenizer; throws
// for anything but spaces turned into U+2581 with an optional leading one.
inline bool sentencepiece_prefix(const json* normalizer, const json* pre, std::string_view source) {
  bool replaces = false, prefix = false;
  for (const json* n : flatten(normalizer, "normalizers")) {
    const json* pattern = member(*n, "pattern");
    const json* str = pattern ? member(*pattern, "String") : nullptr;
    const json* content = member(*n, "content");
    const json* prepend = member(*n, "prepend");
    if (is_type(*n, "Replace") && str && *str == " " && content && *content == kSpace) {
      replaces = true;
    } else if (is_type(*n, "Prepend") && prepend && *prepend == kSpace) {
      prefix = true;
    } else {
      MIL_FAIL("tokenizer.json '", source, "': unsupported normalizer ", excerpt(*n),
               " for a SentencePiece-style model (supported: Prepend(U+2581), Replace(' ', "
               "U+2581))");
    }
  }
  for (const json* p : flatten(pre, "pretokenizers")) {
    const json* replacement = member(*p, "replacement");
    MIL_CHECK(is_type(*p, "Metaspace") && replacement && *replacement == kSpace, "tokenizer.json '",
              source, "': unsupported pre_tokenizer ", excerpt(*p),
              " for a SentencePiece-style model (supported: none, or Metaspace(U+2581))");
    MIL_CHECK(!bool_at(*p, "split", false, source, "pre_tokenizer.Metaspace"), "tokenizer.json '",
              source, "': Metaspace split = true is not supported");
    replaces = true;
    if (const json* scheme = member(*p, "prepend_scheme")) {
      MIL_CHECK(*scheme == "first" || *scheme == "always" || *scheme == "never", "tokenizer.json '",
                source, "': unknown Metaspace prepend_scheme ", excerpt(*scheme));
      prefix = prefix || *scheme != "never";
    } else {
      prefix = prefix || bool_at(*p, "add_prefix_space", true, source, "pre_tokenizer.Metaspace");
    }
  }
  MIL_CHECK(replaces, "tokenizer.json '", source,
            "': a byte-fallback BPE model whose spaces are not turned into U+2581 (no Replace "
            "normalizer or Metaspace pre-tokenizer) is not supported");
  return prefix;
}

// The content of a special-token entry of tokenizer_config.json: "text" or {"content": "text"}.
inline const std::string* token_content(const json& config, const char* key) {
  const json* v = member(config, key);
  if (!v) return nullptr;
  if (v->is_string()) return &v->get_ref<const std::string&>();
  const json* c = member(*v, "content");
  return c && c->is_string() ? &c->get_ref<const std::string&>() : nullptr;
}

// The first token of a TemplateProcessing post-processor's "single" template when it is a
// special token (BOS), or nullptr.
inline const std::string* leading_special(const json* post) {
  for (const json* p : flatten(post, "processors")) {
    if (!is_type(*p, "TemplateProcessing")) continue;
    const json* single = member(*p, "single");
    if (!single || !single->is_array() || single->empty()) continue;
    const json* special = member(single->front(), "SpecialToken");
    const json* id = special ? member(*special, "id") : nullptr;
    if (id && id->is_string()) return &id->get_ref<const std::string&>();
  }
  return nullptr;
}

inline int64_t count_code_points(std::string_view s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size(); i += utf8_decode_one(s.substr(i)).length) ++n;
  return n;
}

}  // namespace hf_detail

// TokenizerData from a parsed tokenizer.json and, when not null, tokenizer_config.json; source
// names the files in error messages.
inline TokenizerData tokenizer_data_from_hf(const nlohmann::json& tj, const nlohmann::json* config,
                                            std::string_view source) {
  using namespace hf_detail;
  MIL_CHECK(tj.is_object(), "tokenizer.json '", source, "': the top level must be an object");
  MIL_CHECK(!config || config->is_object(), "tokenizer_config.json of '", source,
            "': the top level must be an object");
  const json* model = member(tj, "model");
  MIL_CHECK(model && model->is_object(), "tokenizer.json '", source, "': no 'model' object");
  const json* type = member(*model, "type");
  MIL_CHECK(!type || *type == "BPE", "tokenizer.json '", source, "': model type ", excerpt(*type),
            " is not supported (supported: BPE)");
  const json* dropout = member(*model, "dropout");
  MIL_CHECK(!dropout || (dropout->is_number() && dropout->get<double>() == 0.0), "tokenizer.json '",
            source, "': BPE dropout ", dropout ? excerpt(*dropout) : "",
            " is not supported (inference needs none)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = member(*model, key);
    MIL_CHECK(!v || *v == "", "tokenizer.json '", source, "': model.", key, " = ", excerpt(*v),
              " is not supported");
  }
  const json* vocab = member(*model, "vocab");
  const json* merges = member(*model, "merges");
  MIL_CHECK(vocab && vocab->is_object(), "tokenizer.json '", source,
            "': model.vocab must be an object of token -> id");
  MIL_CHECK(!merges || merges->is_array(), "tokenizer.json '", source,
            "': model.merges must be an array");
  const json* added = member(tj, "added_tokens");
  MIL_CHECK(!added || added->is_array(), "tokenizer.json '", source,
            "': added_tokens must be an array");

  // Every id 0..n-1 must name exactly one text; n can be no larger than the number of entries,
  // so a huge id in a small file is refused before anything is allocated for it.
  const int64_t entries = checked_add(int64_t(vocab->size()), added ? int64_t(added->size()) : 0);
  int64_t n = 0;
  for (const auto& [text, id] : vocab->items())
    n = std::max<int64_t>(n, int64_t(token_id_at(id, source, "model.vocab[\"" + text + "\"]")) + 1);
  if (added)
    for (const json& a : *added) {
      MIL_CHECK(a.is_object(), "tokenizer.json '", source, "': an added_tokens entry is ",
                excerpt(a), ", not an object");
      const json* id = member(a, "id");
      MIL_CHECK(id, "tokenizer.json '", source, "': added token ", excerpt(a), " has no id");
      n = std::max<int64_t>(n, int64_t(token_id_at(*id, source, "added_tokens[].id")) + 1);
    }
  MIL_CHECK(n > 0, "tokenizer.json '", source, "': the vocabulary is empty");
  MIL_CHECK(n <= entries, "tokenizer.json '", source, "': token ids reach ", n - 1,
            " but there are only ", entries, " entries, so some ids have no token");
  io::limits::check_count(n, io::limits::kMaxVocab, "tokenizer.json '" + std::string(source) + "'",
                          "the vocabulary (largest token id + 1)");
  TokenizerData d;
  d.tokens.resize(size_t(n));
  std::vector<bool> filled(size_t(n), false);
  auto put = [&](int32_t id, const std::string& text, std::string_view where) {
    MIL_CHECK(!filled[id] || d.tokens[id] == text, "tokenizer.json '", source, "': ", where,
              " gives id ", id, " to '", text, "', which is already '", d.tokens[id], "'");
    d.tokens[id] = text;
    filled[id] = true;
  };
  for (const auto& [text, id] : vocab->items()) put(id.get<int32_t>(), text, "model.vocab");
  d.token_types.assign(size_t(n), kTokenNormal);
  std::unordered_map<std::string, int32_t> added_ids;  // added tokens win over the vocabulary
  if (added)
    for (const json& a : *added) {
      const int32_t id = token_id_at(a.at("id"), source, "added_tokens[].id");
      const std::string& text = string_at(a, "content", source, "added_tokens[]");
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        MIL_CHECK(!bool_at(a, flag, false, source, "added_tokens[]"), "tokenizer.json '", source,
                  "': added token '", text, "' has ", flag, " = true, which mil does not support");
      put(id, text, "added_tokens");
      d.token_types[id] = bool_at(a, "special", false, source, "added_tokens[]")
                              ? kTokenControl
                              : kTokenUserDefined;
      added_ids.try_emplace(text, id);
    }
  for (int64_t i = 0; i < n; ++i)
    MIL_CHECK(filled[i], "tokenizer.json '", source, "': token id ", i, " has no token");

  auto id_of = [&](const std::string& text, std::string_view what) -> int32_t {
    if (const auto it = added_ids.find(text); it != added_ids.end()) return it->second;
    const auto v = vocab->find(text);
    MIL_CHECK(v != vocab->end(), "'", source, "': ", what, " '", text,
              "' is not in the vocabulary");
    return v->get<int32_t>();
  };
  // [a, b] pairs or "a b" strings, in rank order.
  std::vector<std::pair<std::string, std::string>> merge_pairs;
  if (merges) {
    merge_pairs.reserve(merges->size());
    for (const json& m : *merges) {
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        const size_t sp = s.find(' ');
        MIL_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() &&
                      s.find(' ', sp + 1) == std::string::npos,
                  "tokenizer.json '", source, "': merge '", s, "' is not of the form 'a b'");
        merge_pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        MIL_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                  "tokenizer.json '", source, "': merge ", excerpt(m),
                  " is neither 'a b' nor [a, b]");
        merge_pairs.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      }
      const auto& [a, b] = merge_pairs.back();
      MIL_CHECK(vocab->contains(a) && vocab->contains(b) && vocab->contains(a + b),
                "tokenizer.json '", source, "': merge '", a, "' + '", b,
                "' uses or makes a token that is not in model.vocab");
    }
  }

  const json* normalizer = member(tj, "normalizer");
  const json* pre = member(tj, "pre_tokenizer");
  bool byte_level = false;
  for (const json* p : flatten(pre, "pretokenizers"))
    byte_level = byte_level || is_type(*p, "ByteLevel");
  const bool byte_fallback = bool_at(*model, "byte_fallback", false, source, "model");
  const json* unk = member(*model, "unk_token");
  MIL_CHECK(!unk || unk->is_string(), "tokenizer.json '", source,
            "': model.unk_token must be a string");
  if (unk) d.unk = id_of(unk->get_ref<const std::string&>(), "model.unk_token");

  if (byte_level) {
    MIL_CHECK(!byte_fallback, "tokenizer.json '", source,
              "': a byte-level model with byte_fallback is not supported");
    MIL_CHECK(!normalizer || is_type(*normalizer, "NFC"), "tokenizer.json '", source,
              "': unsupported normalizer ", excerpt(*normalizer),
              " for a byte-level model (supported: none, NFC)");
    d.model = "gpt2";
    d.pre = byte_level_pretokenizer(*pre, source);
    d.ignore_merges = bool_at(*model, "ignore_merges", false, source, "model");
    d.merges.reserve(merge_pairs.size());
    for (const auto& [a, b] : merge_pairs) {
      MIL_CHECK(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos,
                "tokenizer.json '", source, "': merge ['", a, "', '", b,
                "'] has a space inside a token, which a byte-level vocabulary never has");
      d.merges.push_back(a + " " + b);
    }
  } else if (byte_fallback) {
    MIL_CHECK(!bool_at(*model, "ignore_merges", false, source, "model"), "tokenizer.json '", source,
              "': ignore_merges is not supported for a byte-fallback model");
    // Scores are floats: ranks must stay exact.
    MIL_CHECK(merge_pairs.size() < (size_t(1) << 24), "tokenizer.json '", source,
              "': ", merge_pairs.size(), " merges are more than scores can order exactly (2^24)");
    d.model = "llama";
    d.add_space_prefix = sentencepiece_prefix(normalizer, pre, source);
    d.scores.assign(size_t(n), 0.0f);
    std::vector<bool> made(size_t(n), false);
    for (size_t r = 0; r < merge_pairs.size(); ++r) {
      const int32_t id = vocab->at(merge_pairs[r].first + merge_pairs[r].second).get<int32_t>();
      if (!made[id]) d.scores[id] = -static_cast<float>(r);
      made[id] = true;
    }
    for (const auto& [text, id_json] : vocab->items()) {
      const int32_t id = id_json.get<int32_t>();
      if (d.token_types[id] != kTokenNormal) continue;  // added tokens keep their type
      if (parse_byte_token(text) >= 0)
        d.token_types[id] = kTokenByte;
      else if (!made[id] && count_code_points(text) > 1)
        d.token_types[id] = kTokenUnused;
    }
  } else {
    MIL_FAIL("tokenizer.json '", source,
             "': a BPE model that is neither byte-level (ByteLevel "
             "pre-tokenizer) nor SentencePiece-style (byte_fallback) is not supported");
  }
  // An unk that is also an added token stays matchable in text, as in HF.
  if (d.unk >= 0 && d.token_types[d.unk] == kTokenNormal) d.token_types[d.unk] = kTokenUnknown;

  // Special tokens and BOS: tokenizer_config.json first, else the post-processor.
  const json* post = member(tj, "post_processor");
  if (const std::string* bos = leading_special(post)) {
    d.bos = id_of(*bos, "post_processor's leading special token");
    d.add_bos = true;
  }
  if (config) {
    const std::pair<const char*, int32_t*> specials[] = {
        {"bos_token", &d.bos}, {"eos_token", &d.eos}, {"unk_token", &d.unk}, {"pad_token", &d.pad}};
    for (const auto& [key, slot] : specials)
      if (const std::string* text = token_content(*config, key))
        *slot = id_of(*text, std::string("tokenizer_config.json ") + key);
    d.add_bos = bool_at(*config, "add_bos_token", d.add_bos, source, "tokenizer_config.json");
  }
  return d;
}

// The chat template of a tokenizer_config.json: the "chat_template" string, or from a list of
// {"name", "template"} the one named "default"; "" when there is none.
inline std::string chat_template_from_hf_config(const nlohmann::json& config,
                                                std::string_view source) {
  const nlohmann::json* t = hf_detail::member(config, "chat_template");
  if (!t) return {};
  if (t->is_string()) return t->get<std::string>();
  MIL_CHECK(t->is_array(), "tokenizer_config.json of '", source,
            "': chat_template must be a string or a list of {name, template}");
  std::string names;
  for (const auto& item : *t) {
    const nlohmann::json* name = hf_detail::member(item, "name");
    const nlohmann::json* text = hf_detail::member(item, "template");
    MIL_CHECK(name && name->is_string() && text && text->is_string(), "tokenizer_config.json of '",
              source, "': chat_template entry ", hf_detail::excerpt(item),
              " is not {name, template}");
    if (*name == "default") return text->get<std::string>();
    names += (names.empty() ? "" : ", ") + name->get<std::string>();
  }
  MIL_FAIL("tokenizer_config.json of '", source, "': chat_template lists no 'default' template (",
           names.empty() ? std::string("empty list") : "only: " + names, ")");
}

struct HfTokenizer {
  TokenizerData data;
  std::string chat_template;  // "" when the files carry none
};

// Loads tokenizer.json from `path` (the file itself, or a model folder holding it) with the
// tokenizer_config.json beside it when there is one. The chat template is tokenizer_config's, or
// that of a chat_template.jinja file beside it (newer transformers save it there).
inline HfTokenizer load_hf_tokenizer(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  const fs::path file = fs::is_directory(path) ? path / "tokenizer.json" : path;
  MIL_CHECK(fs::is_regular_file(file), "no tokenizer.json at '", path.string(), "'");
  const fs::path dir = file.parent_path();
  const nlohmann::json tj = io::read_json_file_strict(file);
  HfTokenizer out;
  const fs::path config_path = dir / "tokenizer_config.json";
  if (fs::is_regular_file(config_path)) {
    const nlohmann::json config = io::read_json_file_strict(config_path);
    out.data = tokenizer_data_from_hf(tj, &config, file.string());
    out.chat_template = chat_template_from_hf_config(config, file.string());
  } else {
    out.data = tokenizer_data_from_hf(tj, nullptr, file.string());
  }
  const fs::path jinja = dir / "chat_template.jinja";
  if (out.chat_template.empty() && fs::is_regular_file(jinja)) {
    std::ifstream in(jinja, std::ios::binary);
    out.chat_template.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return out;
}

}  // namespace mil::text
