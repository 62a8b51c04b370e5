#pragma once
// The two BPE flavours behind GGUF tokenizers:
// - byte-level BPE (tokenizer.ggml.model "gpt2"): each byte of a word is first mapped to a
//   printable code point (GPT-2's bytes_to_unicode), then adjacent symbols are merged in the
//   order of the ranked merge list;
// - SentencePiece BPE (model "llama"): symbols are code points, the adjacent pair whose
//   concatenation is a vocabulary entry with the highest score merges first; pieces that are not
//   in the vocabulary fall back to byte tokens <0xNN> (or to the unknown token).
// Both run one merge loop (detail::merge_symbols) with their own pair score: a priority queue
// over a linked list of symbols, O(n log n) per word, ties to the leftmost pair.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mil/text/utf8.hpp"

namespace mil::text {

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100 onwards in byte order.
inline const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// The inverse: code point -> byte, or -1 for code points outside the map.
inline int unicode_to_byte(char32_t cp) {
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_unicode()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

// Heterogeneous-lookup string map (find with a string_view, no temporary std::string).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

namespace detail {
struct Symbol {
  int32_t prev, next;
  bool alive;
};
// A candidate merge of the symbol at `left` and its successor; stale when either has changed
// since it was queued.
struct Candidate {
  double priority;  // smaller merges first
  int32_t left;
  int32_t left_version, right_version;
  bool operator>(const Candidate& o) const {
    return priority != o.priority ? priority > o.priority : left > o.left;
  }
};

// The merge loop both flavours share. Symbols 0..n-1 form a linked list; score(left, right)
// gives the priority of merging two neighbours (smaller first) or nothing when they cannot
// merge; join(left, right) folds right into left in the caller's state. Merges happen in
// priority order, ties to the leftmost pair, and a merged symbol is scored afresh with both of
// its new neighbours, so a word of n symbols costs O(n log n). Returns the surviving symbols in
// order.
template <class Score, class Join>
std::vector<int32_t> merge_symbols(int32_t n, const Score& score, const Join& join) {
  std::vector<Symbol> sym(n);
  std::vector<int32_t> version(n, 0);
  for (int32_t i = 0; i < n; ++i) sym[i] = {i - 1, i + 1 < n ? i + 1 : -1, true};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t left) {
    if (left < 0 || sym[left].next < 0) return;
    const int32_t right = sym[left].next;
    if (const std::optional<double> p = score(left, right))
      queue.push({*p, left, version[left], version[right]});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    const int32_t left = c.left, right = sym[left].next;
    if (!sym[left].alive || right < 0 || version[left] != c.left_version ||
        version[right] != c.right_version)
      continue;
    join(left, right);
    ++version[left];
    sym[right].alive = false;
    sym[left].next = sym[right].next;
    if (sym[right].next >= 0) sym[sym[right].next].prev = left;
    consider(sym[left].prev);
    consider(left);
  }
  std::vector<int32_t> survivors;
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) survivors.push_back(i);
  return survivors;
}
}  // namespace detail

// Byte-level BPE over token ids: merges[(a, b)] = (rank, id of a+b).
class ByteLevelBpe {
 public:
  struct Merge {
    int32_t rank, result;
  };

  void add_merge(int32_t a, int32_t b, int32_t rank, int32_t result) {
    merges_.try_emplace(key(a, b), Merge{rank, result});  // the first (lowest) rank wins
  }
  // byte_ids[b] is the token of the single mapped byte b, or -1 when the vocabulary lacks it.
  void set_byte_ids(const std::array<int32_t, 256>& ids) { byte_ids_ = ids; }

  // Appends the tokens of one word (raw bytes). A byte whose mapped code point is not in the
  // vocabulary is dropped, as HF tokenizers (BPE without unk_token) and llama.cpp do: SmolLM2
  // has no token for 21 bytes (0x04, 0xC0, 0xFF, ...).
  void encode_word(std::string_view word, std::vector<int32_t>& out) const {
    std::vector<int32_t> ids;
    ids.reserve(word.size());
    for (unsigned char b : word)
      if (byte_ids_[b] >= 0) ids.push_back(byte_ids_[b]);
    merge(ids);
    out.insert(out.end(), ids.begin(), ids.end());
  }

 private:
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void merge(std::vector<int32_t>& ids) const {
    const auto n = static_cast<int32_t>(ids.size());
    if (n < 2) return;
    auto score = [&](int32_t left, int32_t right) -> std::optional<double> {
      const auto it = merges_.find(key(ids[left], ids[right]));
      if (it == merges_.end()) return std::nullopt;
      return static_cast<double>(it->second.rank);  // lowest rank first
    };
    auto join = [&](int32_t left, int32_t right) {
      ids[left] = merges_.at(key(ids[left], ids[right])).result;
    };
    const std::vector<int32_t> survivors = detail::merge_symbols(n, score, join);
    for (size_t w = 0; w < survivors.size(); ++w) ids[w] = ids[survivors[w]];
    ids.resize(survivors.size());
  }

  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};
};

// SentencePiece BPE: merge by score over the vocabulary's strings.
class SentencePieceBpe {
 public:
  // vocab: token string -> id (normal and user-defined pieces); scores[id]; byte_ids[b] is the
  // id of <0xBB> or -1.
  SentencePieceBpe(const TokenMap* vocab, const std::vector<float>* scores,
                   const std::array<int32_t, 256>* byte_ids)
      : vocab_(vocab), scores_(scores), byte_ids_(byte_ids) {}

  // Appends the tokens of already normalised text (spaces as U+2581, valid UTF-8).
  void encode(std::string_view text, int32_t unk, std::vector<int32_t>& out) const {
    // Symbols are byte ranges of text, initially one code point each.
    std::vector<uint32_t> begin, end;
    for (size_t i = 0; i < text.size();) {
      const Utf8Step st = utf8_decode_one(text.substr(i));
      begin.push_back(static_cast<uint32_t>(i));
      i += st.length;
      end.push_back(static_cast<uint32_t>(i));
    }
    auto score = [&](int32_t left, int32_t right) -> std::optional<double> {
      const auto it = vocab_->find(text.substr(begin[left], end[right] - begin[left]));
      if (it == vocab_->end()) return std::nullopt;
      const auto id = static_cast<size_t>(it->second);
      return id < scores_->size() ? -static_cast<double>((*scores_)[id]) : 0.0;  // highest first
    };
    auto join = [&](int32_t left, int32_t right) { end[left] = end[right]; };
    for (int32_t i : detail::merge_symbols(static_cast<int32_t>(begin.size()), score, join)) {
      const std::string_view piece = text.substr(begin[i], end[i] - begin[i]);
      const auto it = vocab_->find(piece);
      if (it != vocab_->end()) {
        out.push_back(it->second);
        continue;
      }
      // Unmerged pieces not in the vocabulary are single code points: their byte tokens when
      // all exist, else one unknown token (dropped when there is none).
      bool all_bytes = true;
      for (unsigned char b : piece) all_bytes = all_bytes && (*byte_ids_)[b] >= 0;
      if (all_bytes) {
        for (unsigned char b : piece) out.push_back((*byte_ids_)[b]);
      } else if (unk >= 0) {
        out.push_back(unk);
      }
    }
  }

 private:
  const TokenMap* vocab_;
  const std::vector<float>* scores_;
  const std::array<int32_t, 256>* byte_ids_;
};

}  // namespace mil::text
