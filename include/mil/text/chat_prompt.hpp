#pragma once
// A conversation turned into the tokens a model answers, and the tokens that end its answer: the
// one place mil-chat, labelling, evaluation and the passkey test do this, so they agree.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "chat_template.hpp"
#include "tokenizer.hpp"

namespace mil::text {

// The tokens of `messages` rendered through `tmpl` with an opened assistant turn (BOS added when
// the tokenizer wants one and the template does not write it).
inline std::vector<int32_t> encode_chat_prompt(const Tokenizer& tok, const ChatTemplate& tmpl,
                                               std::span<const ChatMessage> messages) {
  return tok.encode(render_chat(tmpl, messages, true), tok.data().add_bos && !renders_bos(tmpl), true);
}

// End of sequence and, with a template, its end-of-turn tokens (those the vocabulary has).
inline std::vector<int32_t> stop_token_ids(const Tokenizer& tok, const std::optional<ChatTemplate>& tmpl) {
  std::vector<int32_t> ids;
  if (tok.eos() >= 0) ids.push_back(tok.eos());
  if (tmpl)
    for (const std::string& s : end_of_turn_tokens(*tmpl))
      if (int32_t id = tok.token_id(s); id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end())
        ids.push_back(id);
  return ids;
}

}  // namespace mil::text
