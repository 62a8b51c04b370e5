#pragma once
// The log-probability a model gives a sequence's answer: the sum over answer tokens of
// log p(token | everything before it). It is minus the cross-entropy of the logits rows that
// predict answer tokens, so a forward of the model and the per-row cross-entropy
// (kernels/cross_entropy.hpp, on the model's device) give it without a log-softmax of its own.
//
// The forward is the decoder's step (nn/decoder.hpp), `batch` sequences a step, each in its own
// slot: one step runs the prompts without logits, the next the answers with a logits row per
// token. On the CPU the decoder's products are row-invariant (cpu::linear_rows, cpu::quant_linear_rows), so a sequence's
// value is bitwise the same alone or in any batch: the stored reference log-probabilities do not
// depend on how the pairs were grouped, or where a stopped run continued. (The training forward's
// matrix products round differently with the number of rows.)
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "../autograd/ops.hpp"
#include "../nn/decoder.hpp"
#include "sequence.hpp"

namespace mil::data {

// One sum per sequence, in double (the per-row terms are the model's accumulator type). Every
// sequence needs a prompt and an answer.
template <Element T, Device D>
std::vector<double> answer_logprobs(const nn::HybridModel<T, D>& model,
                                    std::span<const LabelledSequence> seqs, int64_t batch = 4) {
  MIL_CHECK(batch >= 1, "answer_logprobs: batch ", batch, " must be >= 1");
  if (seqs.empty()) return {};
  const int64_t vocab = model.config().llama.vocab;
  int64_t longest = 1, step_tokens = 1;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const LabelledSequence& s = seqs[i];
    MIL_CHECK(s.prompt_len >= 1 && s.answer_len() >= 1, "answer_logprobs: sequence ", i, " has ",
              s.prompt_len, " prompt and ", s.answer_len(), " answer tokens (each needs 1 or more)");
    for (int32_t id : s.tokens)
      MIL_CHECK(id >= 0 && id < vocab, "answer_logprobs: sequence ", i, " has token id ", id,
                ", outside the model's vocabulary of ", vocab);
    longest = std::max(longest, int64_t(s.tokens.size()));
  }
  // A step holds at most `batch` sequences; its token budget is the largest such group's.
  for (size_t first = 0; first < seqs.size(); first += size_t(batch)) {
    int64_t tokens = 0;
    for (size_t i = first; i < std::min(seqs.size(), first + size_t(batch)); ++i)
      tokens += int64_t(seqs[i].tokens.size());
    step_tokens = std::max(step_tokens, tokens);
  }
  nn::DecoderOptions o;
  o.slots = std::min<int64_t>(batch, int64_t(seqs.size()));
  o.max_seq = longest;
  o.max_tokens = std::max(step_tokens, o.slots);
  o.max_logits = o.max_tokens;
  o.cuda_graphs = false;  // steps of varying shapes: nothing to replay
  nn::Decoder<T, D> dec(model, o);

  std::vector<double> out(seqs.size(), 0.0);
  std::vector<nn::StepRow> rows;
  std::vector<int32_t> targets;
  for (size_t first = 0; first < seqs.size(); first += size_t(batch)) {
    const size_t count = std::min(seqs.size() - first, size_t(batch));
    // The prompts but their last token, which predicts the first answer token.
    rows.clear();
    for (size_t i = 0; i < count; ++i) {
      const LabelledSequence& s = seqs[first + i];
      if (s.prompt_len > 1)
        rows.push_back({int32_t(i), std::span(s.tokens).first(size_t(s.prompt_len - 1)), 0,
                        nn::RowLogits::none});
    }
    if (!rows.empty()) dec.step(rows);
    // From the last prompt token on, a logits row per token but the sequence's last.
    rows.clear();
    targets.clear();
    for (size_t i = 0; i < count; ++i) {
      const LabelledSequence& s = seqs[first + i];
      const auto ids = std::span(s.tokens).subspan(size_t(s.prompt_len - 1), size_t(s.answer_len()));
      rows.push_back({int32_t(i), ids, s.prompt_len > 1 ? -1 : 0, nn::RowLogits::all});
      targets.insert(targets.end(), s.tokens.begin() + s.prompt_len, s.tokens.end());
    }
    dec.step(rows);
    const Tensor<T, D> logits = dec.logits();
    const int64_t n = int64_t(targets.size());
    MIL_CHECK(logits.size(0) == n, "answer_logprobs: ", logits.size(0), " logits rows for ", n,
              " answer tokens");
    const auto target_ids = Tensor<int32_t, D>::from(Shape{n}, targets);
    auto losses = ag::Acc<T, D>::empty(Shape{n});
    MIL_RUN(D, cross_entropy_forward_backward, losses.data(), static_cast<T*>(nullptr),
            logits.data(), target_ids.data(), n, vocab, 0.f, -100);
    const auto per_row = losses.to_vector();
    int64_t row = 0;
    for (size_t i = 0; i < count; ++i) {
      double sum = 0;  // in position order
      for (int64_t j = 0; j < seqs[first + i].answer_len(); ++j) sum -= double(per_row[size_t(row++)]);
      out[first + i] = sum;
    }
  }
  return out;
}

}  // namespace mil::data
