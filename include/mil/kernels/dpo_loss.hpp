#pragma once
// The DPO objective of one preference pair, in double on the host for either device (one value
// per pair: the sequence log-probabilities it needs, sequence_logprob.hpp, are a few values per
// batch). With the policy's log-probabilities pi_w (chosen) and pi_l (rejected) and the reference's
// ref_w and ref_l, the implicit reward margin is
//   h = (pi_w - ref_w) - (pi_l - ref_l)
// and the loss of the pair, at strength beta > 0:
//   sigmoid   -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
//             (eps = 0: DPO; eps > 0: conservative DPO, the preference label flipped with
//              probability eps)
//   ipo       (h - 1 / (2 beta))^2
// log sigmoid(x) = -softplus(-x) with softplus(x) = max(x, 0) + log1p(exp(-|x|)), finite for
// every finite x, and sigmoid(x) = exp(-softplus(-x)) in the gradient.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../core/error.hpp"

namespace mil {

enum class DpoObjective : uint8_t { sigmoid, ipo };

struct DpoParams {
  double beta = 0.1;
  double label_smoothing = 0.0;  // eps in [0, 0.5], sigmoid only
  DpoObjective objective = DpoObjective::sigmoid;
};

inline void check_dpo_params(const DpoParams& p) {
  MIL_CHECK(p.beta > 0 && std::isfinite(p.beta), "dpo_loss: beta must be positive and finite, got ",
            p.beta);
  MIL_CHECK(p.label_smoothing >= 0 && p.label_smoothing <= 0.5,
            "dpo_loss: label smoothing must lie in [0, 0.5], got ", p.label_smoothing);
  MIL_CHECK(p.objective == DpoObjective::sigmoid || p.label_smoothing == 0,
            "dpo_loss: label smoothing applies to the sigmoid loss only, not IPO");
}

inline double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }

// The loss of one pair and its derivative with respect to the margin h.
struct DpoPairLoss {
  double loss, dloss_dmargin;
};

inline DpoPairLoss dpo_pair_loss(double h, const DpoParams& p) {
  const double b = p.beta;
  if (p.objective == DpoObjective::ipo) {
    const double d = h - 1 / (2 * b);
    return {d * d, 2 * d};
  }
  const double eps = p.label_smoothing, x = b * h;
  // -log sigmoid(x) = softplus(-x); d/dx softplus(-x) = -sigmoid(-x).
  const double sigmoid_x = std::exp(-softplus(-x)), sigmoid_neg_x = std::exp(-softplus(x));
  return {(1 - eps) * softplus(-x) + eps * softplus(x),
          b * (-(1 - eps) * sigmoid_neg_x + eps * sigmoid_x)};
}

}  // namespace mil
