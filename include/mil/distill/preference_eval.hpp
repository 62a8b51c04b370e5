#pragma once
// How a model ranks held-out preference pairs against their stored reference log-probabilities
// (docs/METHOD.md §5, stage 3): the rewards beta (logp - ref) of both answers, with logp from the
// decoder's step (data::answer_logprobs, bitwise the same in any batch), their mean margin, the
// share of pairs whose chosen answer gets the larger reward, and the mean over answer tokens of
// (logp - ref), how far the model has moved from the reference.
#include <cstdint>
#include <span>
#include <vector>

#include "../data/preference_pair.hpp"
#include "../data/sequence_logprob.hpp"

namespace mil::distill {

struct PreferenceMetrics {
  int64_t pairs = 0;
  double accuracy = 0;       // share of pairs with chosen reward > rejected reward
  double reward_margin = 0;  // mean of (chosen - rejected) reward
  double kl_ref = 0;         // mean over answer tokens of (logp - ref)
};

template <Element T, Device D>
PreferenceMetrics preference_metrics(const nn::HybridModel<T, D>& model,
                                     std::span<const data::PreferencePair> pairs, double beta,
                                     int64_t batch = 4) {
  MIL_CHECK(!pairs.empty(), "preference metrics: no pairs");
  std::vector<data::LabelledSequence> seqs;
  for (const data::PreferencePair& p : pairs) {
    seqs.push_back(data::chosen_sequence(p));
    seqs.push_back(data::rejected_sequence(p));
  }
  const std::vector<double> lp =
      data::answer_logprobs(model, std::span<const data::LabelledSequence>(seqs), batch);
  PreferenceMetrics m;
  m.pairs = int64_t(pairs.size());
  int64_t right = 0, tokens = 0;
  double drift = 0;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const data::PreferencePair& p = pairs[i];
    const double chosen = lp[2 * i] - p.ref_logp_chosen, rejected = lp[2 * i + 1] - p.ref_logp_rejected;
    right += chosen > rejected;
    m.reward_margin += beta * (chosen - rejected) / double(m.pairs);
    drift += chosen + rejected;
    tokens += p.chosen_len() + p.rejected_len();
  }
  m.accuracy = double(right) / double(m.pairs);
  m.kl_ref = drift / double(tokens);
  return m;
}

}  // namespace mil::distill
