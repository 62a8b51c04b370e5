// distill::preference_metrics, which mil-distill and mil-eval --pairs report, against the pairs'
// answer log-probabilities computed independently (tests/data/small_models.hpp: one training
// forward and a log-softmax in double per position).
#include <doctest/doctest.h>

#include <cmath>

#include <mil/distill/preference_eval.hpp>

#include "common/error_of.hpp"
#include "data/small_models.hpp"

using namespace mil;

TEST_CASE("preference metrics: accuracy and margin and drift match independent log-probabilities") {
  nn::HybridModel<float, Cpu> model{nn::all_attention(test::small_llama(41))};
  model.init_random(7, 0.3f);
  const double beta = 0.25;
  // Reference log-probabilities chosen so that some pairs rank right and some wrong.
  std::vector<data::PreferencePair> pairs;
  for (int i = 0; i < 6; ++i) {
    data::PreferencePair p;
    p.prompt = {int32_t(1 + i), int32_t(9 + i), 4};
    p.chosen = {int32_t(10 + i), 11, int32_t(20 + i)};
    p.rejected = {int32_t(30 + i), 2};
    p.ref_logp_chosen = -3.0 - 1.5 * i;
    p.ref_logp_rejected = -9.0 + 0.5 * i;
    pairs.push_back(p);
  }
  const auto m = distill::preference_metrics(model, std::span<const data::PreferencePair>(pairs), beta, 4);
  int right = 0;
  double margin = 0, drift = 0;
  int64_t tokens = 0;
  for (const auto& p : pairs) {
    const double c = test::answer_logprob(model, p.prompt, p.chosen) - p.ref_logp_chosen;
    const double r = test::answer_logprob(model, p.prompt, p.rejected) - p.ref_logp_rejected;
    right += c > r;
    margin += beta * (c - r) / double(pairs.size());
    drift += c + r;
    tokens += p.chosen_len() + p.rejected_len();
  }
  MESSAGE("accuracy " << m.accuracy << ", margin " << m.reward_margin << ", kl_ref " << m.kl_ref);
  REQUIRE(right > 0);
  REQUIRE(right < int(pairs.size()));  // the check below can tell a swap from the right order
  CHECK(m.pairs == int64_t(pairs.size()));
  CHECK(m.accuracy == double(right) / double(pairs.size()));
  CHECK(std::abs(m.reward_margin - margin) < 1e-4 * (1 + std::abs(margin)));  // beta applied once
  CHECK(std::abs(m.kl_ref - drift / double(tokens)) < 1e-4);                   // per answer token
  CHECK(test::error_of([&] {
          distill::preference_metrics(model, std::span<const data::PreferencePair>(), beta);
        }).find("no pairs") != std::string::npos);
}
