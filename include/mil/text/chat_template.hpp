#pragma once
// Chat templates without a template engine: the Jinja source stored with a model (GGUF
// tokenizer.chat_template, tokenizer_config.json chat_template) is recognised as one of the common
// families by its markers, and the family is rendered by hand-written code that produces the same
// text as Hugging Face's apply_chat_template. No template code is ever executed, so a model file
// cannot run anything; a template of an unknown family is an error that names the families and
// the option to choose one.
//
// Families:
//   chatml  <|im_start|>role\ncontent<|im_end|>\n ...        SmolLM2, Qwen2 (a default system
//           message written into the template is found and used when the chat has none)
//   zephyr  <|role|>\ncontent</s>\n ...                        Zephyr, TinyLlama-chat
//   llama3  <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>   (after BOS)
//   llama2  <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer </s>   Llama-2-chat
//   mistral <s>[INST] user [/INST]answer</s>                   Mistral-Instruct (system message
//           prepended to the first user message)
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mil/core/error.hpp"
#include "mil/text/utf8.hpp"

namespace mil::text {

enum class ChatFamily { chatml, zephyr, llama3, llama2, mistral };

inline std::string to_string(ChatFamily f) {
  switch (f) {
    case ChatFamily::chatml: return "chatml";
    case ChatFamily::zephyr: return "zephyr";
    case ChatFamily::llama3: return "llama3";
    case ChatFamily::llama2: return "llama2";
    case ChatFamily::mistral: return "mistral";
  }
  return "?";
}

inline ChatFamily parse_chat_family(std::string_view name) {
  for (ChatFamily f : {ChatFamily::chatml, ChatFamily::zephyr, ChatFamily::llama3,
                       ChatFamily::llama2, ChatFamily::mistral})
    if (name == to_string(f)) return f;
  MIL_FAIL("unknown chat template family '", name,
           "' (known: chatml, zephyr, llama3, llama2, mistral)");
}

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplate {
  ChatFamily family = ChatFamily::chatml;
  std::string default_system;  // used when the conversation has no system message ("": none)
  // The model's BOS / EOS texts, which llama3, llama2 and mistral (BOS) and zephyr, llama2 and
  // mistral (EOS) templates write; "" means the family's usual one (<|begin_of_text|>, <s>,
  // </s>). StableLM's zephyr template, for one, ends turns with <|endoftext|>.
  std::string bos_token, eos_token;
};

namespace chat_detail {

inline bool contains(std::string_view s, std::string_view x) {
  return s.find(x) != std::string_view::npos;
}

// The text after `marker` up to `end` in a template's string literals, with Jinja's \n escapes
// (or real newlines) as newlines; "" when absent.
inline std::string literal_after(std::string_view src, std::string_view marker,
                                 std::string_view end) {
  for (std::string_view nl : {"\n", "\\n"}) {
    const std::string m = std::string(marker) + std::string(nl);
    const size_t at = src.find(m);
    if (at == std::string_view::npos) continue;
    const size_t from = at + m.size();
    const size_t to = src.find(end, from);
    if (to == std::string_view::npos) return {};
    std::string out;
    std::string_view body = src.substr(from, to - from);
    // Only plain text qualifies: anything that looks like template code means the content is
    // computed (e.g. message['content']), not a fixed default.
    if (contains(body, "{") || contains(body, "'") || contains(body, "\"")) return {};
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        out += body[i];
      }
    }
    return out;
  }
  return {};
}

// Python's str.isspace(), which Jinja's trim filter and str.strip() use.
inline bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// s without leading and trailing whitespace, as Python's s.strip().
inline std::string trim(std::string_view s) {
  std::vector<size_t> offsets;
  const std::vector<char32_t> cps = decode_utf8(s, &offsets);
  size_t b = 0, e = cps.size();
  while (b < e && is_python_space(cps[b])) ++b;
  while (e > b && is_python_space(cps[e - 1])) --e;
  return std::string(s.substr(offsets[b], offsets[e] - offsets[b]));
}

inline void check_roles(std::span<const ChatMessage> messages, bool strict_alternation) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    MIL_CHECK(r == "system" || r == "user" || r == "assistant", "chat: message ", i, " has role '",
              r, "' (system, user or assistant)");
    MIL_CHECK(r != "system" || i == 0, "chat: a system message may only come first (message ", i,
              ")");
  }
  if (!strict_alternation) return;
  const size_t first = !messages.empty() && messages[0].role == "system" ? 1 : 0;
  for (size_t i = first; i < messages.size(); ++i)
    MIL_CHECK(messages[i].role == ((i - first) % 2 == 0 ? "user" : "assistant"),
              "chat: this template needs user and assistant messages to alternate, starting with "
              "user (message ", i, " is '", messages[i].role, "')");
}

}  // namespace chat_detail

// The family of a Jinja chat template, from its markers.
inline ChatTemplate detect_chat_template(std::string_view src) {
  using chat_detail::contains;
  MIL_CHECK(!src.empty(), "chat: the model has no chat template; name one with --chat-template "
                          "(chatml, zephyr, llama3, llama2, mistral) or send the prompt raw (--raw)");
  ChatTemplate t;
  if (contains(src, "<|im_start|>")) {
    t.family = ChatFamily::chatml;
    t.default_system = chat_detail::literal_after(src, "<|im_start|>system", "<|im_end|>");
  } else if (contains(src, "<|start_header_id|>")) {
    t.family = ChatFamily::llama3;
  } else if (contains(src, "<|user|>") && contains(src, "<|assistant|>")) {
    t.family = ChatFamily::zephyr;
  } else if (contains(src, "[INST]")) {
    t.family = contains(src, "<<SYS>>") ? ChatFamily::llama2 : ChatFamily::mistral;
  } else {
    MIL_FAIL("chat: the model's chat template is of no known family (chatml, zephyr, llama3, ",
             "llama2, mistral); name one with --chat-template or send the prompt raw (--raw)");
  }
  return t;
}

inline ChatTemplate chat_template_for_family(ChatFamily f) {
  ChatTemplate t;
  t.family = f;
  return t;
}

inline std::string chat_bos(const ChatTemplate& t) {
  if (!t.bos_token.empty()) return t.bos_token;
  return t.family == ChatFamily::llama3 ? "<|begin_of_text|>" : "<s>";
}
inline std::string chat_eos(const ChatTemplate& t) {
  return t.eos_token.empty() ? std::string("</s>") : t.eos_token;
}

// Token texts that end an assistant turn in this family (generation stops there).
inline std::vector<std::string> end_of_turn_tokens(const ChatTemplate& t) {
  switch (t.family) {
    case ChatFamily::chatml: return {"<|im_end|>"};
    case ChatFamily::llama3: return {"<|eot_id|>", "<|end_of_text|>"};
    default: return {chat_eos(t)};
  }
}

// Whether the rendering starts with the BOS token's text (then the tokenizer must not add one).
inline bool renders_bos(const ChatTemplate& t) { return t.family != ChatFamily::chatml && t.family != ChatFamily::zephyr; }

// The conversation as the model was trained to see it; with add_generation_prompt, followed by
// the opening of an assistant turn.
inline std::string render_chat(const ChatTemplate& t, std::span<const ChatMessage> messages,
                               bool add_generation_prompt) {
  std::string out;
  const bool has_system = !messages.empty() && messages[0].role == "system";
  switch (t.family) {
    case ChatFamily::chatml:
      chat_detail::check_roles(messages, false);
      if (!has_system && !t.default_system.empty() && !messages.empty())
        out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
      for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    case ChatFamily::zephyr:
      chat_detail::check_roles(messages, false);
      for (const auto& m : messages) out += "<|" + m.role + "|>\n" + m.content + chat_eos(t) + "\n";
      // The template opens the answer after the last message, so not for an empty chat.
      if (add_generation_prompt && !messages.empty()) out += "<|assistant|>\n";
      return out;
    case ChatFamily::llama3:
      chat_detail::check_roles(messages, false);
      if (!messages.empty()) out = chat_bos(t);
      for (const auto& m : messages)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + chat_detail::trim(m.content) +
               "<|eot_id|>";
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    case ChatFamily::llama2:
    case ChatFamily::mistral: {
      chat_detail::check_roles(messages, true);
      const bool llama2 = t.family == ChatFamily::llama2;
      // Llama-2's template reads messages[0] and fails on an empty conversation.
      MIL_CHECK(!llama2 || !messages.empty(), "chat: the llama2 template needs a message");
      if (!llama2) out = chat_bos(t);
      bool system_pending = has_system && (llama2 || !messages[0].content.empty());
      const std::string system = has_system ? messages[0].content : "";
      for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (m.role == "user") {
          std::string content = m.content;
          if (system_pending) {
            content = llama2 ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content
                             : system + "\n\n" + content;
            system_pending = false;
          }
          out += (llama2 ? chat_bos(t) : "") + std::string("[INST] ") +
                 (llama2 ? chat_detail::trim(content) : content) + " [/INST]";
        } else {
          out += llama2 ? " " + chat_detail::trim(m.content) + " " + chat_eos(t)
                        : m.content + chat_eos(t);
        }
      }
      (void)add_generation_prompt;  // the [/INST] already opens the answer
      return out;
    }
  }
  return out;
}

}  // namespace mil::text
