#pragma once
// Pre-tokenizers: split text into words before BPE, written by hand as the left-to-right,
// first-alternative-wins matchers of these regular expressions (no std::regex: it is slow and
// knows no Unicode classes):
//   gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm: every \p{N} split off on its own first (HF Digits(individual_digits=true)), then gpt2
//           on each piece
//   llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//           | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2:  llama3 with \p{N} (one digit per word)
// \s is the Unicode White_Space property; \p{L}, \p{N} come from unicode_tables.hpp. The
// case-insensitive contractions of llama3 fold ASCII letters only.
#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mil/core/error.hpp"
#include "mil/text/unicode_tables.hpp"
#include "mil/text/utf8.hpp"

namespace mil::text {

namespace detail {
template <size_t N>
inline bool in_ranges(const tables::CodePointRange (&rs)[N], char32_t cp) {
  const auto it = std::upper_bound(std::begin(rs), std::end(rs), static_cast<uint32_t>(cp),
                                   [](uint32_t v, const tables::CodePointRange& r) { return v < r.lo; });
  return it != std::begin(rs) && cp <= std::prev(it)->hi;
}
}  // namespace detail

inline bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return detail::in_ranges(tables::kLetters, cp);
}
inline bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return detail::in_ranges(tables::kNumbers, cp);
}
// Unicode White_Space (what \s matches in the Unicode-aware engines these patterns come from).
inline bool is_whitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

enum class PreTokenizer { Gpt2, SmolLM, Llama3, Qwen2 };

// "gpt2" (also "default", ""), "smollm", "llama3" / "llama-bpe", "qwen2".
inline PreTokenizer parse_pretokenizer(std::string_view name) {
  if (name == "gpt2" || name == "default" || name.empty()) return PreTokenizer::Gpt2;
  if (name == "smollm") return PreTokenizer::SmolLM;
  if (name == "llama3" || name == "llama-bpe") return PreTokenizer::Llama3;
  if (name == "qwen2") return PreTokenizer::Qwen2;
  MIL_FAIL("tokenizer: unsupported pre-tokenizer '", std::string(name),
           "' (supported: gpt2, smollm, llama3, llama-bpe, qwen2)");
}

namespace detail {

using Span = std::pair<size_t, size_t>;  // [begin, end) in code points

inline bool is_other(char32_t c) { return !is_whitespace(c) && !is_letter(c) && !is_number(c); }

// Length of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
inline size_t contraction(const char32_t* s, size_t i, size_t n, bool fold_case) {
  if (s[i] != U'\'' || i + 1 >= n) return 0;
  auto low = [&](size_t k) -> char32_t {
    const char32_t c = s[k];
    return fold_case && c >= 'A' && c <= 'Z' ? c + 32 : c;
  };
  const char32_t a = low(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < n) {
    const char32_t b = low(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

template <class Pred>
inline size_t run_end(const char32_t* s, size_t i, size_t n, Pred pred) {
  while (i < n && pred(s[i])) ++i;
  return i;
}

// \s+(?!\S)|\s+ at a whitespace code point i.
inline size_t whitespace_tail(const char32_t* s, size_t i, size_t n) {
  const size_t j = run_end(s, i, n, is_whitespace);
  if (j == n || j - i == 1) return j;  // all of it at the end; a single one falls to \s+
  return j - 1;                         // leave the last one to prefix the next word
}

inline void split_gpt2(const char32_t* s, size_t begin, size_t end, std::vector<Span>& out) {
  for (size_t i = begin; i < end;) {
    size_t j;
    const char32_t c = s[i];
    const bool space_then = c == U' ' && i + 1 < end;
    if (size_t k = contraction(s, i, end, false)) j = i + k;
    else if (is_letter(c) || (space_then && is_letter(s[i + 1]))) j = run_end(s, i + 1, end, is_letter);
    else if (is_number(c) || (space_then && is_number(s[i + 1]))) j = run_end(s, i + 1, end, is_number);
    else if (is_other(c) || (space_then && is_other(s[i + 1]))) j = run_end(s, i + 1, end, is_other);
    else j = whitespace_tail(s, i, end);
    out.emplace_back(i, j);
    i = j;
  }
}

inline void split_llama3(const char32_t* s, size_t begin, size_t end, size_t max_digits,
                         std::vector<Span>& out) {
  auto is_newline = [](char32_t c) { return c == U'\r' || c == U'\n'; };
  for (size_t i = begin; i < end;) {
    size_t j = 0;
    const char32_t c = s[i];
    const bool has_next = i + 1 < end;
    if (size_t k = contraction(s, i, end, true)) {
      j = i + k;
    } else if (is_letter(c) || (has_next && !is_newline(c) && !is_number(c) && is_letter(s[i + 1]))) {
      j = run_end(s, i + 1, end, is_letter);
    } else if (is_number(c)) {
      j = i + 1;
      while (j < end && j - i < max_digits && is_number(s[j])) ++j;
    } else if (is_other(c) || (c == U' ' && has_next && is_other(s[i + 1]))) {
      j = run_end(s, i + 1, end, is_other);
      j = run_end(s, j, end, is_newline);
    } else {
      // c is whitespace: \s*[\r\n]+ (up to the last newline of the run), else \s+(?!\S), \s+
      const size_t run = run_end(s, i, end, is_whitespace);
      size_t last_newline = run;
      for (size_t k = run; k > i; --k)
        if (is_newline(s[k - 1])) { last_newline = k - 1; break; }
      j = last_newline < run ? last_newline + 1 : whitespace_tail(s, i, end);
    }
    out.emplace_back(i, j);
    i = j;
  }
}

}  // namespace detail

// The words of cps[0, n) as [begin, end) code-point spans, in order, covering the input.
inline std::vector<std::pair<size_t, size_t>> pretokenize_spans(const char32_t* cps, size_t n,
                                                                 PreTokenizer kind) {
  std::vector<detail::Span> out;
  switch (kind) {
    case PreTokenizer::Gpt2: detail::split_gpt2(cps, 0, n, out); break;
    case PreTokenizer::SmolLM: {
      size_t start = 0;
      for (size_t i = 0; i < n; ++i) {
        if (!is_number(cps[i])) continue;
        detail::split_gpt2(cps, start, i, out);
        out.emplace_back(i, i + 1);
        start = i + 1;
      }
      detail::split_gpt2(cps, start, n, out);
      break;
    }
    case PreTokenizer::Llama3: detail::split_llama3(cps, 0, n, 3, out); break;
    case PreTokenizer::Qwen2: detail::split_llama3(cps, 0, n, 1, out); break;
  }
  return out;
}

// The words of a UTF-8 string (ill-formed parts become U+FFFD first).
inline std::vector<std::string> pretokenize(std::string_view text, PreTokenizer kind) {
  std::vector<size_t> offsets;
  const std::string clean = sanitize_utf8(text);
  const std::vector<char32_t> cps = decode_utf8(clean, &offsets);
  std::vector<std::string> words;
  for (const auto& [b, e] : pretokenize_spans(cps.data(), cps.size(), kind))
    words.emplace_back(clean.substr(offsets[b], offsets[e] - offsets[b]));
  return words;
}

}  // namespace mil::text
