// eval/passkey.hpp and eval/answers.hpp: prompt construction (key, depth, length), scoring of the
// generated text, the lengths, and runs through the decoder; with the teacher (models/), the
// teacher finds the key at a short length.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <mil/eval/passkey.hpp>
#include <mil/nn/model_load.hpp>

#include "eval/byte_tokenizer.hpp"
#include "common/error_of.hpp"
#include "common/repo_root.hpp"
#include "common/teacher.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {

nn::HybridConfig tiny_hybrid() {
  nn::HybridConfig h;
  h.llama.vocab = 258;
  h.llama.d_model = 32;
  h.llama.n_layers = 2;
  h.llama.n_heads = 2;
  h.llama.n_kv_heads = 1;
  h.llama.head_dim = 16;
  h.llama.d_ff = 64;
  h.attn_layers = {1};
  return h;
}

size_t occurrences(const std::string& text, const std::string& x) {
  size_t n = 0;
  for (size_t at = text.find(x); at != std::string::npos; at = text.find(x, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("passkey: the prompt holds the key once at the seeded depth and has the asked length") {
  const auto tok = test::byte_tokenizer();
  const int64_t filler = int64_t(eval::kPasskeyFiller.size());  // tokens, one per byte
  std::vector<double> depths;
  for (int64_t length : {int64_t(400), int64_t(1000), int64_t(2500)}) {
    for (int64_t trial = 0; trial < 4; ++trial) {
      CAPTURE(length);
      CAPTURE(trial);
      const auto p = eval::passkey_prompt(tok, length, 7, trial);
      CHECK(int64_t(p.ids.size()) <= length);
      CHECK(int64_t(p.ids.size()) > length - filler);
      CHECK(tok.decode(p.ids) == p.text);
      // A five-digit key, in the needle only, and the needle once.
      CHECK(p.key.size() == 5);
      CHECK(p.key.find_first_not_of("0123456789") == std::string::npos);
      CHECK(p.key[0] != '0');
      CHECK(occurrences(p.text, eval::passkey_needle(p.key)) == 1);
      CHECK(occurrences(p.text, p.key) == 2);
      // The needle after round(depth * fillers) filler sentences; the question last.
      CHECK(p.depth == eval::passkey_depth(7, length, trial));
      CHECK(p.fillers_before == std::llround(p.depth * double(p.fillers)));
      const size_t at = eval::kPasskeyIntro.size() + size_t(p.fillers_before) * eval::kPasskeyFiller.size();
      CHECK(p.text.find(eval::passkey_needle(p.key)) == at);
      CHECK(occurrences(p.text, std::string(eval::kPasskeyFiller)) == size_t(p.fillers));
      CHECK(p.text.ends_with(eval::kPasskeyQuestion));
      depths.push_back(p.depth);
      // Seeded: the same prompt again, another with another seed.
      CHECK(eval::passkey_prompt(tok, length, 7, trial).text == p.text);
      CHECK(eval::passkey_prompt(tok, length, 8, trial).text != p.text);
    }
  }
  // Depths spread over [0, 1).
  CHECK(*std::min_element(depths.begin(), depths.end()) < 0.3);
  CHECK(*std::max_element(depths.begin(), depths.end()) > 0.7);
  CHECK(test::error_of([&] { eval::passkey_prompt(tok, 100, 7, 0); }).find("shorter than") !=
        std::string::npos);
}

TEST_CASE("passkey: a trial is correct when the first digits are the key") {
  CHECK(eval::passkey_correct(" 48213.", "48213"));
  CHECK(eval::passkey_correct("48213", "48213"));
  CHECK(eval::passkey_correct(" is 48213 and 11111", "48213"));
  CHECK_FALSE(eval::passkey_correct(" 48214.", "48213"));
  CHECK_FALSE(eval::passkey_correct(" 482135", "48213"));  // longer
  CHECK_FALSE(eval::passkey_correct(" 4821", "48213"));    // shorter
  CHECK_FALSE(eval::passkey_correct(" 11111 then 48213", "48213"));
  CHECK_FALSE(eval::passkey_correct(" the grass is green.", "48213"));  // no digits
  CHECK_FALSE(eval::passkey_correct("", "48213"));
}

TEST_CASE("passkey: lengths are multiples of the training length capped at the context") {
  eval::PasskeyOptions o;
  o.train_len = 100;
  o.max_new_tokens = 12;
  o.context = 4000;
  CHECK(eval::passkey_lengths(o) == std::vector<int64_t>{100, 200, 400, 800, 2000});
  o.context = 900;
  CHECK(eval::passkey_lengths(o) == std::vector<int64_t>{100, 200, 400, 800, 888});
  o.context = 500;  // 8x and 20x both end at the cap, listed once
  CHECK(eval::passkey_lengths(o) == std::vector<int64_t>{100, 200, 400, 488});
  o.context = 12;
  CHECK(test::error_of([&] { eval::passkey_lengths(o); }).find("longer than max_new_tokens") !=
        std::string::npos);
}

TEST_CASE("passkey: accuracy per length through the decoder of a hybrid") {
  nn::HybridModel<float, Cpu> m(tiny_hybrid());
  m.init_random(4, 0.3f);
  const auto tok = test::byte_tokenizer();
  eval::PasskeyOptions o;
  o.train_len = 300;
  o.multiples = {1, 2};
  o.context = 4096;
  o.trials = 2;
  int64_t progress = 0;
  o.on_progress = [&](int64_t done, int64_t total) {
    CHECK(total == 4);
    progress = done;
  };
  const auto scores = eval::passkey_accuracy(m, tok, o);
  REQUIRE(scores.size() == 2);
  CHECK(scores[0].length == 300);
  CHECK(scores[1].length == 600);
  CHECK(scores[1].multiple == 2.0);
  CHECK(progress == 4);
  for (const auto& s : scores) {
    CHECK(s.trials == 2);
    CHECK(s.correct >= 0);
    CHECK(s.correct <= 2);
  }
}

TEST_CASE("greedy_answers: each prompt is answered from a fresh sequence") {
  nn::HybridModel<float, Cpu> m(tiny_hybrid());
  m.init_random(5, 0.5f);
  const auto tok = test::byte_tokenizer();
  const std::vector<std::string> both = {"Hello there, how are", "The sky is"};
  const auto answers = eval::greedy_answers(m, tok, std::nullopt, both, 10);
  REQUIRE(answers.size() == 2);
  // The second answer does not depend on the first prompt having been answered before it.
  CHECK(eval::greedy_answers(m, tok, std::nullopt, std::span(both).last(1), 10)[0] == answers[1]);
  CHECK(!answers[0].empty());
}

TEST_CASE("passkey: the teacher finds the key at a short length") {
  if (test::skip_real_model_run()) return;
  const fs::path path = test::repo_root() / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) {
    std::printf("[mil] teacher model not found: test skipped (%s; run scripts/setup.sh)\n",
                path.string().c_str());
    return;
  }
  const auto teacher = nn::load_model(path.string());
  eval::PasskeyOptions o;
  o.train_len = 256;
  o.multiples = {1};
  o.trials = 1;
  const auto scores = eval::passkey_accuracy(teacher.model, teacher.tokenizer, o);
  REQUIRE(scores.size() == 1);
  CHECK(scores[0].length == 256);
  CHECK(scores[0].correct == 1);
}
