#pragma once
// Passkey retrieval (docs/METHOD.md §7): can a model find a five-digit key hidden in long
// irrelevant text? The prompt is the usual one: a task line, a filler sentence repeated, the key
// sentence inserted at a seeded depth, and a question whose answer the model completes:
//   "There is an important piece of information hidden inside a lot of irrelevant text. ...
//    The grass is green. The sky is blue. ... The pass key is 12345. Remember it. 12345 is the
//    pass key. The grass is green. ... What is the pass key? The pass key is"
// It is sent raw, not through the chat template: the prompt ends inside the sentence that
// names the key, so any model (base, instruct or distilled student) answers in the same form,
// and a chat template's wording cannot make one model look better than another. Greedy
// decoding; a trial is correct when the first run of digits in the continuation is the key.
// Prompt lengths are multiples of a training length, capped at a context length.
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "../core/rng.hpp"
#include "answers.hpp"

namespace mil::eval {

inline constexpr std::string_view kPasskeyIntro =
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it "
    "and memorize it. I will quiz you about the important information there.";
inline constexpr std::string_view kPasskeyFiller =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
inline constexpr std::string_view kPasskeyQuestion = " What is the pass key? The pass key is";

inline std::string passkey_needle(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}

struct PasskeyPrompt {
  std::vector<int32_t> ids;  // the prompt's tokens (with BOS when the tokenizer adds one)
  std::string text;
  std::string key;             // five digits
  double depth = 0;            // seeded, in [0, 1): where the needle goes within the filler
  int64_t fillers = 0;         // filler sentences in the prompt
  int64_t fillers_before = 0;  // of them before the needle: round(depth * fillers)
};

// The key and depth of trial `trial` of prompts of `length` tokens, from Philox stream
// (seed, length): the same for every model, so all are asked the same questions.
inline std::string passkey_key(uint64_t seed, int64_t length, int64_t trial) {
  const float u = rng::uniform(seed, uint64_t(length), 2 * uint64_t(trial), 0.f, 1.f);
  return std::to_string(std::min(10000 + int(u * 90000.f), 99999));
}
inline double passkey_depth(uint64_t seed, int64_t length, int64_t trial) {
  return rng::uniform(seed, uint64_t(length), 2 * uint64_t(trial) + 1, 0.f, 1.f);
}

// A prompt of at most `length` tokens, and more than `length` minus one filler sentence's tokens.
inline PasskeyPrompt passkey_prompt(const text::Tokenizer& tok, int64_t length, uint64_t seed,
                                    int64_t trial) {
  PasskeyPrompt p;
  p.key = passkey_key(seed, length, trial);
  p.depth = passkey_depth(seed, length, trial);
  const std::string needle = passkey_needle(p.key);
  const bool bos = tok.data().add_bos;
  auto count = [&](const std::string& s, bool with_bos) { return int64_t(tok.encode(s, with_bos, false).size()); };
  const int64_t fixed = count(std::string(kPasskeyIntro) + needle + std::string(kPasskeyQuestion), bos);
  const int64_t per_filler = std::max<int64_t>(count(std::string(kPasskeyFiller), false), 1);
  MIL_CHECK(fixed <= length, "passkey: a prompt of ", length, " tokens is shorter than the ",
            fixed, " tokens of the prompt without filler");
  // Tokens at the seams may merge differently from the count; drop fillers until it fits.
  for (int64_t k = (length - fixed) / per_filler;; --k) {
    p.fillers = k;
    p.fillers_before = std::llround(p.depth * double(k));
    p.text = kPasskeyIntro;
    for (int64_t i = 0; i < k; ++i) {
      if (i == p.fillers_before) p.text += needle;
      p.text += kPasskeyFiller;
    }
    if (p.fillers_before == k) p.text += needle;
    p.text += kPasskeyQuestion;
    p.ids = tok.encode(p.text, bos, false);
    if (int64_t(p.ids.size()) <= length || k == 0) break;
  }
  MIL_CHECK(int64_t(p.ids.size()) <= length, "passkey: the prompt has ", p.ids.size(),
            " tokens, more than ", length);
  return p;
}

// Whether the first run of ASCII digits in `generated` is exactly `key` (none: wrong).
inline bool passkey_correct(std::string_view generated, std::string_view key) {
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  const auto first = std::find_if(generated.begin(), generated.end(), is_digit);
  const auto last = std::find_if_not(first, generated.end(), is_digit);
  return first != generated.end() && std::string_view(first, last) == key;
}

struct PasskeyOptions {
  int64_t train_len = 2048;                          // the training length the multiples scale
  std::vector<double> multiples = {1, 2, 4, 8, 20};  // prompt lengths in training lengths
  int64_t context = 8192;     // cap on prompt + answer (the teacher's context)
  int64_t trials = 5;         // prompts per length (keys and depths seeded)
  uint64_t seed = 1;
  int64_t max_new_tokens = 12;  // enough for five digits in any tokenisation
  // Called after each trial with (trials done, trials in all).
  std::function<void(int64_t, int64_t)> on_progress;
};

// Prompt lengths in tokens: each multiple of train_len, capped so that the prompt and the answer
// fit the context; a length the cap makes equal to the previous one is not repeated.
inline std::vector<int64_t> passkey_lengths(const PasskeyOptions& o) {
  MIL_CHECK(o.train_len >= 1 && o.trials >= 1 && o.max_new_tokens >= 1 &&
                o.context > o.max_new_tokens,
            "passkey: train_len (", o.train_len, "), trials (", o.trials, ") and max_new_tokens (",
            o.max_new_tokens, ") must be >= 1, and the context (", o.context,
            ") longer than max_new_tokens");
  std::vector<int64_t> lengths;
  for (double m : o.multiples) {
    MIL_CHECK(m > 0 && std::isfinite(m), "passkey: multiple ", m, " must be positive");
    const int64_t n = std::min<int64_t>(std::llround(m * double(o.train_len)), o.context - o.max_new_tokens);
    if (lengths.empty() || lengths.back() != n) lengths.push_back(n);
  }
  return lengths;
}

struct PasskeyScore {
  int64_t length = 0;   // prompt tokens asked for
  double multiple = 0;  // length / train_len
  int64_t correct = 0, trials = 0;
  double accuracy() const { return trials ? double(correct) / double(trials) : 0.0; }
};

// Passkey accuracy of `model` at each of passkey_lengths(o).
template <Element T, Device D>
std::vector<PasskeyScore> passkey_accuracy(const nn::HybridModel<T, D>& model,
                                           const text::Tokenizer& tok, const PasskeyOptions& o) {
  const auto lengths = passkey_lengths(o);
  nn::DecoderOptions dopt;
  dopt.max_seq = *std::max_element(lengths.begin(), lengths.end()) + o.max_new_tokens;
  nn::Decoder<T, D> decoder(model, dopt);
  const auto stops = text::stop_token_ids(tok, std::nullopt);
  std::vector<PasskeyScore> scores;
  int64_t done = 0;
  for (int64_t n : lengths) {
    PasskeyScore s{n, double(n) / double(o.train_len), 0, o.trials};
    for (int64_t trial = 0; trial < o.trials; ++trial) {
      const auto p = passkey_prompt(tok, n, o.seed, trial);
      s.correct += passkey_correct(
          greedy_continuation(decoder, tok, p.ids, o.max_new_tokens, stops).text, p.key);
      if (o.on_progress) o.on_progress(++done, o.trials * int64_t(lengths.size()));
    }
    scores.push_back(s);
  }
  return scores;
}

}  // namespace mil::eval
