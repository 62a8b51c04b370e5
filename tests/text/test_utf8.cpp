// UTF-8 decoding, validation and repair (include/mil/text/utf8.hpp).
#include <doctest/doctest.h>

#include <string>

#include "mil/text/utf8.hpp"

using namespace mil::text;

namespace {
const std::string kFFFD = "\xEF\xBF\xBD";
}

TEST_CASE("utf8: decodes well-formed sequences of every length") {
  const std::string s = "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";  // A é € 😀
  const auto cps = decode_utf8(s);
  REQUIRE(cps.size() == 4);
  CHECK(cps[0] == U'A');
  CHECK(cps[1] == 0xE9);
  CHECK(cps[2] == 0x20AC);
  CHECK(cps[3] == 0x1F600);
  CHECK(is_valid_utf8(s));
  CHECK(is_valid_utf8(""));
  CHECK(is_valid_utf8(std::string("\0", 1)));
  // The boundaries of the ranges.
  CHECK(is_valid_utf8("\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80\xF4\x8F\xBF\xBF"));
  CHECK(decode_utf8("\xF4\x8F\xBF\xBF")[0] == 0x10FFFF);
  CHECK(decode_utf8("\xED\x9F\xBF")[0] == 0xD7FF);
  CHECK(decode_utf8("\xEE\x80\x80")[0] == 0xE000);
}

TEST_CASE("utf8: rejects overlong forms") {
  CHECK_FALSE(is_valid_utf8("\xC0\xAF"));          // '/' in two bytes
  CHECK_FALSE(is_valid_utf8("\xC1\xBF"));
  CHECK_FALSE(is_valid_utf8("\xE0\x80\xAF"));      // three bytes
  CHECK_FALSE(is_valid_utf8("\xE0\x9F\xBF"));
  CHECK_FALSE(is_valid_utf8("\xF0\x80\x80\xAF"));  // four bytes
  CHECK_FALSE(is_valid_utf8("\xF0\x8F\xBF\xBF"));
  // C0 can never start a sequence, and 80 may not follow E0: every byte is its own subpart.
  CHECK(sanitize_utf8("\xC0\xAF") == kFFFD + kFFFD);
  CHECK(sanitize_utf8("\xE0\x80\xAF") == kFFFD + kFFFD + kFFFD);
}

TEST_CASE("utf8: rejects surrogates and code points above U+10FFFF") {
  CHECK_FALSE(is_valid_utf8("\xED\xA0\x80"));  // U+D800
  CHECK_FALSE(is_valid_utf8("\xED\xBF\xBF"));  // U+DFFF
  CHECK_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // U+110000
  CHECK_FALSE(is_valid_utf8("\xF5\x80\x80\x80"));
  CHECK_FALSE(is_valid_utf8("\xF8\x88\x80\x80\x80"));  // old 5-byte form
  CHECK_FALSE(is_valid_utf8("\xFE"));
  CHECK_FALSE(is_valid_utf8("\xFF"));
  CHECK(sanitize_utf8("\xED\xA0\x80") == kFFFD + kFFFD + kFFFD);
  CHECK(sanitize_utf8("\xF4\x90\x80\x80") == kFFFD + kFFFD + kFFFD + kFFFD);
  std::string s;
  append_utf8(s, 0xD800);
  append_utf8(s, 0x110000);
  CHECK(s == kFFFD + kFFFD);
}

TEST_CASE("utf8: truncated sequences and stray continuation bytes") {
  CHECK_FALSE(is_valid_utf8("\xC3"));
  CHECK_FALSE(is_valid_utf8("\xE2\x82"));
  CHECK_FALSE(is_valid_utf8("\xF0\x9F\x98"));
  CHECK_FALSE(is_valid_utf8("\x80"));
  CHECK_FALSE(is_valid_utf8("a\xBF" "b"));
  // A truncated well-formed prefix is one maximal subpart: one U+FFFD.
  CHECK(sanitize_utf8("\xF0\x9F\x98") == kFFFD);
  CHECK(sanitize_utf8("x\xE2\x82y") == "x" + kFFFD + "y");
  CHECK(sanitize_utf8("\xC3(") == kFFFD + "(");
  CHECK(sanitize_utf8("\x80\x80\x80") == kFFFD + kFFFD + kFFFD);
  const Utf8Step st = utf8_decode_one("\xF0\x9F\x98");
  CHECK_FALSE(st.valid);
  CHECK(st.truncated);
  CHECK(st.length == 3);
  const Utf8Step bad = utf8_decode_one("\xF0\x9F(");
  CHECK_FALSE(bad.truncated);
  CHECK(bad.length == 2);
}

TEST_CASE("utf8: repair leaves valid text unchanged and offsets track bytes") {
  const std::string s = "h\xC3\xA9llo \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x8E\x89";
  CHECK(sanitize_utf8(s) == s);
  std::vector<size_t> off;
  const auto cps = decode_utf8(s, &off);
  REQUIRE(off.size() == cps.size() + 1);
  CHECK(off[1] == 1);
  CHECK(off[2] == 3);
  CHECK(off.back() == s.size());
}

TEST_CASE("utf8: incomplete tail length for streaming") {
  CHECK(utf8_incomplete_tail("") == 0);
  CHECK(utf8_incomplete_tail("abc") == 0);
  CHECK(utf8_incomplete_tail("a\xF0") == 1);
  CHECK(utf8_incomplete_tail("a\xF0\x9F") == 2);
  CHECK(utf8_incomplete_tail("a\xF0\x9F\x98") == 3);
  CHECK(utf8_incomplete_tail("a\xF0\x9F\x98\x80") == 0);
  CHECK(utf8_incomplete_tail("a\xE2\x82") == 2);
  CHECK(utf8_incomplete_tail("a\xE0\x80") == 0);  // already ill-formed: nothing to wait for
  CHECK(utf8_incomplete_tail("a\x80\x80") == 0);
  CHECK(utf8_incomplete_tail("\xFF") == 0);
}
