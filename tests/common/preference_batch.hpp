#pragma once
// A batch of preference pairs for the DPO loss tests: sequence 2p is pair p's chosen answer and
// 2p + 1 its rejected one; sequence s has prompts[s] prompt rows, answers[s] answer rows and
// pads[s] padding rows (prompt and padding rows carry the ignore index -100). Logits are random
// and representable in T; the reference log-probabilities lie near answers[s] (log vocab +
// ref_shift) below 0, give or take 3, so that the margins come out of either sign.
#include <cmath>
#include <cstdint>
#include <vector>

#include "random.hpp"

namespace mil::test {

template <class V>
struct PreferenceBatch {
  int64_t rows = 0, vocab = 0;
  std::vector<V> logits;  // [rows, vocab]
  std::vector<int32_t> targets;
  std::vector<int64_t> offsets{0};
  std::vector<double> ref;
};

template <class T, class V = double>
PreferenceBatch<V> make_preference_batch(const std::vector<int64_t>& prompts,
                                         const std::vector<int64_t>& answers,
                                         const std::vector<int64_t>& pads, int64_t vocab,
                                         uint64_t seed, float range, double ref_shift = 0) {
  PreferenceBatch<V> b;
  b.vocab = vocab;
  for (size_t s = 0; s < prompts.size(); ++s) {
    b.targets.insert(b.targets.end(), size_t(prompts[s]), -100);
    for (int64_t i = 0; i < answers[s]; ++i)
      b.targets.push_back(int32_t((int64_t(b.targets.size()) * 7919 + int64_t(seed)) % vocab));
    b.targets.insert(b.targets.end(), size_t(pads[s]), -100);
    b.offsets.push_back(int64_t(b.targets.size()));
  }
  b.rows = int64_t(b.targets.size());
  b.logits = cast_vector<V>(representable<T>(size_t(b.rows * vocab), seed, -range, range));
  const auto noise = random_vector(prompts.size(), seed + 1, -3.f, 3.f);
  for (size_t s = 0; s < prompts.size(); ++s)
    b.ref.push_back(-double(answers[s]) * (std::log(double(vocab)) + ref_shift) + noise[s]);
  return b;
}

}  // namespace mil::test
