// libFuzzer target for mil::text::tokenizer_data_from_hf: arbitrary bytes as tokenizer.json (the
// first line, when it parses as a JSON object, is tokenizer_config.json). Bad input must end in
// mil::Error (or nlohmann's parse error for text that is not JSON) and nothing else; a tokenizer
// that loads must encode and decode a fixed text without failing.
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude \
//     fuzz/fuzz_hf_tokenizer.cpp -o /tmp/fuzz_hf_tokenizer && \
//     /tmp/fuzz_hf_tokenizer /tmp/hf_corpus fuzz/corpus/hf_tokenizer
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mil/text/hf_tokenizer.hpp"

using namespace mil::text;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nl = input.find('\n');
  nlohmann::json config;
  bool has_config = false;
  std::string_view body = input;
  if (nl != std::string_view::npos) {
    config = nlohmann::json::parse(input.substr(0, nl), nullptr, false);
    has_config = config.is_object();
    if (has_config) body = input.substr(nl + 1);
  }
  const nlohmann::json tj = nlohmann::json::parse(body, nullptr, false);
  if (tj.is_discarded()) return 0;
  try {
    const TokenizerData d = tokenizer_data_from_hf(tj, has_config ? &config : nullptr, "fuzz");
    if (has_config) (void)chat_template_from_hf_config(config, "fuzz");
    const Tokenizer tok(d);
    const std::string text = "Hello wörld 123 <s> <|im_end|> \xF0\x9F\x98\x80  \n\tthe end";
    const auto ids = tok.encode(text, d.add_bos, true);
    const std::string back = tok.decode(ids);
    if (!is_valid_utf8(back)) {
      std::fprintf(stderr, "fuzz_hf_tokenizer: decode returned invalid UTF-8\n");
      std::abort();
    }
  } catch (const mil::Error&) {
    // Rejected with a message: fine. Any other exception escapes and is reported as a crash.
  }
  return 0;
}
