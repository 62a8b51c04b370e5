// libFuzzer target for the tokenizer of a GGUF file (mil/text/gguf_tokenizer.hpp): arbitrary
// bytes as a GGUF file, then tokenizer_data_from_gguf, a Tokenizer built from what it read, and
// the stored chat template's family. Any input must end in success or mil::Error; a tokenizer
// that loads must encode and decode a fixed text, and decode to valid UTF-8.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_gguf_tokenizer)
//   run:   ./mil_fuzz_gguf_tokenizer -max_total_time=120 /tmp/gguf_tok_corpus fuzz/corpus/gguf_tokenizer
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include <mil/text/chat_template.hpp>
#include <mil/text/gguf_tokenizer.hpp>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil;
  try {
    const auto f = io::GgufFile::from_bytes(std::span<const uint8_t>(data, size), "fuzz");
    try {
      (void)text::detect_chat_template(text::chat_template_from_gguf(f));
    } catch (const mil::Error&) {
    }
    const text::TokenizerData d = text::tokenizer_data_from_gguf(f);
    const text::Tokenizer tok(d);
    const std::string sample = "Hello wörld 123 <s> <|im_end|> \xF0\x9F\x98\x80  \n\tthe end";
    const auto ids = tok.encode(sample, d.add_bos, true);
    if (!text::is_valid_utf8(tok.decode(ids))) {
      std::fprintf(stderr, "fuzz_gguf_tokenizer: decode returned invalid UTF-8\n");
      std::abort();
    }
  } catch (const mil::Error&) {
    // Rejected with a message: fine. Any other exception escapes and is reported as a crash.
  }
  return 0;
}
