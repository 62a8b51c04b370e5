#pragma once
// Greedy answers of a model to prompts, for reading a student's answers beside its teacher's
// (docs/METHOD.md §7), and the greedy continuation that the passkey test scores.
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../generate/generate.hpp"
#include "../nn/decoder.hpp"
#include "../text/chat_prompt.hpp"

namespace mil::eval {

// Greedy continuation of `ids` in slot 0 of `decoder`, which starts afresh; at most
// max_new_tokens, ending early at a stop token.
template <class Decoder>
gen::GenerateResult greedy_continuation(Decoder& decoder, const text::Tokenizer& tok,
                                        std::span<const int32_t> ids, int64_t max_new_tokens,
                                        std::vector<int32_t> stop_tokens) {
  gen::GenerateConfig g;
  g.max_new_tokens = max_new_tokens;
  g.sampling.temperature = 0.f;
  g.stop_tokens = std::move(stop_tokens);
  decoder.reset(0);
  return gen::generate(decoder, 0, tok, ids, g);
}

// The prompt's tokens: a user message through the chat template, or the text as is (raw).
inline std::vector<int32_t> prompt_tokens(const text::Tokenizer& tok,
                                          const std::optional<text::ChatTemplate>& tmpl,
                                          const std::string& prompt) {
  if (!tmpl) return tok.encode(prompt, tok.data().add_bos, false);
  const text::ChatMessage user{"user", prompt};
  return text::encode_chat_prompt(tok, *tmpl, std::span(&user, 1));
}

// Greedy answers (text, up to max_new_tokens tokens each) of `model` to `prompts`.
template <Element T, Device D>
std::vector<std::string> greedy_answers(const nn::HybridModel<T, D>& model,
                                        const text::Tokenizer& tok,
                                        const std::optional<text::ChatTemplate>& tmpl,
                                        std::span<const std::string> prompts,
                                        int64_t max_new_tokens) {
  std::vector<std::vector<int32_t>> ids;
  int64_t longest = 0;
  for (const auto& p : prompts) {
    ids.push_back(prompt_tokens(tok, tmpl, p));
    MIL_CHECK(!ids.back().empty(), "greedy_answers: prompt '", p, "' has no tokens");
    longest = std::max(longest, int64_t(ids.back().size()));
  }
  std::vector<std::string> out;
  if (prompts.empty()) return out;
  nn::DecoderOptions o;
  o.max_seq = longest + max_new_tokens;
  nn::Decoder<T, D> decoder(model, o);
  const auto stops = text::stop_token_ids(tok, tmpl);
  for (const auto& p : ids)
    out.push_back(greedy_continuation(decoder, tok, p, max_new_tokens, stops).text);
  return out;
}

}  // namespace mil::eval
