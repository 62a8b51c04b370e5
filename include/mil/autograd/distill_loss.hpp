#pragma once
// The distillation loss as autograd ops (formulas in kernels/distill_loss.hpp):
//   loss = mean over rows of  alpha CE(student, label) + beta tau^2 KL(teacher || student)
// at temperature tau, the mean over answer tokens (labels other than ignore_index) or, as the
// reference implementation does, over all rows. Like ag::cross_entropy it is a seed of the
// backward pass: the student's gradient is computed in the same pass as the loss and handed over
// when the tape runs backward. The teacher is a plain tensor and gets no gradient.
//
// distill_loss_lm_head fuses the output heads: logits are formed chunk_rows rows at a time into a
// scratch chunk, so neither model's [rows, vocab] logits exist at once, and the gradient reaches
// the hidden states (and a trainable head) chunk by chunk.
#include <algorithm>
#include <cstdint>

#include "../kernels/distill_loss.hpp"
#if defined(__CUDACC__)
#include "../kernels/distill_loss.cuh"
#endif
#include "ops.hpp"

namespace mil::ag {

struct DistillLossConfig {
  float ce_weight = 0.f;            // alpha
  float kl_weight = 1.f;            // beta
  float temperature = 1.f;          // tau (> 0)
  bool mean_over_all_rows = false;  // false: mean per answer token; true: the reference's batch mean
  int32_t ignore_index = -100;
};

template <Element T, Device D>
struct DistillLoss {
  Acc<T, D> ce, kl;       // per row (0 where ignored)
  int64_t count = 0;      // rows that count (answer tokens)
  int64_t rows = 0;
  DistillLossConfig config;

  // Host means, normalised as configured (synchronise on the GPU).
  double mean_ce() const { return normalised_sum(ce); }
  double mean_kl() const { return normalised_sum(kl); }
  double mean() const {
    const double tau = config.temperature;
    return config.ce_weight * mean_ce() + config.kl_weight * tau * tau * mean_kl();
  }
  // The divisor of the sums: answer tokens, or all rows.
  int64_t divisor() const { return config.mean_over_all_rows ? rows : count; }

 private:
  double normalised_sum(const Acc<T, D>& per_row) const {
    double sum = 0;
    for (auto x : per_row.to_vector()) sum += double(x);
    return divisor() ? sum / double(divisor()) : 0.0;
  }
};

namespace distill_detail {

// Validates config and labels (on the host), and fills in everything but the per-row losses.
template <Element T, Device D>
DistillLoss<T, D> begin(const Tensor<int32_t, D>& targets, int64_t rows, int64_t vocab,
                        const DistillLossConfig& config) {
  MIL_CHECK(targets.numel() == rows, "distill_loss: ", targets.numel(), " labels for ", rows,
            " rows of logits");
  MIL_CHECK(std::isfinite(config.ce_weight) && std::isfinite(config.kl_weight),
            "distill_loss: non-finite weights ce_weight=", config.ce_weight,
            " kl_weight=", config.kl_weight);
  check_distill_params(DistillLossParams{config.temperature}, rows, vocab);
  auto labels = targets.to_vector();
  check_distill_targets(labels.data(), rows, vocab, config.ignore_index);
  DistillLoss<T, D> loss;
  loss.rows = rows;
  loss.config = config;
  for (int32_t y : labels) loss.count += y != config.ignore_index;
  loss.ce = Acc<T, D>::empty(Shape{rows});
  loss.kl = Acc<T, D>::empty(Shape{rows});
  return loss;
}

// The kernel's constants: the gradient of the normalised loss with respect to ce[r] and kl[r].
inline DistillLossParams params(const DistillLossConfig& c, int64_t divisor) {
  const float n = divisor ? float(divisor) : 1.f, tau = c.temperature;
  return {tau, divisor ? c.ce_weight / n : 0.f, divisor ? c.kl_weight * tau * tau / n : 0.f,
          c.ignore_index};
}

}  // namespace distill_detail

// student_logits [rows, V] (on the tape), teacher_logits [rows, V] (no gradient), targets [rows].
template <Element T, Device D>
DistillLoss<T, D> distill_loss(Tape& tape, const Var<T, D>& student_logits,
                               const Tensor<T, D>& teacher_logits,
                               const Tensor<int32_t, D>& targets, const DistillLossConfig& config) {
  check_rank2("distill_loss student logits", student_logits.shape());
  check_same_shape("distill_loss teacher logits", teacher_logits, student_logits.value());
  const int64_t rows = student_logits.size(0), vocab = student_logits.size(1);
  auto loss = distill_detail::begin<T, D>(targets, rows, vocab, config);
  const bool record = tape.recording() && student_logits.requires_grad();
  Tensor<T, D> dstudent = record ? Tensor<T, D>::empty(student_logits.shape()) : Tensor<T, D>();
  MIL_RUN(D, distill_loss_forward_backward, loss.ce.data(), loss.kl.data(), dstudent.data(),
          student_logits.value().data(), teacher_logits.data(), targets.data(), rows, vocab,
          distill_detail::params(config, loss.divisor()));
  struct Node {
    Var<T, D> logits;
    Tensor<T, D> dlogits;
    void backward() { give_grad(logits, std::move(dlogits)); }
  };
  if (record) tape.record(Node{student_logits, std::move(dstudent)});
  return loss;
}

// student_hidden [rows, d] (on the tape), student_head [V, d] (on the tape, trainable or not),
// teacher_hidden [rows, d] and teacher_head [V, d] (no gradient), targets [rows]. Equal to
// distill_loss on hidden head^T up to the order of float sums (in bf16, the head's gradient is
// also rounded to bf16 once per chunk as it accumulates). Scratch: two [chunk_rows, V] logit
// chunks (the student's becomes its gradient in place).
template <Element T, Device D>
DistillLoss<T, D> distill_loss_lm_head(Tape& tape, const Var<T, D>& student_hidden,
                                       const Var<T, D>& student_head,
                                       const Tensor<T, D>& teacher_hidden,
                                       const Tensor<T, D>& teacher_head,
                                       const Tensor<int32_t, D>& targets,
                                       const DistillLossConfig& config,
                                       int64_t chunk_rows = 1024) {
  check_rank2("distill_loss_lm_head student hidden", student_hidden.shape());
  check_rank2("distill_loss_lm_head student head", student_head.shape());
  check_same_shape("distill_loss_lm_head teacher hidden", teacher_hidden, student_hidden.value());
  check_rank2("distill_loss_lm_head teacher head", teacher_head.shape());
  const int64_t rows = student_hidden.size(0), dim = student_hidden.size(1),
                vocab = student_head.size(0);
  MIL_CHECK(student_head.size(1) == dim, "distill_loss_lm_head: student head ",
            student_head.shape().str(), " does not take hidden states of width ", dim);
  MIL_CHECK(teacher_head.size(0) == vocab && teacher_head.size(1) == dim,
            "distill_loss_lm_head: teacher head ", teacher_head.shape().str(),
            " differs from the student head ", student_head.shape().str());
  MIL_CHECK(chunk_rows > 0, "distill_loss_lm_head: chunk_rows must be positive, got ", chunk_rows);
  auto loss = distill_detail::begin<T, D>(targets, rows, vocab, config);
  const DistillLossParams params = distill_detail::params(config, loss.divisor());
  const bool grad_hidden = student_hidden.requires_grad(), grad_head = student_head.requires_grad();
  const bool record = tape.recording() && (grad_hidden || grad_head);

  const int64_t chunk = std::min(chunk_rows, std::max<int64_t>(rows, 1));
  Tensor<T, D> student_chunk = Tensor<T, D>::empty(Shape{chunk, vocab});
  Tensor<T, D> teacher_chunk = Tensor<T, D>::empty(Shape{chunk, vocab});
  Tensor<T, D> dhidden = record && grad_hidden ? Tensor<T, D>::empty(student_hidden.shape())
                                               : Tensor<T, D>();
  Tensor<T, D> dhead = record && grad_head ? Tensor<T, D>::empty(student_head.shape())
                                           : Tensor<T, D>();
  const T* hidden = student_hidden.value().data();
  const T* head = student_head.value().data();
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    T* s = student_chunk.data();
    T* t = teacher_chunk.data();
    // Logits of both models for rows [r0, r0 + n): hidden head^T.
    MIL_RUN(D, matmul, GemmShape{n, vocab, dim, false, true}, s, hidden + r0 * dim, head);
    MIL_RUN(D, matmul, GemmShape{n, vocab, dim, false, true}, t, teacher_hidden.data() + r0 * dim,
            teacher_head.data());
    // Loss of the chunk; its gradient replaces the student's logits.
    MIL_RUN(D, distill_loss_forward_backward, loss.ce.data() + r0, loss.kl.data() + r0,
            record ? s : nullptr, s, t, targets.data() + r0, n, vocab, params);
    if (!record) continue;
    if (grad_hidden)  // dhidden[r0 : r0 + n] = ds head
      MIL_RUN(D, matmul, GemmShape{n, dim, vocab}, dhidden.data() + r0 * dim, s, head);
    if (grad_head) {  // dhead += ds^T hidden[r0 : r0 + n]
      GemmShape g{vocab, dim, n, true, false};
      g.beta = r0 > 0 ? 1.f : 0.f;
      MIL_RUN(D, matmul, g, dhead.data(), s, hidden + r0 * dim);
    }
  }
  if (record && grad_head && rows == 0) dhead.zero_();
  struct Node {
    Var<T, D> hidden, head;
    Tensor<T, D> dhidden, dhead;
    void backward() {
      if (dhidden.defined()) give_grad(hidden, std::move(dhidden));
      if (dhead.defined()) give_grad(head, std::move(dhead));
    }
  };
  if (record) tape.record(Node{student_hidden, student_head, std::move(dhidden), std::move(dhead)});
  return loss;
}

}  // namespace mil::ag
