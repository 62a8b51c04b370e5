#pragma once
// The DPO loss as autograd ops, on the policy's logits of a batch of preference pairs: the mean
// over pairs of the objective in kernels/dpo_loss.hpp, on the per-sequence answer log-probabilities
// of kernels/sequence_logprob.hpp against stored reference log-probabilities. Sequence 2p of the
// layout is the chosen answer of pair p and sequence 2p + 1 the rejected one; each sequence's rows
// carry its prompt (targets = ignore_index) and its answer tokens. Like ag::cross_entropy and
// ag::distill_loss the loss is a seed of the backward pass: the gradient of the policy logits is
// computed in the same call and handed over when the tape runs backward; the reference gets none.
//
// Per call: the cross-entropy kernel reads the logits once for the per-row losses, the host sums
// them per sequence and forms the pairs' losses and gradients (a few values; on the GPU the
// per-row losses come down and the per-row gradient scales go up, [rows] floats each way), and
// the kernel reads the logits again and writes their gradient once.
//
// dpo_loss_lm_head fuses the output head like distill_loss_lm_head (lm_head_chunks.hpp): chunks
// of whole pairs (a pair's gradient needs both of its log-probabilities), as many as fit in
// chunk_rows rows and at least one, so the [rows, vocab] logits never exist at once.
#include <cmath>
#include <cstdint>
#include <vector>

#include "../kernels/cross_entropy.hpp"
#include "../kernels/dpo_loss.hpp"
#include "../kernels/sequence_logprob.hpp"
#if defined(__CUDACC__)
#include "../kernels/cross_entropy.cuh"
#endif
#include "lm_head_chunks.hpp"

namespace mil::ag {

struct DpoLossConfig {
  double beta = 0.1;
  double label_smoothing = 0.0;  // conservative DPO's eps, sigmoid only
  DpoObjective objective = DpoObjective::sigmoid;
  int32_t ignore_index = -100;
  // alpha >= 0: adds alpha times the chosen answer's mean negative log-likelihood to each pair's
  // loss (DPO + NLL, "RPO"). Plain DPO can raise the margin by lowering both answers' likelihood,
  // drifting away from the chosen (here: the teacher's) answers; the NLL term holds them up.
  double chosen_nll_weight = 0.0;
  // Scales the gradient, not the reported loss: a micro-batch's share of an accumulated step.
  double grad_scale = 1.0;
  DpoParams params() const { return {beta, label_smoothing, objective}; }
};

// The loss and the metrics of one batch, on the host.
struct DpoLoss {
  std::vector<double> policy_logps;    // per sequence: sum of the answer tokens' log-probabilities
  std::vector<int64_t> answer_tokens;  // per sequence: rows with a target
  std::vector<double> pair_losses;     // per pair
  std::vector<double> chosen_rewards, rejected_rewards;  // per pair: beta (pi - ref)
  DpoLossConfig config;

  int64_t pairs() const { return int64_t(pair_losses.size()); }
  double mean() const { return average(pair_losses); }  // the loss
  // Mean of chosen minus rejected reward (beta times the margin h).
  double reward_margin() const { return average(chosen_rewards) - average(rejected_rewards); }
  // Share of pairs whose chosen answer gets the larger reward.
  double accuracy() const {
    int64_t right = 0;
    for (size_t p = 0; p < pair_losses.size(); ++p) right += chosen_rewards[p] > rejected_rewards[p];
    return pairs() ? double(right) / double(pairs()) : 0.0;
  }

 private:
  static double average(const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x;
    return v.empty() ? 0.0 : sum / double(v.size());
  }
};

namespace dpo_detail {

// Validates everything on the host before any work; fills in all but the values.
inline DpoLoss begin(const std::vector<int32_t>& targets, int64_t rows, int64_t vocab,
                     const std::vector<int64_t>& offsets, const std::vector<double>& ref_logps,
                     const DpoLossConfig& config) {
  check_dpo_params(config.params());
  MIL_CHECK(config.chosen_nll_weight >= 0 && std::isfinite(config.chosen_nll_weight),
            "dpo_loss: the chosen NLL weight must be >= 0 and finite, got ", config.chosen_nll_weight);
  MIL_CHECK(std::isfinite(config.grad_scale), "dpo_loss: gradient scale ", config.grad_scale);
  MIL_CHECK(int64_t(targets.size()) == rows, "dpo_loss: ", targets.size(), " targets for ", rows,
            " rows of logits");
  check_sequence_offsets(offsets, rows);
  const size_t sequences = offsets.size() - 1;
  MIL_CHECK(sequences % 2 == 0, "dpo_loss: ", sequences,
            " sequences do not form (chosen, rejected) pairs");
  MIL_CHECK(ref_logps.size() == sequences, "dpo_loss: ", ref_logps.size(),
            " reference log-probabilities for ", sequences, " sequences");
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = targets[size_t(r)];
    MIL_CHECK(t == config.ignore_index || (t >= 0 && t < vocab), "dpo_loss: target ", t,
              " at row ", r, " is outside the vocabulary [0, ", vocab,
              ") and is not the ignore index ", config.ignore_index);
  }
  DpoLoss loss;
  loss.config = config;
  loss.answer_tokens.assign(sequences, 0);
  for (size_t s = 0; s < sequences; ++s) {
    MIL_CHECK(std::isfinite(ref_logps[s]), "dpo_loss: reference log-probability of sequence ", s,
              " is ", ref_logps[s]);
    for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r)
      loss.answer_tokens[s] += targets[size_t(r)] != config.ignore_index;
    MIL_CHECK(loss.answer_tokens[s] > 0, "dpo_loss: sequence ", s, " (the ",
              s % 2 ? "rejected" : "chosen", " answer of pair ", s / 2, ") has no answer tokens");
  }
  loss.policy_logps.assign(sequences, 0.0);
  loss.pair_losses.assign(sequences / 2, 0.0);
  loss.chosen_rewards.assign(sequences / 2, 0.0);
  loss.rejected_rewards.assign(sequences / 2, 0.0);
  return loss;
}

// Pairs [p0, p1): their log-probabilities, losses and rewards into `loss`, and with dlogits the
// gradient of loss.mean() (over all pairs) with respect to their logits. logits and dlogits (which
// may be the same buffer) start at row offsets[2 p0]; targets at row 0.
template <Element T, Device D>
void run_pairs(DpoLoss& loss, T* dlogits, const T* logits, const int32_t* targets, int64_t vocab,
               const std::vector<int64_t>& offsets, const std::vector<double>& ref_logps,
               size_t p0, size_t p1) {
  const size_t s0 = 2 * p0, s1 = 2 * p1;
  const int64_t r0 = offsets[s0], rows = offsets[s1] - r0;
  const int32_t ignore = loss.config.ignore_index;
  Acc<T, D> row_nll = Acc<T, D>::empty(Shape{rows});
  MIL_RUN(D, cross_entropy_forward_backward, row_nll.data(), nullptr, logits, targets + r0, rows,
          vocab, 0.f, ignore);
  std::vector<double> logp(s1 - s0), dlogp(s1 - s0);
  sum_per_sequence(logp, row_nll.to_vector(), offsets, s0);
  const DpoParams params = loss.config.params();
  for (size_t p = p0; p < p1; ++p) {
    const size_t w = 2 * p - s0, l = w + 1;
    const double chosen = logp[w] - ref_logps[2 * p], rejected = logp[l] - ref_logps[2 * p + 1];
    const DpoPairLoss pair = dpo_pair_loss(chosen - rejected, params);
    const double alpha = loss.config.chosen_nll_weight, n_w = double(loss.answer_tokens[2 * p]);
    loss.pair_losses[p] = pair.loss - alpha * logp[w] / n_w;
    loss.chosen_rewards[p] = params.beta * chosen;
    loss.rejected_rewards[p] = params.beta * rejected;
    loss.policy_logps[2 * p] = logp[w];
    loss.policy_logps[2 * p + 1] = logp[l];
    const double per_pair = loss.config.grad_scale / double(loss.pairs());
    const double dmargin = pair.dloss_dmargin * per_pair;
    dlogp[w] = dmargin - alpha / n_w * per_pair, dlogp[l] = -dmargin;
  }
  if (!dlogits) return;
  const auto scales =
      Acc<T, D>::from(Shape{rows}, sequence_row_scales<acc_t<T>>(dlogp, offsets, s0));
  MIL_RUN(D, cross_entropy_forward_backward, row_nll.data(), dlogits, logits, targets + r0, rows,
          vocab, 1.f, ignore, scales.data());
}

}  // namespace dpo_detail

// policy_logits [rows, V] (on the tape), targets [rows], sequence_offsets [2 pairs + 1] (host),
// ref_logps [2 pairs] (host, in the order of the sequences).
template <Element T, Device D>
DpoLoss dpo_loss(Tape& tape, const Var<T, D>& policy_logits, const Tensor<int32_t, D>& targets,
                 const std::vector<int64_t>& sequence_offsets, const std::vector<double>& ref_logps,
                 const DpoLossConfig& config) {
  check_rank2("dpo_loss policy logits", policy_logits.shape());
  const int64_t rows = policy_logits.size(0), vocab = policy_logits.size(1);
  DpoLoss loss =
      dpo_detail::begin(targets.to_vector(), rows, vocab, sequence_offsets, ref_logps, config);
  const bool record = tape.recording() && policy_logits.requires_grad();
  Tensor<T, D> dlogits = record ? Tensor<T, D>::empty(policy_logits.shape()) : Tensor<T, D>();
  dpo_detail::run_pairs<T, D>(loss, dlogits.data(), policy_logits.value().data(), targets.data(),
                              vocab, sequence_offsets, ref_logps, 0, size_t(loss.pairs()));
  if (record) record_loss_grad(tape, policy_logits, std::move(dlogits));
  return loss;
}

// hidden [rows, d] and head [V, d] (on the tape, either may be frozen), the rest as dpo_loss.
// Equal to dpo_loss on hidden head^T up to the order of float sums. Scratch: one logits chunk of
// the largest chunk's rows (at least one pair's), which becomes its gradient in place.
template <Element T, Device D>
DpoLoss dpo_loss_lm_head(Tape& tape, const Var<T, D>& hidden, const Var<T, D>& head,
                         const Tensor<int32_t, D>& targets,
                         const std::vector<int64_t>& sequence_offsets,
                         const std::vector<double>& ref_logps, const DpoLossConfig& config,
                         int64_t chunk_rows = 1024) {
  const int64_t vocab = lm_head_vocab("dpo_loss_lm_head", hidden, head);
  MIL_CHECK(chunk_rows > 0, "dpo_loss_lm_head: chunk_rows must be positive, got ", chunk_rows);
  const int64_t rows = hidden.size(0);
  DpoLoss loss =
      dpo_detail::begin(targets.to_vector(), rows, vocab, sequence_offsets, ref_logps, config);
  // Chunk i holds pairs [pair_bounds[i], pair_bounds[i + 1]), rows [bounds[i], bounds[i + 1]).
  const size_t pairs = size_t(loss.pairs());
  std::vector<int64_t> bounds{0};
  std::vector<size_t> pair_bounds{0};
  for (size_t p = 1; p < pairs; ++p)
    if (sequence_offsets[2 * p + 2] - bounds.back() > chunk_rows) {
      bounds.push_back(sequence_offsets[2 * p]);
      pair_bounds.push_back(p);
    }
  if (pairs > 0) bounds.push_back(rows), pair_bounds.push_back(pairs);
  size_t chunk = 0;
  lm_head_loss_chunks(tape, hidden, head, bounds,
                      [&](int64_t, int64_t, T* logits, bool record) {
                        dpo_detail::run_pairs<T, D>(loss, record ? logits : nullptr, logits,
                                                    targets.data(), vocab, sequence_offsets,
                                                    ref_logps, pair_bounds[chunk],
                                                    pair_bounds[chunk + 1]);
                        ++chunk;
                      });
  return loss;
}

}  // namespace mil::ag
