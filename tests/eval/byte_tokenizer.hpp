#pragma once
// A tokenizer for eval tests without a model file: one token per byte (the one merge, "qz", is in
// no text the tests use), and an end-of-text control token, id 257.
#include <mil/text/tokenizer.hpp>

namespace mil::test {

inline text::Tokenizer byte_tokenizer() {
  text::TokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt2";
  for (int b = 0; b < 256; ++b) d.tokens.push_back(text::to_utf8(text::byte_to_unicode()[b]));
  d.tokens.push_back("qz");
  d.merges = {"q z"};
  d.tokens.push_back("<|endoftext|>");
  d.token_types.assign(d.tokens.size(), text::kTokenNormal);
  d.token_types.back() = text::kTokenControl;
  d.eos = 257;
  return text::Tokenizer(d);
}

}  // namespace mil::test
