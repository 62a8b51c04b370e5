// libFuzzer target for chat-template detection and rendering (mil/text/chat_template.hpp): the
// input up to its first NUL byte is a model's Jinja chat template, each further NUL-separated
// chunk a message whose first byte picks the role (system, user, assistant or an invalid one).
// Detection and rendering must end in a result or mil::Error; a rendering must hold every
// message's content (the llama2 and llama3 families trim it; Mistral's system message needs a
// user message to go into) and be valid UTF-8 when all the inputs are.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_chat_template)
//   run:   ./mil_fuzz_chat_template -max_total_time=120 /tmp/chat_corpus fuzz/corpus/chat_template
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <mil/text/chat_template.hpp>

#include "fuzz_support.hpp"

using mil::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil::text;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find('\0');
  const std::string_view source = input.substr(0, cut);
  std::vector<ChatMessage> messages;
  bool all_valid = is_valid_utf8(source);
  for (size_t at = cut; at != std::string_view::npos && at < input.size();) {
    const size_t next = input.find('\0', at + 1);
    std::string_view chunk = input.substr(at + 1, next == std::string_view::npos ? next : next - at - 1);
    static const char* const kRoles[] = {"system", "user", "assistant", "tool"};
    const char* role = kRoles[chunk.empty() ? 1 : uint8_t(chunk[0]) % 4];
    if (!chunk.empty()) chunk.remove_prefix(1);
    messages.push_back({role, std::string(chunk)});
    all_valid = all_valid && is_valid_utf8(chunk);
    at = next;
  }
  ChatTemplate t;
  try {
    t = detect_chat_template(source);
  } catch (const mil::Error&) {
    return 0;  // no template or an unknown family: a clear error
  }
  (void)chat_bos(t);
  (void)end_of_turn_tokens(t);
  (void)renders_bos(t);
  for (bool add_generation_prompt : {false, true}) {
    std::string out;
    try {
      out = render_chat(t, messages, add_generation_prompt);
    } catch (const mil::Error&) {
      continue;  // roles out of order for this family: a clear error
    }
    if (all_valid) require(is_valid_utf8(out), "rendering of valid UTF-8 is not valid UTF-8");
    const bool trims = t.family == ChatFamily::llama2 || t.family == ChatFamily::llama3;
    // Mistral writes the system message into the first user message; without one it is dropped.
    bool has_user = false;
    for (const auto& m : messages) has_user = has_user || m.role == "user";
    for (const auto& m : messages) {
      if (trims || m.content.empty()) continue;
      if (t.family == ChatFamily::mistral && m.role == "system" && !has_user) continue;
      require(out.find(m.content) != std::string::npos, "a message is missing from the rendering");
    }
  }
  return 0;
}
