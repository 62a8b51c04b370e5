#pragma once
// Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k,
// top-p (nucleus) and min-p, after a repetition penalty; reproducible from a seed.
//
// The order is the one llama.cpp's default chain uses: repetition penalty on the raw logits, then
// top-k, then the softmax at the temperature, then top-p and min-p on those probabilities, then one
// draw. Temperature 0 means greedy (the largest logit, ties to the smaller id). Draw i of a
// sampler comes from Philox stream (seed, i), so a run is reproducible on any machine.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"

namespace mil::gen {

struct SamplingConfig {
  float temperature = 0.8f;        // 0: greedy
  int32_t top_k = 40;              // 0: off
  float top_p = 0.95f;             // 1: off
  float min_p = 0.05f;             // 0: off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.f;  // 1: off; > 1 discourages tokens of the recent window
  int32_t repeat_last_n = 64;      // size of that window
  uint64_t seed = 0;

  void validate() const {
    MIL_CHECK(std::isfinite(temperature) && temperature >= 0.f, "sampling: temperature ",
              temperature, " must be >= 0");
    MIL_CHECK(top_k >= 0, "sampling: top-k ", top_k, " must be >= 0");
    MIL_CHECK(top_p > 0.f && top_p <= 1.f, "sampling: top-p ", top_p, " must be in (0, 1]");
    MIL_CHECK(min_p >= 0.f && min_p <= 1.f, "sampling: min-p ", min_p, " must be in [0, 1]");
    MIL_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.f,
              "sampling: repetition penalty ", repetition_penalty, " must be > 0");
    MIL_CHECK(repeat_last_n >= 0, "sampling: repeat-last-n ", repeat_last_n, " must be >= 0");
  }
  bool greedy() const { return temperature == 0.f; }
};

// The largest finite-or-infinite non-NaN logit, ties to the smaller id (as kernels/argmax.hpp).
inline int32_t greedy_token(std::span<const float> logits) {
  int32_t best = 0;
  bool found = false;
  for (size_t i = 0; i < logits.size(); ++i)
    if (!std::isnan(logits[i]) && (!found || logits[i] > logits[size_t(best)])) {
      best = int32_t(i);
      found = true;
    }
  return best;
}

// The distribution a sampler draws from: the candidates its chain keeps, best first, with weights
// proportional to their probabilities (total: the weights' sum, added in order). Greedy decoding
// gives one candidate of weight 1.
struct TokenDistribution {
  std::vector<int32_t> ids;
  std::vector<double> weights;
  double total = 0;

  double prob(int32_t id) const {
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == id) return weights[i] / total;
    return 0;
  }
};

class Sampler {
 public:
  explicit Sampler(SamplingConfig c) : c_(c) { c_.validate(); }
  const SamplingConfig& config() const { return c_; }

  // The next token after `history` (all tokens so far; the penalty looks at its last
  // repeat_last_n). `logits` is one row over the vocabulary; it is not modified.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history) {
    if (c_.greedy()) {
      ++draws_;
      return greedy_token(penalised(logits, history));
    }
    return draw(distribution(logits, history));
  }

  // What sample() draws from, without drawing.
  TokenDistribution distribution(std::span<const float> logits, std::span<const int32_t> history) {
    const auto& work = penalised(logits, history);
    if (c_.greedy()) return {{greedy_token(work)}, {1.0}, 1.0};
    // Candidates: non-NaN logits, the top_k largest (ties to the smaller id), sorted descending.
    const int64_t vocab = int64_t(logits.size());
    ids_.clear();
    for (int64_t i = 0; i < vocab; ++i)
      if (!std::isnan(work[size_t(i)]) && work[size_t(i)] > -INFINITY) ids_.push_back(int32_t(i));
    if (ids_.empty()) return {{greedy_token(logits)}, {1.0}, 1.0};
    auto before = [&](int32_t a, int32_t b) {
      return work[size_t(a)] > work[size_t(b)] || (work[size_t(a)] == work[size_t(b)] && a < b);
    };
    const size_t k = c_.top_k > 0 ? std::min(ids_.size(), size_t(c_.top_k)) : ids_.size();
    std::partial_sort(ids_.begin(), ids_.begin() + ptrdiff_t(k), ids_.end(), before);
    ids_.resize(k);
    return truncate(ids_, [&](size_t i) { return work[size_t(ids_[i])]; });
  }

  // One draw from `d` (the sampler's next draw of its stream).
  int32_t draw(const TokenDistribution& d) {
    MIL_CHECK(!d.ids.empty() && d.total > 0, "sampler: drawing from an empty distribution");
    const double u = uniform() * d.total;
    double acc = 0;
    for (size_t i = 0; i < d.ids.size(); ++i) {
      acc += d.weights[i];
      if (u < acc) return d.ids[i];
    }
    return d.ids.back();
  }

  // The next draw of the stream as a number in [0, 1).
  double uniform() { return double(rng::uniform(c_.seed, draws_++, 0, 0.f, 1.f)); }

  // Whether sample_top gives what sample would with the row's first k candidates: no penalty
  // (it changes the logits before the top-k), and greedy or a top-k of at most k.
  bool samples_from_top(int32_t k) const {
    return c_.repetition_penalty == 1.f && (c_.greedy() || (c_.top_k > 0 && c_.top_k <= k));
  }

  // The same token as sample() on the whole row (for any row with a candidate), given the row's
  // first k candidates in the sampler's order (larger logit, then smaller id; NaN and -inf left
  // out; id -1 pads a short row), e.g. from a top-k kernel on the GPU (kernels/topk.hpp). Needs
  // samples_from_top(k).
  int32_t sample_top(std::span<const int32_t> ids, std::span<const float> logits) {
    MIL_CHECK(ids.size() == logits.size() && !ids.empty() && samples_from_top(int32_t(ids.size())),
              "sampler: sample_top needs the top ", c_.top_k, " candidates and no repetition ",
              "penalty (got ", ids.size(), ")");
    size_t n = 0;
    while (n < ids.size() && ids[n] >= 0) ++n;
    // No candidate (a broken model's row of NaN and -inf): 0, where sample() on the whole row
    // gives its first non-NaN index.
    if (n == 0 || c_.greedy()) {
      ++draws_;
      return n == 0 ? 0 : ids[0];
    }
    return draw(truncate(ids.first(std::min(n, size_t(c_.top_k))), [&](size_t i) { return logits[i]; }));
  }

 private:
  // The logits after the repetition penalty (a copy; the row is not modified).
  const std::vector<float>& penalised(std::span<const float> logits, std::span<const int32_t> history) {
    MIL_CHECK(!logits.empty(), "sampler: empty logits row");
    const int64_t vocab = int64_t(logits.size());
    work_.assign(logits.begin(), logits.end());
    if (c_.repetition_penalty != 1.f) {
      const size_t n = std::min(history.size(), size_t(c_.repeat_last_n));
      seen_.assign(size_t(vocab), false);
      for (int32_t id : history.last(n)) {
        if (id < 0 || id >= vocab || seen_[size_t(id)]) continue;
        seen_[size_t(id)] = true;
        float& l = work_[size_t(id)];
        l = l > 0.f ? l / c_.repetition_penalty : l * c_.repetition_penalty;
      }
    }
    return work_;
  }

  // The distribution over candidates `ids` (sorted, best first) whose logits logit(i) gives:
  // softmax at the temperature in double, then top-p and min-p.
  template <class Logit>
  TokenDistribution truncate(std::span<const int32_t> ids, Logit&& logit) const {
    const size_t k = ids.size();
    TokenDistribution d;
    d.weights.resize(k);
    const double top = logit(0);
    double sum = 0;
    for (size_t i = 0; i < k; ++i) sum += d.weights[i] = std::exp((double(logit(i)) - top) / c_.temperature);
    // top-p: the smallest prefix whose mass reaches top_p; min-p: p >= min_p * p_max.
    size_t keep = k;
    if (c_.top_p < 1.f) {
      double mass = 0;
      for (size_t i = 0; i < k; ++i) {
        mass += d.weights[i] / sum;
        if (mass >= double(c_.top_p)) {
          keep = i + 1;
          break;
        }
      }
    }
    if (c_.min_p > 0.f)
      while (keep > 1 && d.weights[keep - 1] < double(c_.min_p) * d.weights[0]) --keep;
    d.weights.resize(keep);
    d.ids.assign(ids.begin(), ids.begin() + ptrdiff_t(keep));
    for (size_t i = 0; i < keep; ++i) d.total += d.weights[i];
    return d;
  }

  SamplingConfig c_;
  uint64_t draws_ = 0;
  std::vector<float> work_;
  std::vector<int32_t> ids_;
  std::vector<bool> seen_;
};

}  // namespace mil::gen
