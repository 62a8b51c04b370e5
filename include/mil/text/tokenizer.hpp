#pragma once
// The tokenizer of a GGUF model, independent of the file format: TokenizerData carries exactly
// what GGUF's tokenizer.ggml.* metadata holds, Tokenizer validates it and encodes / decodes.
//
// Input handling (documented contract):
// - encode() never throws on any input bytes: each ill-formed UTF-8 sequence (maximal subpart,
//   as in Python's bytes.decode("utf-8", "replace")) is replaced by U+FFFD first.
// - With parse_special, control and user-defined tokens (token types 3 and 4, e.g.
//   "<|im_start|>") are matched in the raw text first, the longest one at the leftmost position;
//   without it they are plain text.
// - "llama" (SentencePiece) models: spaces become U+2581 and, when add_space_prefix, one U+2581
//   is put in front of the first text fragment when only control tokens precede it; decode()
//   removes that one leading space again, so decode(encode(s)) == s for valid UTF-8 s.
// - "gpt2" models drop bytes that have no token (as HF tokenizers and llama.cpp do); with all
//   256 byte tokens present, decode(encode(s)) == s for valid UTF-8 s.
// - decode_bytes() returns the bytes of the tokens as they are (byte tokens may form ill-formed
//   UTF-8); decode() returns the same with ill-formed sequences replaced by U+FFFD.
//   An id outside the vocabulary is a caller bug and throws mil::Error.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mil/core/error.hpp"
#include "mil/io/limits.hpp"
#include "mil/text/bpe.hpp"
#include "mil/text/pretokenize.hpp"
#include "mil/text/utf8.hpp"

namespace mil::text {

// GGUF token types (tokenizer.ggml.token_type).
enum TokenType : int32_t {
  kTokenUndefined = 0, kTokenNormal = 1, kTokenUnknown = 2, kTokenControl = 3,
  kTokenUserDefined = 4, kTokenUnused = 5, kTokenByte = 6,
};

struct TokenizerData {
  std::string model;  // "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE, byte fallback)
  std::string pre;    // pre-tokenizer of "gpt2" models: "smollm", "gpt2", "llama3"/"llama-bpe", "qwen2"
  std::vector<std::string> tokens;
  std::vector<float> scores;          // empty or one per token ("llama": merge priority)
  std::vector<int32_t> token_types;   // empty (all normal) or one per token, see TokenType
  std::vector<std::string> merges;    // "a b" in rank order ("gpt2")
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = false;
  bool add_space_prefix = true;  // tokenizer.ggml.add_space_prefix ("llama" only)
  bool ignore_merges = false;     // "gpt2": a word that is itself a token is taken whole (Llama-3)
};

// The byte of a well-formed byte token "<0xHH>", or -1.
inline int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(s[3]), lo = hex(s[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Throws mil::Error naming the first problem of untrusted tokenizer data.
inline void validate(const TokenizerData& d) {
  MIL_CHECK(d.model == "gpt2" || d.model == "llama", "tokenizer: unsupported model '", d.model,
            "' (supported: gpt2 = byte-level BPE, llama = SentencePiece BPE)");
  MIL_CHECK(!d.tokens.empty(), "tokenizer: the vocabulary is empty");
  io::limits::check_count(static_cast<int64_t>(d.tokens.size()), io::limits::kMaxVocab,
                          "tokenizer", "the vocabulary size");
  const auto n = static_cast<int64_t>(d.tokens.size());
  MIL_CHECK(d.scores.empty() || static_cast<int64_t>(d.scores.size()) == n, "tokenizer: ",
            d.scores.size(), " scores for ", n, " tokens");
  MIL_CHECK(d.token_types.empty() || static_cast<int64_t>(d.token_types.size()) == n, "tokenizer: ",
            d.token_types.size(), " token types for ", n, " tokens");
  for (size_t i = 0; i < d.scores.size(); ++i)
    MIL_CHECK(std::isfinite(d.scores[i]), "tokenizer: score of token ", i, " is not finite");
  std::array<bool, 256> seen_byte{};
  for (size_t i = 0; i < d.token_types.size(); ++i) {
    const int32_t t = d.token_types[i];
    MIL_CHECK(t >= kTokenUndefined && t <= kTokenByte, "tokenizer: token ", i, " has invalid type ",
              t, " (expected 0..6)");
    if (t != kTokenByte) continue;
    const int b = parse_byte_token(d.tokens[i]);
    MIL_CHECK(b >= 0, "tokenizer: byte token ", i, " is '", d.tokens[i], "', expected <0xHH>");
    MIL_CHECK(!seen_byte[b], "tokenizer: byte token ", i, " ('", d.tokens[i], "') is a duplicate");
    seen_byte[b] = true;
  }
  const std::pair<const char*, int32_t> specials[] = {
      {"bos", d.bos}, {"eos", d.eos}, {"unk", d.unk}, {"pad", d.pad}};
  for (const auto& [name, id] : specials)
    MIL_CHECK(id >= -1 && id < n, "tokenizer: ", name, " token id ", id,
              " is outside the vocabulary of ", n, " tokens");
  if (d.model == "gpt2") {
    parse_pretokenizer(d.pre);  // throws for an unknown one
    MIL_CHECK(!d.merges.empty(), "tokenizer: a gpt2 (byte-level BPE) model needs merges");
  }
}

class Tokenizer {
 public:
  explicit Tokenizer(TokenizerData data) : d_(std::move(data)) {
    validate(d_);
    spm_ = d_.model == "llama";
    const auto n = static_cast<int32_t>(d_.tokens.size());
    byte_ids_.fill(-1);
    for (int32_t i = 0; i < n; ++i) {
      const int32_t t = type(i);
      if (t == kTokenByte) byte_ids_[parse_byte_token(d_.tokens[i])] = i;
      vocab_.try_emplace(d_.tokens[i], i);
      // SentencePiece merges only into pieces of text, never into control/unused/byte tokens.
      if (spm_ && t != kTokenControl && t != kTokenUnused && t != kTokenByte)
        spm_vocab_.try_emplace(d_.tokens[i], i);
    }
    if (!spm_) {
      pre_ = parse_pretokenizer(d_.pre);
      std::array<int32_t, 256> bytes;
      for (int b = 0; b < 256; ++b) {
        const auto it = vocab_.find(to_utf8(byte_to_unicode()[b]));
        bytes[b] = it == vocab_.end() ? -1 : it->second;
      }
      bpe_.set_byte_ids(bytes);
      for (size_t r = 0; r < d_.merges.size(); ++r) {
        const std::string& m = d_.merges[r];
        const size_t sp = m.find(' ');
        MIL_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < m.size(), "tokenizer: merge ", r,
                  " ('", m, "') is not of the form 'a b'");
        const std::string_view a(m.data(), sp), b(m.data() + sp + 1, m.size() - sp - 1);
        const auto ia = vocab_.find(a), ib = vocab_.find(b);
        MIL_CHECK(ia != vocab_.end() && ib != vocab_.end(), "tokenizer: merge ", r, " ('", m,
                  "') uses a token that is not in the vocabulary");
        const auto ic = vocab_.find(std::string(a) + std::string(b));
        MIL_CHECK(ic != vocab_.end(), "tokenizer: merge ", r, " ('", m,
                  "') makes a token that is not in the vocabulary");
        bpe_.add_merge(ia->second, ib->second, static_cast<int32_t>(r), ic->second);
      }
    }
    for (int32_t i = 0; i < n; ++i) {
      const int32_t t = type(i);
      if ((t == kTokenControl || t == kTokenUserDefined) && !d_.tokens[i].empty())
        specials_.push_back(i);
    }
    // Longest first, so the first match at a position is the longest.
    std::stable_sort(specials_.begin(), specials_.end(), [&](int32_t a, int32_t b) {
      return d_.tokens[a].size() > d_.tokens[b].size();
    });
    pieces_.resize(n);
    for (int32_t i = 0; i < n; ++i) pieces_[i] = make_piece(i);
  }

  const TokenizerData& data() const { return d_; }
  int32_t vocab_size() const { return static_cast<int32_t>(d_.tokens.size()); }
  int32_t bos() const { return d_.bos; }
  int32_t eos() const { return d_.eos; }
  int32_t type(int32_t id) const { return d_.token_types.empty() ? kTokenNormal : d_.token_types[id]; }
  bool is_control(int32_t id) const { return type(id) == kTokenControl; }

  // The id of a token text, or -1.
  int32_t token_id(std::string_view text) const {
    const auto it = vocab_.find(text);
    return it == vocab_.end() ? -1 : it->second;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos = false, bool parse_special = true) const {
    const std::string clean = sanitize_utf8(text);
    std::vector<int32_t> out;
    if (add_bos && d_.bos >= 0) out.push_back(d_.bos);
    size_t start = 0;  // start of the pending plain-text fragment
    bool prefix_pending = true;  // no text yet, only control tokens (as decode sees it)
    if (parse_special && !specials_.empty()) {
      for (size_t i = 0; i < clean.size();) {
        const int32_t id = special_at(clean, i);
        if (id < 0) {
          ++i;
          continue;
        }
        encode_fragment(std::string_view(clean).substr(start, i - start), prefix_pending, out);
        out.push_back(id);
        if (!is_control(id)) prefix_pending = false;
        i += d_.tokens[id].size();
        start = i;
      }
    }
    encode_fragment(std::string_view(clean).substr(start), prefix_pending, out);
    return out;
  }

  // The bytes of one token ("llama": U+2581 as a space, byte tokens as their byte; control
  // tokens as their text).
  const std::string& token_to_piece(int32_t id) const {
    check_id(id);
    return pieces_[id];
  }

  // Appends the bytes of id to out. `at_start` is true until the first text piece: that is where
  // a "llama" model drops the space of its dummy prefix. Control tokens render only when
  // render_special.
  void append_piece(std::string& out, int32_t id, bool render_special, bool& at_start) const {
    check_id(id);
    if (is_control(id) && !render_special) return;
    std::string_view piece = pieces_[id];
    if (at_start && !is_control(id)) {
      if (spm_ && d_.add_space_prefix && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
      at_start = false;
    }
    out.append(piece);
  }

  std::string decode_bytes(std::span<const int32_t> ids, bool render_special = true) const {
    std::string out;
    bool at_start = true;
    for (int32_t id : ids) append_piece(out, id, render_special, at_start);
    return out;
  }
  std::string decode(std::span<const int32_t> ids, bool render_special = true) const {
    return sanitize_utf8(decode_bytes(ids, render_special));
  }

 private:
  void check_id(int32_t id) const {
    MIL_CHECK(id >= 0 && id < vocab_size(), "tokenizer: token id ", id,
              " is outside the vocabulary of ", vocab_size(), " tokens");
  }

  std::string make_piece(int32_t id) const {
    const std::string& text = d_.tokens[id];
    const int32_t t = type(id);
    if (t == kTokenControl || t == kTokenUserDefined) return text;
    if (spm_) {
      if (t == kTokenByte) return std::string(1, static_cast<char>(parse_byte_token(text)));
      std::string out;
      for (size_t i = 0; i < text.size();) {
        if (text.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581
          out += ' ';
          i += 3;
        } else {
          out += text[i++];
        }
      }
      return out;
    }
    std::string out;  // byte level: map each code point back to its byte
    for (char32_t cp : decode_utf8(text)) {
      const int b = unicode_to_byte(cp);
      if (b >= 0) out += static_cast<char>(b);
      else append_utf8(out, cp);
    }
    return out;
  }

  // The longest special token starting at byte i of s, or -1.
  int32_t special_at(std::string_view s, size_t i) const {
    for (int32_t id : specials_) {
      const std::string& t = d_.tokens[id];
      if (t[0] == s[i] && s.compare(i, t.size(), t) == 0) return id;
    }
    return -1;
  }

  // prefix_pending: nothing but control tokens so far; the first text then gets the dummy
  // prefix ("llama"), which decode() drops from the first non-control piece.
  void encode_fragment(std::string_view text, bool& prefix_pending, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    if (spm_) {
      std::string norm;
      norm.reserve(text.size() + 3);
      if (d_.add_space_prefix && prefix_pending) norm += "\xE2\x96\x81";
      prefix_pending = false;
      for (char c : text) {
        if (c == ' ') norm += "\xE2\x96\x81";
        else norm += c;
      }
      SentencePieceBpe(&spm_vocab_, &d_.scores, &byte_ids_).encode(norm, d_.unk, out);
      return;
    }
    std::vector<size_t> offsets;
    const std::vector<char32_t> cps = decode_utf8(text, &offsets);
    std::string mapped;
    for (const auto& [b, e] : pretokenize_spans(cps.data(), cps.size(), pre_)) {
      const std::string_view word = text.substr(offsets[b], offsets[e] - offsets[b]);
      if (d_.ignore_merges) {  // HF's ignore_merges: the word's own token, when there is one
        mapped.clear();
        for (unsigned char c : word) append_utf8(mapped, byte_to_unicode()[c]);
        if (const auto it = vocab_.find(mapped); it != vocab_.end()) {
          out.push_back(it->second);
          continue;
        }
      }
      bpe_.encode_word(word, out);
    }
  }

  TokenizerData d_;
  bool spm_ = false;
  PreTokenizer pre_ = PreTokenizer::Gpt2;
  TokenMap vocab_;      // text -> first id with that text
  TokenMap spm_vocab_;  // the pieces SentencePiece may merge into
  std::array<int32_t, 256> byte_ids_{};
  ByteLevelBpe bpe_;
  std::vector<int32_t> specials_;  // control and user-defined ids, longest text first
  std::vector<std::string> pieces_;
};

// Decodes a stream of ids piece by piece: an incomplete UTF-8 sequence at the end (an emoji
// split across byte tokens) is held back until it completes; ill-formed bytes become U+FFFD.
// The concatenated output equals tokenizer.decode(all ids).
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool render_special = true)
      : tok_(&tokenizer), render_special_(render_special) {}

  std::string push(int32_t id) {
    tok_->append_piece(pending_, id, render_special_, at_start_);
    const size_t hold = utf8_incomplete_tail(pending_);
    std::string out = sanitize_utf8(std::string_view(pending_).substr(0, pending_.size() - hold));
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  // Whatever is left (an unfinished sequence becomes U+FFFD); the decoder starts over.
  std::string flush() {
    std::string out = sanitize_utf8(pending_);
    pending_.clear();
    at_start_ = true;
    return out;
  }

 private:
  const Tokenizer* tok_;
  bool render_special_;
  bool at_start_ = true;
  std::string pending_;
};

}  // namespace mil::text
