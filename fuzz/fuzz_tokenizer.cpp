// libFuzzer target for mil::text::Tokenizer: arbitrary bytes through encode / decode / streaming
// decode of a byte-level BPE tokenizer (all 256 byte tokens plus a few merges and special tokens)
// and a SentencePiece tokenizer (byte fallback). Checks decode(encode(valid_utf8(s))) ==
// valid_utf8(s) and that streaming decode agrees with decode.
//   clang++-14 -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude \
//     fuzz/fuzz_tokenizer.cpp -o /tmp/fuzz_tokenizer && /tmp/fuzz_tokenizer fuzz/corpus/tokenizer
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mil/text/tokenizer.hpp"

using namespace mil::text;

namespace {

TokenizerData byte_level_data(const char* pre) {
  TokenizerData d;
  d.model = "gpt2";
  d.pre = pre;
  for (int b = 0; b < 256; ++b) d.tokens.push_back(to_utf8(byte_to_unicode()[b]));
  const char* merges[][3] = {{"a", "b", "ab"}, {"ab", "c", "abc"}, {"\xC4\xA0", "a", "\xC4\xA0" "a"},
                             {"a", "a", "aa"}, {"aa", "aa", "aaaa"}, {"_", "_", "__"},
                             {"\xC4\xA0", "\xC4\xA0", "\xC4\xA0\xC4\xA0"}, {"1", "2", "12"},
                             {"\xC3\x83", "\xC2\xA9", "\xC3\x83\xC2\xA9"}};  // é as mapped bytes
  for (const auto& m : merges) {
    d.merges.push_back(std::string(m[0]) + " " + m[1]);
    d.tokens.push_back(m[2]);
  }
  d.token_types.assign(d.tokens.size(), kTokenNormal);
  for (const char* special : {"<|im_start|>", "<|im_end|>", "<|im"}) {
    d.tokens.push_back(special);
    d.token_types.push_back(kTokenControl);
  }
  d.bos = static_cast<int32_t>(d.tokens.size()) - 3;
  d.ignore_merges = std::string(pre) == "llama3";  // whole-word tokens, as Llama-3
  return d;
}

TokenizerData sentencepiece_data() {
  TokenizerData d;
  d.model = "llama";
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.token_types = {kTokenUnknown, kTokenControl, kTokenControl};
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    d.tokens.push_back(buf);
    d.token_types.push_back(kTokenByte);
  }
  for (const char* p : {"\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81" "a", "abc", "__", "\xC3\xA9", "<|x|>"}) {
    d.tokens.push_back(p);
    d.token_types.push_back(std::string(p) == "<|x|>" ? kTokenUserDefined : kTokenNormal);
  }
  d.scores.resize(d.tokens.size());
  for (size_t i = 0; i < d.scores.size(); ++i) d.scores[i] = -static_cast<float>(i % 7);
  d.unk = 0;
  d.bos = 1;
  d.eos = 2;
  return d;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_tokenizer: %s\n", what);
    std::abort();
  }
}

void exercise(const Tokenizer& t, const std::string& input, bool parse_special) {
  const std::string valid = sanitize_utf8(input);
  const std::vector<int32_t> ids = t.encode(input, false, parse_special);
  check(t.decode(ids) == valid, "decode(encode(s)) != valid_utf8(s)");
  check(t.encode(valid, false, parse_special) == ids, "encode(s) != encode(valid_utf8(s))");
  StreamingDecoder stream(t);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    check(is_valid_utf8(piece), "streamed piece is not valid UTF-8");
    streamed += piece;
  }
  streamed += stream.flush();
  check(streamed == valid, "streaming decode != decode");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer gpt2(byte_level_data("gpt2"));
  static const Tokenizer smollm(byte_level_data("smollm"));
  static const Tokenizer llama3(byte_level_data("llama3"));
  static const Tokenizer qwen2(byte_level_data("qwen2"));
  static const Tokenizer spm(sentencepiece_data());
  if (size == 0) return 0;
  // The first byte picks the tokenizer and whether special tokens are parsed.
  const uint8_t selector = data[0];
  const std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
  const Tokenizer* const all[] = {&gpt2, &smollm, &llama3, &qwen2, &spm};
  exercise(*all[(selector >> 1) % 5], input, selector & 1);
  // Decoding arbitrary ids never produces invalid UTF-8 through decode().
  std::vector<int32_t> ids;
  for (size_t i = 1; i + 1 < size; i += 2) ids.push_back((data[i] | (data[i + 1] << 8)) % spm.vocab_size());
  check(is_valid_utf8(spm.decode(ids)), "decode returned invalid UTF-8");
  return 0;
}
