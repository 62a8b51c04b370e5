#pragma once
// How close a model comes to its teacher on held-out teacher answers (docs/METHOD.md §7): the
// perplexity of both on the answers and its ratio, the token KL(teacher || model) and how often
// the two agree on the top token. Only answer positions count: position t, which predicts token
// t + 1, counts when token t + 1 belongs to the answer. Sums are kept in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <vector>

#include "../data/sequence.hpp"
#include "../nn/hybrid.hpp"

namespace mil::eval {

struct TeacherRelative {
  double teacher_nll = 0, model_nll = 0;  // mean negative log-likelihood of the labels (nats)
  double teacher_ppl = 0, model_ppl = 0;  // exp of the above
  double ppl_ratio = 0;                   // model_ppl / teacher_ppl
  double kl = 0;                          // mean KL(p_teacher || p_model), nats per token
  double top1_agreement = 0;              // fraction of positions with equal argmax
  int64_t tokens = 0;                     // answer positions scored
  int64_t sequences = 0;                  // sequences with at least one
};

// Running sums over scored positions.
class TeacherRelativeSums {
 public:
  // One position: the two models' logits over the vocabulary and the label (the token that
  // follows). Ties in the argmax go to the smaller id, as kernels/argmax does.
  template <class L>
  void add_position(const L* teacher_logits, const L* model_logits, int64_t vocab, int32_t label) {
    MIL_CHECK(label >= 0 && label < vocab, "teacher_relative: label ", label,
              " is outside the vocabulary of ", vocab);
    log_softmax(teacher_logits, vocab, lp_teacher_);
    log_softmax(model_logits, vocab, lp_model_);
    double kl = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double lt = lp_teacher_[size_t(v)];
      kl += std::exp(lt) * (lt - lp_model_[size_t(v)]);
    }
    teacher_nll_ -= lp_teacher_[size_t(label)];
    model_nll_ -= lp_model_[size_t(label)];
    kl_ += kl;
    agree_ += argmax(lp_teacher_) == argmax(lp_model_);
    ++tokens_;
  }

  // The answer positions of one sequence: `logits` of both models hold one row of `vocab` per
  // token of `tokens` (a sequence cut to tokens.size()), row t predicting token t + 1.
  template <class L>
  void add_sequence(const L* teacher_logits, const L* model_logits, int64_t vocab,
                    std::span<const int32_t> tokens, int64_t prompt_len) {
    const int64_t n = int64_t(tokens.size());
    const int64_t first = std::max<int64_t>(prompt_len, 1) - 1;  // predicts the first answer token
    if (first + 1 >= n) return;
    for (int64_t t = first; t + 1 < n; ++t)
      add_position(teacher_logits + t * vocab, model_logits + t * vocab, vocab, tokens[size_t(t + 1)]);
    ++sequences_;
  }

  TeacherRelative result() const {
    TeacherRelative r;
    r.tokens = tokens_;
    r.sequences = sequences_;
    if (tokens_ == 0) return r;
    const double n = double(tokens_);
    r.teacher_nll = teacher_nll_ / n;
    r.model_nll = model_nll_ / n;
    r.teacher_ppl = std::exp(r.teacher_nll);
    r.model_ppl = std::exp(r.model_nll);
    r.ppl_ratio = std::exp(r.model_nll - r.teacher_nll);  // exact 1 for equal sums
    r.kl = kl_ / n;
    r.top1_agreement = double(agree_) / n;
    return r;
  }

 private:
  template <class L>
  static void log_softmax(const L* x, int64_t vocab, std::vector<double>& out) {
    out.resize(size_t(vocab));
    double mx = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, double(to_acc(x[v])));
    double z = 0;
    for (int64_t v = 0; v < vocab; ++v) z += std::exp(double(to_acc(x[v])) - mx);
    const double log_z = mx + std::log(z);
    for (int64_t v = 0; v < vocab; ++v) out[size_t(v)] = double(to_acc(x[v])) - log_z;
  }
  static size_t argmax(const std::vector<double>& x) {
    return size_t(std::max_element(x.begin(), x.end()) - x.begin());  // first of equal maxima
  }

  double teacher_nll_ = 0, model_nll_ = 0, kl_ = 0;
  int64_t agree_ = 0, tokens_ = 0, sequences_ = 0;
  std::vector<double> lp_teacher_, lp_model_;
};

struct EvalOptions {
  int64_t max_len = 2048;       // sequences are cut to their first max_len tokens
  int64_t batch_tokens = 2048;  // padded tokens per forward (at least one sequence)
  // Called after each batch with (sequences done, sequences in all): a progress bar.
  std::function<void(int64_t, int64_t)> on_progress;
};

namespace detail {

// Logits [batch * seq, vocab] of `ids` (sequences right-padded to seq), on the host.
template <Element T, Device D>
Tensor<T, Cpu> forward_logits(const nn::HybridModel<T, D>& model, const std::vector<int32_t>& ids,
                              int64_t batch, int64_t seq) {
  ag::Tape tape;
  ag::NoGrad no_grad(tape);
  const auto logits = model.forward(tape, Tensor<int32_t, D>::from(Shape{batch * seq}, ids),
                                    nn::sequence_positions<D>(batch, seq), batch, seq);
  if constexpr (std::is_same_v<D, Cpu>) return logits.value();
  else return logits.value().template to<Cpu>();
}

}  // namespace detail

// Teacher-relative metrics of `model` on the answers of `seqs`. Sequences are cut to max_len,
// sorted by length and run in batches of at most batch_tokens padded tokens, padded on the right:
// both models are causal, so padding after a sequence changes none of its logits.
template <Element T, Device D>
TeacherRelative teacher_relative(const nn::HybridModel<T, D>& teacher,
                                 const nn::HybridModel<T, D>& model,
                                 std::span<const data::LabelledSequence> seqs,
                                 const EvalOptions& o = {}) {
  const int64_t vocab = teacher.config().llama.vocab;
  MIL_CHECK(model.config().llama.vocab == vocab, "teacher_relative: the model's vocabulary (",
            model.config().llama.vocab, ") is not the teacher's (", vocab, ")");
  MIL_CHECK(o.max_len >= 2 && o.batch_tokens >= 1, "teacher_relative: max_len (", o.max_len,
            ") must be >= 2 and batch_tokens (", o.batch_tokens, ") >= 1");
  auto cut = [&](const data::LabelledSequence& s) {
    return std::min<int64_t>(int64_t(s.tokens.size()), o.max_len);
  };
  std::vector<size_t> order;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& s = seqs[i];
    MIL_CHECK(s.prompt_len >= 0 && s.prompt_len <= int64_t(s.tokens.size()), "teacher_relative: ",
              "sequence ", i, " has prompt_len ", s.prompt_len, " for ", s.tokens.size(), " tokens");
    for (int64_t t = 0; t < cut(s); ++t)
      MIL_CHECK(s.tokens[size_t(t)] >= 0 && s.tokens[size_t(t)] < vocab, "teacher_relative: ",
                "sequence ", i, " token ", t, " is ", s.tokens[size_t(t)],
                ", outside the vocabulary of ", vocab);
    if (cut(s) > std::max<int64_t>(s.prompt_len, 1)) order.push_back(i);  // has answer tokens
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return cut(seqs[a]) < cut(seqs[b]); });

  TeacherRelativeSums sums;
  std::vector<int32_t> ids;
  for (size_t begin = 0; begin < order.size();) {
    // Sorted by length, so the batch's last sequence is its longest.
    size_t end = begin + 1;
    while (end < order.size() && int64_t(end + 1 - begin) * cut(seqs[order[end]]) <= o.batch_tokens)
      ++end;
    const int64_t batch = int64_t(end - begin), seq = cut(seqs[order[end - 1]]);
    ids.assign(size_t(batch * seq), 0);
    for (int64_t b = 0; b < batch; ++b) {
      const auto& s = seqs[order[begin + size_t(b)]];
      std::copy_n(s.tokens.begin(), cut(s), ids.begin() + b * seq);
    }
    const auto lt = detail::forward_logits(teacher, ids, batch, seq);
    const auto lm = detail::forward_logits(model, ids, batch, seq);
    for (int64_t b = 0; b < batch; ++b) {
      const auto& s = seqs[order[begin + size_t(b)]];
      sums.add_sequence(lt.data() + b * seq * vocab, lm.data() + b * seq * vocab, vocab,
                        std::span(s.tokens).first(size_t(cut(s))), s.prompt_len);
    }
    begin = end;
    if (o.on_progress) o.on_progress(int64_t(begin), int64_t(order.size()));
  }
  return sums.result();
}

}  // namespace mil::eval
