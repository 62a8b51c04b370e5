// Pre-tokenizers, byte-level and SentencePiece BPE on tiny hand-made vocabularies, special
// tokens, byte fallback, streaming decode, robustness and TokenizerData validation.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mil/text/tokenizer.hpp"

using namespace mil::text;

namespace {

struct SplitCase {
  PreTokenizer kind;
  const char* text;
  std::vector<std::string> words;
};

// Expected splits made with HF tokenizers 0.23.3 (pre_tokenizers.Split(Regex(pattern),
// "isolated"), Digits(individual_digits=True) first for SmolLM) over the patterns in
// pretokenize.hpp.
const std::vector<SplitCase>& split_cases() {
  static const std::vector<SplitCase> cases = {
    {PreTokenizer::Gpt2, "Hello world", {"Hello", " world"}},
    {PreTokenizer::Gpt2, "I'm can't WE'RE they'LL 'sup", {"I", "'m", " can", "'t", " WE", "'", "RE", " they", "'", "LL", " '", "sup"}},
    {PreTokenizer::Gpt2, "  lead and trail  ", {" ", " lead", " and", " trail", "  "}},
    {PreTokenizer::Gpt2, "a\n\n\nb", {"a", "\n\n", "\n", "b"}},
    {PreTokenizer::Gpt2, "x \n\n  y", {"x", " \n\n ", " y"}},
    {PreTokenizer::Gpt2, "12345 67", {"12345", " 67"}},
    {PreTokenizer::Gpt2, " 1x2", {" 1", "x", "2"}},
    {PreTokenizer::Gpt2, "\t\tTab\r\n\r\nCR", {"\t", "\t", "Tab", "\r\n\r", "\n", "CR"}},
    {PreTokenizer::Gpt2, "😀 emoji😀!", {"😀", " emoji", "😀!"}},
    {PreTokenizer::Gpt2, "你好世界 中文", {"你好世界", " 中文"}},
    {PreTokenizer::Gpt2, "naïve Ωmega Привет123", {"naïve", " Ωmega", " Привет", "123"}},
    {PreTokenizer::Gpt2, "?!... ;)", {"?!...", " ;)"}},
    {PreTokenizer::Gpt2, "a  \t b", {"a", "  \t", " b"}},
    {PreTokenizer::Gpt2, "end \n", {"end", " \n"}},
    {PreTokenizer::Gpt2, "'''", {"'''"}},
    {PreTokenizer::Gpt2, "$10.50/kg", {"$", "10", ".", "50", "/", "kg"}},
    {PreTokenizer::Gpt2, "x y　z", {"x", " ", "y", "　", "z"}},
    {PreTokenizer::Gpt2, "٣٤٥ ½", {"٣٤٥", " ½"}},
    {PreTokenizer::SmolLM, "Hello world", {"Hello", " world"}},
    {PreTokenizer::SmolLM, "I'm can't WE'RE they'LL 'sup", {"I", "'m", " can", "'t", " WE", "'", "RE", " they", "'", "LL", " '", "sup"}},
    {PreTokenizer::SmolLM, "  lead and trail  ", {" ", " lead", " and", " trail", "  "}},
    {PreTokenizer::SmolLM, "a\n\n\nb", {"a", "\n\n", "\n", "b"}},
    {PreTokenizer::SmolLM, "x \n\n  y", {"x", " \n\n ", " y"}},
    {PreTokenizer::SmolLM, "12345 67", {"1", "2", "3", "4", "5", " ", "6", "7"}},
    {PreTokenizer::SmolLM, " 1x2", {" ", "1", "x", "2"}},
    {PreTokenizer::SmolLM, "\t\tTab\r\n\r\nCR", {"\t", "\t", "Tab", "\r\n\r", "\n", "CR"}},
    {PreTokenizer::SmolLM, "😀 emoji😀!", {"😀", " emoji", "😀!"}},
    {PreTokenizer::SmolLM, "你好世界 中文", {"你好世界", " 中文"}},
    {PreTokenizer::SmolLM, "naïve Ωmega Привет123", {"naïve", " Ωmega", " Привет", "1", "2", "3"}},
    {PreTokenizer::SmolLM, "?!... ;)", {"?!...", " ;)"}},
    {PreTokenizer::SmolLM, "a  \t b", {"a", "  \t", " b"}},
    {PreTokenizer::SmolLM, "end \n", {"end", " \n"}},
    {PreTokenizer::SmolLM, "'''", {"'''"}},
    {PreTokenizer::SmolLM, "$10.50/kg", {"$", "1", "0", ".", "5", "0", "/", "kg"}},
    {PreTokenizer::SmolLM, "x y　z", {"x", " ", "y", "　", "z"}},
    {PreTokenizer::SmolLM, "٣٤٥ ½", {"٣", "٤", "٥", " ", "½"}},
    {PreTokenizer::Llama3, "Hello world", {"Hello", " world"}},
    {PreTokenizer::Llama3, "I'm can't WE'RE they'LL 'sup", {"I", "'m", " can", "'t", " WE", "'RE", " they", "'LL", " '", "sup"}},
    {PreTokenizer::Llama3, "  lead and trail  ", {" ", " lead", " and", " trail", "  "}},
    {PreTokenizer::Llama3, "a\n\n\nb", {"a", "\n\n\n", "b"}},
    {PreTokenizer::Llama3, "x \n\n  y", {"x", " \n\n", " ", " y"}},
    {PreTokenizer::Llama3, "12345 67", {"123", "45", " ", "67"}},
    {PreTokenizer::Llama3, " 1x2", {" ", "1", "x", "2"}},
    {PreTokenizer::Llama3, "\t\tTab\r\n\r\nCR", {"\t", "\tTab", "\r\n\r\n", "CR"}},
    {PreTokenizer::Llama3, "😀 emoji😀!", {"😀", " emoji", "😀!"}},
    {PreTokenizer::Llama3, "你好世界 中文", {"你好世界", " 中文"}},
    {PreTokenizer::Llama3, "naïve Ωmega Привет123", {"naïve", " Ωmega", " Привет", "123"}},
    {PreTokenizer::Llama3, "?!... ;)", {"?!...", " ;)"}},
    {PreTokenizer::Llama3, "a  \t b", {"a", "  \t", " b"}},
    {PreTokenizer::Llama3, "end \n", {"end", " \n"}},
    {PreTokenizer::Llama3, "'''", {"'''"}},
    {PreTokenizer::Llama3, "$10.50/kg", {"$", "10", ".", "50", "/kg"}},
    {PreTokenizer::Llama3, "x y　z", {"x", " y", "　z"}},
    {PreTokenizer::Llama3, "٣٤٥ ½", {"٣٤٥", " ", "½"}},
    {PreTokenizer::Qwen2, "Hello world", {"Hello", " world"}},
    {PreTokenizer::Qwen2, "I'm can't WE'RE they'LL 'sup", {"I", "'m", " can", "'t", " WE", "'RE", " they", "'LL", " '", "sup"}},
    {PreTokenizer::Qwen2, "  lead and trail  ", {" ", " lead", " and", " trail", "  "}},
    {PreTokenizer::Qwen2, "a\n\n\nb", {"a", "\n\n\n", "b"}},
    {PreTokenizer::Qwen2, "x \n\n  y", {"x", " \n\n", " ", " y"}},
    {PreTokenizer::Qwen2, "12345 67", {"1", "2", "3", "4", "5", " ", "6", "7"}},
    {PreTokenizer::Qwen2, " 1x2", {" ", "1", "x", "2"}},
    {PreTokenizer::Qwen2, "\t\tTab\r\n\r\nCR", {"\t", "\tTab", "\r\n\r\n", "CR"}},
    {PreTokenizer::Qwen2, "😀 emoji😀!", {"😀", " emoji", "😀!"}},
    {PreTokenizer::Qwen2, "你好世界 中文", {"你好世界", " 中文"}},
    {PreTokenizer::Qwen2, "naïve Ωmega Привет123", {"naïve", " Ωmega", " Привет", "1", "2", "3"}},
    {PreTokenizer::Qwen2, "?!... ;)", {"?!...", " ;)"}},
    {PreTokenizer::Qwen2, "a  \t b", {"a", "  \t", " b"}},
    {PreTokenizer::Qwen2, "end \n", {"end", " \n"}},
    {PreTokenizer::Qwen2, "'''", {"'''"}},
    {PreTokenizer::Qwen2, "$10.50/kg", {"$", "1", "0", ".", "5", "0", "/kg"}},
    {PreTokenizer::Qwen2, "x y　z", {"x", " y", "　z"}},
    {PreTokenizer::Qwen2, "٣٤٥ ½", {"٣", "٤", "٥", " ", "½"}},
  };
  return cases;
}

// A byte-level BPE vocabulary: the 256 mapped bytes, then the merge results, then specials.
TokenizerData tiny_byte_level() {
  TokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt2";
  for (int b = 0; b < 256; ++b) d.tokens.push_back(to_utf8(byte_to_unicode()[b]));
  d.merges = {"a b", "ab c", "\xC4\xA0 a", "b c", "a a", "aa aa", "_ _", "__ __"};
  for (const char* t : {"ab", "abc", "\xC4\xA0" "a", "bc", "aa", "aaaa", "__", "____"}) d.tokens.push_back(t);
  d.tokens.push_back("<|im_start|>");  // control
  d.tokens.push_back("<|im_end|>");    // control
  d.tokens.push_back("<|im_start|>!");  // user-defined, longer
  d.token_types.assign(d.tokens.size(), kTokenNormal);
  const auto n = static_cast<int32_t>(d.tokens.size());
  d.token_types[n - 3] = kTokenControl;
  d.token_types[n - 2] = kTokenControl;
  d.token_types[n - 1] = kTokenUserDefined;
  d.bos = n - 3;
  d.eos = n - 2;
  return d;
}

// A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then scored pieces.
TokenizerData tiny_sentencepiece() {
  TokenizerData d;
  d.model = "llama";
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.token_types = {kTokenUnknown, kTokenControl, kTokenControl};
  d.scores = {0, 0, 0};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    d.tokens.push_back(buf);
    d.token_types.push_back(kTokenByte);
    d.scores.push_back(0);
  }
  const std::pair<const char*, float> pieces[] = {
      {"\xE2\x96\x81", -1}, {"a", -4}, {"b", -4}, {"c", -4}, {"\xE2\x96\x81" "a", -3},
      {"ab", -2}, {"abc", -5}, {"\xE2\x96\x81\xE2\x96\x81", -6}, {"_", -4}, {"__", -1}};
  for (const auto& [p, s] : pieces) {
    d.tokens.push_back(p);
    d.token_types.push_back(kTokenNormal);
    d.scores.push_back(s);
  }
  d.unk = 0;
  d.bos = 1;
  d.eos = 2;
  d.add_bos = true;
  return d;
}

int32_t id_of(const Tokenizer& t, const std::string& s) {
  const int32_t id = t.token_id(s);
  REQUIRE_MESSAGE(id >= 0, "no token '", s, "'");
  return id;
}

// Random strings over an alphabet with ASCII, whitespace, multi-byte letters, digits and emoji.
std::vector<std::string> random_strings(int count, uint32_t seed) {
  static const char* const alphabet[] = {
      "a", "b", "c", "_", "z", "Q", " ", "  ", "\n", "\t", "\r\n", "'s", "'", "0", "7", "42", ".",
      ",", "!", "<", "|", ">", "<|im_start|>", "<|im_end|>", "\xC3\xA9", "\xC3\x9F",
      "\xE4\xBD\xA0", "\xE5\xA5\xBD", "\xF0\x9F\x98\x80", "\xF0\x9F\x8E\x89", "\xD0\x96",
      "\xD9\xA3", "\xC2\xA0", "\xE3\x80\x80", "\xE2\x80\x8B"};
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) {
    std::string s;
    const int n = static_cast<int>(rng() % 30);
    for (int k = 0; k < n; ++k) s += alphabet[rng() % std::size(alphabet)];
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_CASE("tokenizer: pre-tokenizers split like the reference regexes") {
  for (const auto& c : split_cases()) {
    CAPTURE(c.text);
    CAPTURE(static_cast<int>(c.kind));
    CHECK(pretokenize(c.text, c.kind) == c.words);
  }
}

TEST_CASE("tokenizer: pre-tokenizer names and unicode classes") {
  CHECK(parse_pretokenizer("llama-bpe") == PreTokenizer::Llama3);
  CHECK(parse_pretokenizer("smollm") == PreTokenizer::SmolLM);
  CHECK_THROWS_AS(parse_pretokenizer("bloom"), mil::Error);
  CHECK(is_letter(U'\u00E9'));
  CHECK(is_letter(U'\u4F60'));
  CHECK(is_letter(U'\u0416'));
  CHECK_FALSE(is_letter(U'\U0001F600'));
  CHECK(is_number(U'\u0663'));  // Arabic-Indic three
  CHECK(is_number(U'\u00BD'));  // vulgar fraction one half (No)
  CHECK(is_number(U'\u216B'));  // Roman numeral twelve (Nl)
  CHECK(is_whitespace(U'\u3000'));
  CHECK(is_whitespace(U'\u0085'));
  CHECK_FALSE(is_whitespace(U'\u200B'));  // zero width space is not White_Space
  // Every word is non-empty and the words cover the input exactly.
  for (const auto& s : random_strings(200, 7))
    for (auto kind : {PreTokenizer::Gpt2, PreTokenizer::SmolLM, PreTokenizer::Llama3, PreTokenizer::Qwen2}) {
      std::string joined;
      for (const auto& w : pretokenize(s, kind)) {
        CHECK_FALSE(w.empty());
        joined += w;
      }
      CHECK(joined == s);
    }
}

TEST_CASE("tokenizer: byte-level BPE applies merges in rank order") {
  const Tokenizer t(tiny_byte_level());
  const int32_t ab = id_of(t, "ab"), abc = id_of(t, "abc"), bc = id_of(t, "bc");
  const int32_t sp = id_of(t, "\xC4\xA0"), a = id_of(t, "a"), c = id_of(t, "c"), aa = id_of(t, "aa");
  CHECK(t.encode("abc") == std::vector<int32_t>{abc});
  CHECK(t.encode("bcab") == std::vector<int32_t>{bc, ab});  // "a b" (rank 0) before "b c" (rank 3)
  // " abc": "a b" outranks "Ġ a", then "ab c": Ġ abc, not Ġa bc.
  CHECK(t.encode(" abc") == std::vector<int32_t>{sp, abc});
  CHECK(t.encode("ac") == std::vector<int32_t>{a, c});
  CHECK(t.encode("aaa") == std::vector<int32_t>{aa, a});  // ties go to the leftmost pair
  CHECK(t.encode("aaaaa") == std::vector<int32_t>{id_of(t, "aaaa"), a});
  CHECK(t.encode("") == std::vector<int32_t>{});
  // Words never merge across a pre-tokenizer boundary: "a" and " a" are two words.
  CHECK(t.encode("a a") == std::vector<int32_t>{a, id_of(t, "\xC4\xA0" "a")});
  // Multi-byte text falls to single byte tokens, and decodes back.
  const auto e = t.encode("\xC3\xA9");
  REQUIRE(e.size() == 2);
  CHECK(e == std::vector<int32_t>{0xC3, 0xA9});  // token b of the tiny vocabulary is byte b
  CHECK(t.decode(e) == "\xC3\xA9");
  CHECK(t.token_to_piece(sp) == " ");
  CHECK(t.decode(t.encode(" abc bcab")) == " abc bcab");
}

TEST_CASE("tokenizer: special tokens are matched longest first when parsed") {
  const Tokenizer t(tiny_byte_level());
  const int32_t start = id_of(t, "<|im_start|>"), end = id_of(t, "<|im_end|>");
  const int32_t start_bang = id_of(t, "<|im_start|>!");
  CHECK(t.encode("<|im_start|>abc<|im_end|>") == std::vector<int32_t>{start, id_of(t, "abc"), end});
  CHECK(t.encode("<|im_start|>!abc") == std::vector<int32_t>{start_bang, id_of(t, "abc")});
  CHECK(t.encode("<|im_start|><|im_start|>") == std::vector<int32_t>{start, start});
  CHECK(t.encode("<|im_start") .size() > 1);  // an unfinished marker is plain text
  // Not parsed: plain text, never a special id.
  const auto plain = t.encode("<|im_start|>abc", false, false);
  for (int32_t id : plain) CHECK(id != start);
  CHECK(t.decode(plain) == "<|im_start|>abc");
  CHECK(t.decode(t.encode("x<|im_end|>y")) == "x<|im_end|>y");
  // BOS on request; control tokens are left out of the text when render_special is false.
  const auto with_bos = t.encode("ab", true);
  REQUIRE(with_bos.size() == 2);
  CHECK(with_bos[0] == t.bos());
  CHECK(t.decode(with_bos) == "<|im_start|>ab");
  CHECK(t.decode(with_bos, false) == "ab");
}

TEST_CASE("tokenizer: sentencepiece BPE merges by score with a dummy prefix") {
  const Tokenizer t(tiny_sentencepiece());
  const int32_t space = id_of(t, "\xE2\x96\x81"), abc = id_of(t, "abc"), sa = id_of(t, "\xE2\x96\x81" "a");
  const int32_t b = id_of(t, "b"), c = id_of(t, "c");
  // ▁ a b c: "ab" (-2) beats "▁a" (-3); then "abc" (-5); "▁abc" is not a piece.
  CHECK(t.encode("abc") == std::vector<int32_t>{space, abc});
  // ▁ a c b: only "▁a".
  CHECK(t.encode("acb") == std::vector<int32_t>{sa, c, b});
  CHECK(t.encode("abc", true) == std::vector<int32_t>{t.bos(), space, abc});
  // "__" (-1) merges before anything else; "▁▁" (-6).
  CHECK(t.encode("___") == std::vector<int32_t>{space, id_of(t, "__"), id_of(t, "_")});
  CHECK(t.encode("  a") == std::vector<int32_t>{id_of(t, "\xE2\x96\x81\xE2\x96\x81"), sa});
  CHECK(t.decode(t.encode("abc")) == "abc");
  CHECK(t.decode(t.encode("abc", true)) == "<s>abc");
  CHECK(t.decode(t.encode("abc", true), false) == "abc");
  CHECK(t.decode(t.encode(" a b  c ")) == " a b  c ");
  // Control tokens before the first text: the dummy prefix still goes to that text.
  CHECK(t.encode("<s>abc") == std::vector<int32_t>{t.bos(), space, abc});
  CHECK(t.decode(t.encode("<s> yo")) == "<s> yo");
  CHECK(t.decode(t.encode("<s></s>ab", true)) == "<s><s></s>ab");
}

TEST_CASE("tokenizer: sentencepiece byte fallback and unknown pieces") {
  const Tokenizer t(tiny_sentencepiece());
  // "é" is not a piece: its two bytes.
  CHECK(t.encode("\xC3\xA9") ==
        std::vector<int32_t>{id_of(t, "\xE2\x96\x81"), id_of(t, "<0xC3>"), id_of(t, "<0xA9>")});
  CHECK(t.decode(t.encode("a\xF0\x9F\x98\x80" "b")) == "a\xF0\x9F\x98\x80" "b");
  CHECK(t.token_to_piece(id_of(t, "<0x41>")) == "A");
  // Without byte tokens, an unknown code point becomes one <unk>.
  TokenizerData d = tiny_sentencepiece();
  for (auto& ty : d.token_types)
    if (ty == kTokenByte) ty = kTokenUnused;
  const Tokenizer no_bytes(d);
  CHECK(no_bytes.encode("\xC3\xA9" "a") == std::vector<int32_t>{id_of(t, "\xE2\x96\x81"), 0, id_of(t, "a")});
}

TEST_CASE("tokenizer: byte tokens forming invalid UTF-8 decode to U+FFFD") {
  const Tokenizer t(tiny_sentencepiece());
  const std::vector<int32_t> ids = {id_of(t, "a"), id_of(t, "<0xF0>"), id_of(t, "<0x9F>"), id_of(t, "b")};
  CHECK(t.decode_bytes(ids) == "a\xF0\x9F" "b");
  CHECK(t.decode(ids) == "a\xEF\xBF\xBD" "b");
  const Tokenizer bl(tiny_byte_level());
  const std::vector<int32_t> lone = {bl.token_id(to_utf8(byte_to_unicode()[0xFF]))};
  CHECK(bl.decode_bytes(lone) == "\xFF");
  CHECK(bl.decode(lone) == "\xEF\xBF\xBD");
  CHECK_THROWS_AS(t.decode(std::vector<int32_t>{-1}), mil::Error);
  CHECK_THROWS_AS(t.decode(std::vector<int32_t>{t.vocab_size()}), mil::Error);
}

TEST_CASE("tokenizer: streaming decode holds back a split emoji") {
  for (const Tokenizer& t : {Tokenizer(tiny_byte_level()), Tokenizer(tiny_sentencepiece())}) {
    const std::string text = "ab\xF0\x9F\x98\x80\xF0\x9F\x8E\x89 c\xC3\xA9";
    const auto ids = t.encode(text);
    StreamingDecoder dec(t);
    std::string out;
    int empty_pushes = 0;
    for (int32_t id : ids) {
      const std::string piece = dec.push(id);
      CHECK(is_valid_utf8(piece));
      empty_pushes += piece.empty();
      out += piece;
    }
    out += dec.flush();
    CHECK(out == text);
    CHECK(empty_pushes >= 3);  // the first bytes of 😀 came out only with its last byte
  }
  // An unfinished sequence at the end becomes U+FFFD on flush, as in decode().
  const Tokenizer t(tiny_sentencepiece());
  StreamingDecoder dec(t);
  CHECK(dec.push(id_of(t, "a")) == "a");
  CHECK(dec.push(id_of(t, "<0xF0>")).empty());
  CHECK(dec.push(id_of(t, "<0x9F>")).empty());
  CHECK(dec.push(id_of(t, "<0x41>")) == "\xEF\xBF\xBD" "A");
  CHECK(dec.push(id_of(t, "<0xE2>")).empty());
  CHECK(dec.flush() == "\xEF\xBF\xBD");
}

TEST_CASE("tokenizer: invalid UTF-8 input never throws") {
  const Tokenizer bl(tiny_byte_level());
  const Tokenizer sp(tiny_sentencepiece());
  std::mt19937 rng(99);
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 40, '\0');
    for (auto& ch : s) ch = static_cast<char>(rng());
    const std::string clean = sanitize_utf8(s);
    for (const Tokenizer* t : {&bl, &sp}) {
      std::vector<int32_t> ids;
      CHECK_NOTHROW(ids = t->encode(s, i % 2 == 0, i % 3 != 0));
      if (i % 2 == 0 && !ids.empty()) ids.erase(ids.begin());
      CHECK(t->decode(ids) == clean);  // invalid sequences became U+FFFD, the rest round-trips
    }
  }
  CHECK(bl.decode(bl.encode("a\xC0\xAF" "b")) == "a\xEF\xBF\xBD\xEF\xBF\xBD" "b");
}

TEST_CASE("tokenizer: decode of encode round-trips valid UTF-8") {
  const Tokenizer bl(tiny_byte_level());
  const Tokenizer sp(tiny_sentencepiece());
  for (const auto& s : random_strings(500, 3)) {
    CAPTURE(s);
    CHECK(bl.decode(bl.encode(s)) == s);
    CHECK(bl.decode(bl.encode(s, false, false)) == s);
    CHECK(sp.decode(sp.encode(s)) == s);
    CHECK(sp.decode(sp.encode(s, false, false)) == s);
  }
}

// Long runs of one character are one huge word; their encoding time is measured in
// bench/text/bench_tokenizer.cpp, and the merge loop's work is bounded by the next test.
TEST_CASE("tokenizer: pathological inputs encode and round-trip") {
  const Tokenizer bl(tiny_byte_level());
  const Tokenizer sp(tiny_sentencepiece());
  for (const Tokenizer* t : {&bl, &sp}) {
    for (const std::string& s : {std::string(100000, 'a'), std::string(50000, '_'),
                                 std::string(50000, ' '), std::string(30000, '<'),
                                 std::string(20000, '\xFF')}) {
      const auto ids = t->encode(s);
      CAPTURE(s.size());
      CHECK_FALSE(ids.empty());
      if (s[0] != '\xFF') CHECK(t->decode(ids) == s);
    }
  }
  CHECK(bl.encode(std::string(100000, 'a')).size() == 25000);  // all "aaaa"
}

// The work of the merge loop, counted instead of timed: a word of n symbols costs n - 1 initial
// scores and two per merge (the merged symbol with each new neighbour), so at most 3n; a loop
// that rescored the word after each merge would make about n^2 / 2 calls.
TEST_CASE("tokenizer: the merge loop scores O(n) pairs on a run of one symbol") {
  const int32_t n = 4096;
  for (bool pairs_only : {false, true}) {
    // pairs_only: like "aaaa" in byte-level BPE, a + a and aa + aa merge, longer pieces do not.
    std::vector<int32_t> length(size_t(n), 1);
    int64_t scores = 0, joins = 0;
    const auto score = [&](int32_t l, int32_t r) -> std::optional<double> {
      ++scores;
      if (pairs_only && (length[size_t(l)] != length[size_t(r)] || length[size_t(l)] > 2))
        return std::nullopt;
      return double(length[size_t(l)]);  // short pieces first, ties to the leftmost pair
    };
    const auto join = [&](int32_t l, int32_t r) {
      ++joins;
      length[size_t(l)] += length[size_t(r)];
    };
    const auto survivors = detail::merge_symbols(n, score, join);
    CAPTURE(pairs_only);
    CHECK(survivors.size() == (pairs_only ? size_t(n / 4) : size_t(1)));
    CHECK(joins == n - int64_t(survivors.size()));
    CHECK(scores <= 3 * int64_t(n));
    for (int32_t i : survivors) CHECK(length[size_t(i)] == (pairs_only ? 4 : n));
  }
}

TEST_CASE("tokenizer: invalid tokenizer data is rejected with a clear error") {
  struct Bad {
    const char* what;
    std::function<void(TokenizerData&)> mutate;
    const char* message;
  };
  const std::vector<Bad> bad = {
      {"unknown model", [](TokenizerData& d) { d.model = "wordpiece"; }, "unsupported model"},
      {"unknown pre-tokenizer", [](TokenizerData& d) { d.pre = "falcon"; }, "unsupported pre-tokenizer"},
      {"empty vocabulary", [](TokenizerData& d) { d.tokens.clear(); d.token_types.clear(); }, "vocabulary is empty"},
      {"scores count", [](TokenizerData& d) { d.scores = {1.0f}; }, "scores for"},
      {"types count", [](TokenizerData& d) { d.token_types.pop_back(); }, "token types for"},
      {"NaN score", [](TokenizerData& d) { d.scores.assign(d.tokens.size(), 0.0f); d.scores[3] = NAN; }, "not finite"},
      {"bad type", [](TokenizerData& d) { d.token_types[5] = 7; }, "invalid type 7"},
      {"byte token <0x-1>", [](TokenizerData& d) { d.tokens[5] = "<0x-1>"; d.token_types[5] = kTokenByte; }, "expected <0xHH>"},
      {"byte token <0x1>", [](TokenizerData& d) { d.tokens[5] = "<0x1>"; d.token_types[5] = kTokenByte; }, "expected <0xHH>"},
      {"byte token <0x4G>", [](TokenizerData& d) { d.tokens[5] = "<0x4G>"; d.token_types[5] = kTokenByte; }, "expected <0xHH>"},
      {"duplicate byte", [](TokenizerData& d) {
         d.tokens[5] = "<0x41>"; d.token_types[5] = kTokenByte;
         d.tokens[6] = "<0x41>"; d.token_types[6] = kTokenByte; }, "duplicate"},
      {"bos beyond vocabulary", [](TokenizerData& d) { d.bos = static_cast<int32_t>(d.tokens.size()); }, "bos token id"},
      {"eos negative", [](TokenizerData& d) { d.eos = -5; }, "eos token id"},
      {"unk beyond vocabulary", [](TokenizerData& d) { d.unk = 1 << 30; }, "unk token id"},
      {"pad beyond vocabulary", [](TokenizerData& d) { d.pad = 999999; }, "pad token id"},
      {"no merges", [](TokenizerData& d) { d.merges.clear(); }, "needs merges"},
      {"merge without space", [](TokenizerData& d) { d.merges.push_back("ab"); }, "not of the form"},
      {"merge with empty half", [](TokenizerData& d) { d.merges.push_back("a "); }, "not of the form"},
      {"merge of unknown token", [](TokenizerData& d) { d.merges.push_back("zz q"); }, "not in the vocabulary"},
      {"merge result missing", [](TokenizerData& d) { d.merges.push_back("c a"); }, "makes a token"},
  };
  for (const auto& b : bad) {
    CAPTURE(b.what);
    TokenizerData d = tiny_byte_level();
    b.mutate(d);
    try {
      Tokenizer t(d);
      FAIL("accepted: ", b.what);
    } catch (const mil::Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(b.message) != std::string::npos, e.what());
    }
  }
  CHECK_NOTHROW(static_cast<void>(Tokenizer(tiny_byte_level())));
  CHECK_NOTHROW(static_cast<void>(Tokenizer(tiny_sentencepiece())));
}
