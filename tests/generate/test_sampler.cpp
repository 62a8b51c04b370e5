// Sampling: greedy, top-k / top-p / min-p truncation, temperature, repetition penalty, seeds, and
// the stop-string filter of the generation loop.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include <mil/generate/generate.hpp>

using namespace mil;

namespace {
// Frequencies of n draws.
std::map<int32_t, int> histogram(gen::SamplingConfig c, const std::vector<float>& logits, int n,
                                 const std::vector<int32_t>& history = {}) {
  gen::Sampler s(c);
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[s.sample(logits, history)];
  return h;
}
}  // namespace

TEST_CASE("sampler: temperature 0 is greedy and the penalty applies before it") {
  gen::SamplingConfig c;
  c.temperature = 0;
  gen::Sampler s(c);
  const std::vector<float> logits = {0.5f, 2.f, 1.9f, -1.f};
  CHECK(s.sample(logits, {}) == 1);
  c.repetition_penalty = 1.1f;  // 2 / 1.1 = 1.82 < 1.9
  gen::Sampler p(c);
  const std::vector<int32_t> history = {1, 1, 3};
  CHECK(p.sample(logits, history) == 2);
  c.repeat_last_n = 1;  // only the last token (3) is penalised
  gen::Sampler q(c);
  CHECK(q.sample(logits, history) == 1);
}

TEST_CASE("sampler: top-k top-p and min-p keep exactly the stated candidates") {
  // Probabilities at temperature 1: 0.5, 0.25, 0.125, 0.0625, 0.0625.
  const std::vector<float> logits = {std::log(8.f), std::log(4.f), std::log(2.f), 0.f, 0.f};
  gen::SamplingConfig c;
  c.temperature = 1;
  c.top_k = 0;
  c.top_p = 1;
  c.min_p = 0;
  c.seed = 7;
  auto all = histogram(c, logits, 20000);
  CHECK(all.size() == 5);
  CHECK(std::abs(all[0] / 20000.0 - 0.5) < 0.02);
  CHECK(std::abs(all[3] / 20000.0 - 0.0625) < 0.01);
  c.top_k = 2;
  auto k2 = histogram(c, logits, 4000);
  CHECK(k2.size() == 2);
  CHECK(std::abs(k2[0] / 4000.0 - 2.0 / 3.0) < 0.03);
  c.top_k = 0;
  c.top_p = 0.75f;  // 0.5 + 0.25 reaches 0.75: two tokens
  CHECK(histogram(c, logits, 4000).size() == 2);
  c.top_p = 0.76f;
  CHECK(histogram(c, logits, 4000).size() == 3);
  c.top_p = 1;
  c.min_p = 0.2f;  // p >= 0.1: three tokens
  CHECK(histogram(c, logits, 4000).size() == 3);
  // A lower temperature sharpens: the top token's share grows.
  c.min_p = 0;
  c.temperature = 0.5f;
  CHECK(histogram(c, logits, 4000)[0] / 4000.0 > 0.7);
}

TEST_CASE("sampler: a seed reproduces a run and another seed changes it") {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i)));
  gen::SamplingConfig c;
  c.top_k = 0;
  c.top_p = 1;
  c.min_p = 0;
  c.temperature = 1.5f;
  auto run = [&](uint64_t seed) {
    c.seed = seed;
    gen::Sampler s(c);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits, out));
    return out;
  };
  CHECK(run(1) == run(1));
  CHECK(run(1) != run(2));
  gen::SamplingConfig bad;
  bad.top_p = 0;
  CHECK_THROWS_WITH_AS(gen::Sampler{bad}, doctest::Contains("top-p"), Error);
  bad = {};
  bad.temperature = -1;
  CHECK_THROWS_WITH_AS(gen::Sampler{bad}, doctest::Contains("temperature"), Error);
}

TEST_CASE("stop strings: text is held back only while it may still become a stop string") {
  gen::StopStringFilter f({"<END>", "\n\nUser:"});
  CHECK(f.push("Hello <") == "Hello ");
  CHECK(f.push("E") == "");
  CHECK(f.push("x") == "<Ex");  // "<Ex" cannot start "<END>" any more
  CHECK(f.push(" done\n") == " done");
  CHECK(f.push("\nUs") == "");
  CHECK_FALSE(f.found());
  CHECK(f.push("er: hi") == "");
  CHECK(f.found());
  CHECK(f.push("more") == "");
  CHECK(f.flush() == "");
  gen::StopStringFilter g({"ab"});
  CHECK(g.push("xa") == "x");
  CHECK(g.flush() == "a");
}

TEST_CASE("sampler: distribution() is what sample() draws from, and the stream is pinned") {
  // Speculative sampling accepts and resamples with distribution() and draw(); a chain that
  // differed from sample()'s (a missed penalty, top-p cut or temperature) would change the
  // distribution of its tokens. The pinned tokens are those of the sampler before it was split
  // into distribution() + draw() (labels and chats made before stay reproducible).
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(float(i) * 1.7f) * 3.f;
  const std::vector<int32_t> history = {3, 7, 7, 12};
  const gen::SamplingConfig plain{.temperature = 1.f, .top_k = 0, .top_p = 1.f, .min_p = 0.f, .seed = 3};
  const gen::SamplingConfig chain{.temperature = 0.7f, .top_k = 9, .top_p = 0.8f, .min_p = 0.1f,
                                  .repetition_penalty = 1.5f, .seed = 5};
  const std::vector<int32_t> pinned[] = {
      {30, 1, 49, 49, 27, 27, 7, 1, 31, 23, 38, 16, 27, 38, 38, 5, 34, 38, 38, 15, 12, 8, 5, 30},
      {34, 23, 34, 1, 45, 23, 49, 38, 23, 38, 1, 49, 38, 45, 45, 1, 49, 23, 23, 49, 45, 23, 45, 23}};
  int which = 0;
  for (const gen::SamplingConfig& c : {plain, chain}) {
    CAPTURE(c.top_k);
    gen::Sampler a(c);
    std::vector<int32_t> got;
    for (int i = 0; i < 24; ++i) got.push_back(a.sample(logits, history));
    CHECK(got == pinned[which++]);
  }
  for (const gen::SamplingConfig& c : {plain, chain, gen::SamplingConfig{.temperature = 0.f, .repetition_penalty = 2.f}}) {
    CAPTURE(c.top_k);
    gen::Sampler a(c), b(c);
    for (int i = 0; i < 300; ++i) CHECK(a.sample(logits, history) == b.draw(b.distribution(logits, history)));
    const auto d = b.distribution(logits, history);
    double sum = 0;
    for (int32_t id : d.ids) sum += d.prob(id);
    CHECK(sum == doctest::Approx(1.0));
    if (c.greedy()) CHECK(d.ids.size() == 1);
    if (c.top_k > 0) CHECK(d.ids.size() <= size_t(c.top_k));
  }
  // The cut candidates have probability 0: the smallest logit is never among the top 9.
  const auto worst = int32_t(std::min_element(logits.begin(), logits.end()) - logits.begin());
  gen::Sampler c(chain);
  CHECK(c.distribution(logits, history).prob(worst) == 0);
  gen::Sampler p(plain);
  CHECK(p.distribution(logits, history).prob(worst) > 0);
}
