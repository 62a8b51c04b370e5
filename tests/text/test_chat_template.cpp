// Chat templates: family detection from real Jinja sources and renderings byte-identical to
// jinja2 with Hugging Face's apply_chat_template settings (golden file made by
// scripts/make_chat_golden.py), plus the error cases.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mil/text/chat_template.hpp"

using namespace mil;
using namespace mil::text;

namespace {
nlohmann::json golden() {
  const auto path = std::filesystem::path(MIL_SOURCE_DIR) / "tests/text/golden/chat_templates.json";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path.string());
  return nlohmann::json::parse(in);
}
}  // namespace

TEST_CASE("chat template: families are detected and rendered as jinja2 renders them") {
  int identical = 0, total = 0;
  const auto g = golden();
  for (const auto& t : g.at("templates")) {
    const std::string name = t.at("name");
    CAPTURE(name);
    ChatTemplate tmpl = detect_chat_template(t.at("source").get<std::string>());
    CHECK(to_string(tmpl.family) == t.at("family").get<std::string>());
    tmpl.bos_token = t.at("bos_token").get<std::string>();
    tmpl.eos_token = t.at("eos_token").get<std::string>();
    for (const auto& c : t.at("cases")) {
      std::vector<ChatMessage> messages;
      for (const auto& m : c.at("messages")) messages.push_back({m.at("role"), m.at("content")});
      const bool gen = c.at("add_generation_prompt");
      if (c.contains("error")) {
        if (messages.empty()) {  // Llama-2's template reads messages[0]
          CHECK(tmpl.family == ChatFamily::llama2);
          CHECK_THROWS_AS(render_chat(tmpl, messages, gen), Error);
          continue;
        }
        // Mistral's template refuses a system message; mil puts it before the first user turn.
        REQUIRE(tmpl.family == ChatFamily::mistral);
        REQUIRE(messages[0].role == "system");
        std::vector<ChatMessage> merged(messages.begin() + 1, messages.end());
        if (!messages[0].content.empty())
          merged[0].content = messages[0].content + "\n\n" + merged[0].content;
        CHECK(render_chat(tmpl, messages, gen) == render_chat(tmpl, merged, gen));
        continue;
      }
      const std::string text = render_chat(tmpl, messages, gen);
      CAPTURE(c.at("text").get<std::string>());
      CHECK(text == c.at("text").get<std::string>());
      identical += text == c.at("text").get<std::string>();
      ++total;
    }
  }
  MESSAGE("chat templates: " << identical << " of " << total << " renderings identical to jinja2");
  CHECK(total >= 55);
}

TEST_CASE("chat template: the family's usual BOS and EOS when the model names none") {
  const std::vector<ChatMessage> chat = {{"user", "Hi"}, {"assistant", "Hello"}};
  CHECK(render_chat(chat_template_for_family(ChatFamily::llama2), chat, false) ==
        "<s>[INST] Hi [/INST] Hello </s>");
  CHECK(render_chat(chat_template_for_family(ChatFamily::mistral), chat, false) ==
        "<s>[INST] Hi [/INST]Hello</s>");
  CHECK(render_chat(chat_template_for_family(ChatFamily::zephyr), chat, true) ==
        "<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|assistant|>\n");
  CHECK(render_chat(chat_template_for_family(ChatFamily::llama3), chat, false).rfind(
            "<|begin_of_text|><|start_header_id|>user", 0) == 0);
  ChatTemplate stablelm = chat_template_for_family(ChatFamily::zephyr);
  stablelm.eos_token = "<|endoftext|>";
  CHECK(end_of_turn_tokens(stablelm) == std::vector<std::string>{"<|endoftext|>"});
}

TEST_CASE("chat template: the default system message is read from the template") {
  const auto g = golden();
  CHECK(detect_chat_template(g.at("templates")[0].at("source").get<std::string>()).default_system ==
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  CHECK(detect_chat_template(g.at("templates")[1].at("source").get<std::string>()).default_system ==
        "You are a helpful assistant.");
  // A computed system text is not a default.
  CHECK(detect_chat_template("{{'<|im_start|>system\\n' + message['content'] + '<|im_end|>'}}")
            .default_system.empty());
}

TEST_CASE("chat template: unknown families and bad conversations are clear errors") {
  CHECK_THROWS_WITH_AS(detect_chat_template(""), doctest::Contains("--chat-template"), Error);
  CHECK_THROWS_WITH_AS(detect_chat_template("{{ messages }}"), doctest::Contains("no known family"),
                       Error);
  CHECK_THROWS_WITH_AS(parse_chat_family("vicuna"), doctest::Contains("known: chatml"), Error);
  CHECK(parse_chat_family("llama3") == ChatFamily::llama3);
  const ChatTemplate llama2 = chat_template_for_family(ChatFamily::llama2);
  const std::vector<ChatMessage> twice = {{"user", "a"}, {"user", "b"}};
  CHECK_THROWS_WITH_AS(render_chat(llama2, twice, true), doctest::Contains("alternate"), Error);
  const std::vector<ChatMessage> bad_role = {{"tool", "x"}};
  CHECK_THROWS_WITH_AS(render_chat(ChatTemplate{}, bad_role, true), doctest::Contains("role 'tool'"),
                       Error);
  const std::vector<ChatMessage> late_system = {{"user", "a"}, {"system", "b"}};
  CHECK_THROWS_WITH_AS(render_chat(ChatTemplate{}, late_system, true),
                       doctest::Contains("system message may only come first"), Error);
}
