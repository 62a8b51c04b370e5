#pragma once
// Strict UTF-8 (RFC 3629 / Unicode Table 3-7): no overlong forms, no surrogates, nothing above
// U+10FFFF. Ill-formed input is repaired by replacing each "maximal subpart" of an ill-formed
// sequence with one U+FFFD, the practice Unicode recommends and Python's
// bytes.decode("utf-8", "replace") follows, so a repaired string is the same in both.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mil::text {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// One step of decoding. `length` bytes were consumed (>= 1 when any input was left);
// `valid` is false for an ill-formed sequence (then code_point is U+FFFD), and `truncated` is
// true when the sequence was cut off by the end of the input but could still become valid.
struct Utf8Step {
  char32_t code_point = kReplacementChar;
  int length = 0;
  bool valid = false;
  bool truncated = false;
};

// Decodes the sequence at the start of s (s non-empty).
inline Utf8Step utf8_decode_one(std::string_view s) {
  Utf8Step r;
  if (s.empty()) return r;
  const auto b0 = static_cast<unsigned char>(s[0]);
  r.length = 1;
  if (b0 < 0x80) return {b0, 1, true, false};
  int need;
  char32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) { need = 1; cp = b0 & 0x1F; }
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2; cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;        // overlong
    else if (b0 == 0xED) hi = 0x9F;   // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3; cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;        // overlong
    else if (b0 == 0xF4) hi = 0x8F;   // above U+10FFFF
  } else {
    return r;  // stray continuation byte, C0/C1 (always overlong) or F5..FF
  }
  for (int i = 1; i <= need; ++i) {
    if (static_cast<size_t>(i) >= s.size()) {  // input ends inside a well-formed prefix
      r.length = i;
      r.truncated = true;
      return r;
    }
    const auto b = static_cast<unsigned char>(s[i]);
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) {
      r.length = i;  // the maximal subpart ends before this byte
      return r;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, need + 1, true, false};
}

inline bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const Utf8Step st = utf8_decode_one(s.substr(i));
    if (!st.valid) return false;
    i += st.length;
  }
  return true;
}

// Appends the UTF-8 encoding of cp (a surrogate or a value above U+10FFFF appends U+FFFD).
inline void append_utf8(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacementChar;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

inline std::string to_utf8(char32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

// s with every maximal subpart of an ill-formed sequence replaced by U+FFFD (valid input is
// returned unchanged).
inline std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const Utf8Step st = utf8_decode_one(s.substr(i));
    if (st.valid) out.append(s.substr(i, st.length));
    else append_utf8(out, kReplacementChar);
    i += st.length;
  }
  return out;
}

// The code points of s (ill-formed parts become U+FFFD) and, when offsets is given, the byte
// offset in s where each starts, plus s.size() at the end.
inline std::vector<char32_t> decode_utf8(std::string_view s, std::vector<size_t>* offsets = nullptr) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  if (offsets) offsets->clear();
  for (size_t i = 0; i < s.size();) {
    const Utf8Step st = utf8_decode_one(s.substr(i));
    if (offsets) offsets->push_back(i);
    cps.push_back(st.valid ? st.code_point : kReplacementChar);
    i += st.length;
  }
  if (offsets) offsets->push_back(s.size());
  return cps;
}

// Length of the tail of s that is a well-formed but incomplete sequence (0 when s ends on a
// sequence boundary or with ill-formed bytes): a streaming decoder holds these bytes back.
inline size_t utf8_incomplete_tail(std::string_view s) {
  // The last lead byte among the final 3 bytes starts the only candidate sequence.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t i = s.size() - back;
    const auto b = static_cast<unsigned char>(s[i]);
    if ((b & 0xC0) == 0x80) continue;
    return utf8_decode_one(s.substr(i)).truncated ? back : 0;
  }
  return 0;
}

}  // namespace mil::text
