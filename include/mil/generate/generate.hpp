#pragma once
// Text generation over any decoder with the Decoder interface (prefill, decode, argmax,
// logits_host, length, options): prompt in, tokens out, streamed as text as they come, with stop
// tokens, stop strings, a token budget and the context size as ends. Timings are split like
// llama.cpp's: the prompt (prefill) and the generated tokens (one decode step each).
#include <chrono>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../text/tokenizer.hpp"
#include "sampler.hpp"

namespace mil::gen {

struct GenerateConfig {
  int64_t max_new_tokens = 256;
  SamplingConfig sampling;
  std::vector<int32_t> stop_tokens;     // e.g. EOS and the chat template's end-of-turn token
  std::vector<std::string> stop_strings;  // generation ends before the first occurrence
};

enum class StopReason { stop_token, stop_string, max_tokens, context_full };

inline const char* to_string(StopReason r) {
  switch (r) {
    case StopReason::stop_token: return "stop token";
    case StopReason::stop_string: return "stop string";
    case StopReason::max_tokens: return "token limit";
    case StopReason::context_full: return "context full";
  }
  return "?";
}

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, without a final stop token
  std::string text;             // their text, cut before a stop string
  StopReason reason = StopReason::max_tokens;
  int64_t prompt_tokens = 0;
  double prompt_seconds = 0, generate_seconds = 0;
  int64_t sampled = 0;  // tokens chosen, including a final stop token
  double prompt_tokens_per_second() const {
    return prompt_seconds > 0 ? double(prompt_tokens) / prompt_seconds : 0;
  }
  double generated_tokens_per_second() const {
    return generate_seconds > 0 ? double(sampled) / generate_seconds : 0;
  }
};

// Streams text but holds back any tail that could still become a stop string.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
    std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
  }
  // Adds text; returns what can be shown now. found() tells whether a stop string appeared (the
  // text before it has then been returned and everything after is dropped).
  std::string push(std::string_view text) {
    if (found_) return {};
    pending_ += text;
    size_t cut = std::string::npos;
    for (const auto& s : stops_) cut = std::min(cut, pending_.find(s));
    if (cut != std::string::npos) {
      found_ = true;
      std::string out = pending_.substr(0, cut);
      pending_.clear();
      return out;
    }
    size_t hold = 0;  // the longest suffix of pending_ that is a proper prefix of a stop string
    for (const auto& s : stops_)
      for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
        if (std::string_view(pending_).substr(pending_.size() - n) == std::string_view(s).substr(0, n)) {
          hold = n;
          break;
        }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  std::string flush() { return found_ ? std::string() : std::exchange(pending_, std::string()); }
  bool found() const { return found_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool found_ = false;
};

// Generated tokens to text as it becomes final (UTF-8 complete, not part of a possible stop
// string), appended to `text` and handed to `on_text`.
class TextStream {
 public:
  TextStream(const text::Tokenizer& tokenizer, const std::vector<std::string>& stops, std::string& text,
             const std::function<void(std::string_view)>& on_text)
      : stream_(tokenizer, /*render_special=*/false), filter_(stops), text_(text), on_text_(on_text) {}
  // Adds a token; false when a stop string appeared (the text ends before it).
  bool push(int32_t token) {
    emit(filter_.push(stream_.push(token)));
    return !filter_.found();
  }
  // The held-back rest, at the end of generation.
  void finish() {
    if (!filter_.found()) emit(filter_.push(stream_.flush()) + filter_.flush());
  }

 private:
  void emit(const std::string& s) {
    if (s.empty()) return;
    text_ += s;
    if (on_text_) on_text_(s);
  }
  text::StreamingDecoder stream_;
  StopStringFilter filter_;
  std::string& text_;
  const std::function<void(std::string_view)>& on_text_;
};

// Appends `prompt` to sequence `slot` of `decoder` and generates after it. on_text receives the
// text as it becomes final (UTF-8 complete, not part of a possible stop string).
// `held` are the tokens the slot holds already (a chat's earlier turns): the repetition penalty
// looks back over them too, as speculative_generate's does.
template <class Decoder>
GenerateResult generate(Decoder& decoder, int64_t slot, const text::Tokenizer& tokenizer,
                        std::span<const int32_t> prompt, const GenerateConfig& cfg,
                        const std::function<void(std::string_view)>& on_text = {},
                        std::span<const int32_t> held = {}) {
  using clock = std::chrono::steady_clock;
  MIL_CHECK(cfg.max_new_tokens >= 0, "generate: max_new_tokens ", cfg.max_new_tokens, " < 0");
  Sampler sampler(cfg.sampling);
  GenerateResult r;
  r.prompt_tokens = int64_t(prompt.size());
  auto t0 = clock::now();
  decoder.prefill(slot, prompt);
  auto t1 = clock::now();
  r.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();

  std::vector<int32_t> history(held.begin(), held.end());
  history.insert(history.end(), prompt.begin(), prompt.end());
  TextStream out(tokenizer, cfg.stop_strings, r.text, on_text);
  const bool device_greedy = cfg.sampling.greedy() && cfg.sampling.repetition_penalty == 1.f;
  r.reason = StopReason::max_tokens;
  for (int64_t i = 0; i < cfg.max_new_tokens; ++i) {
    const int32_t next = device_greedy ? decoder.argmax()[0]
                                       : sampler.sample(decoder.logits_host(), history);
    ++r.sampled;
    if (std::find(cfg.stop_tokens.begin(), cfg.stop_tokens.end(), next) != cfg.stop_tokens.end()) {
      r.reason = StopReason::stop_token;
      break;
    }
    r.tokens.push_back(next);
    history.push_back(next);
    if (!out.push(next)) {
      r.reason = StopReason::stop_string;
      break;
    }
    if (i + 1 == cfg.max_new_tokens) break;
    if (decoder.length(slot) >= decoder.options().max_seq) {
      r.reason = StopReason::context_full;
      break;
    }
    const int32_t s = int32_t(slot);
    decoder.decode(std::span(&s, 1), std::span(&next, 1));
  }
  out.finish();
  r.generate_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

}  // namespace mil::gen
