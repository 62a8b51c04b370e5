#pragma once
// The distillation loss as autograd ops (formulas in kernels/distill_loss.hpp):
//   loss = mean over rows of  alpha CE(student, label) + beta tau^2 KL(teacher || student)
// at temperature tau, the mean over answer tokens (labels other than ignore_index) or, as the
// reference implementation does, over all rows. Like ag::cross_entropy it is a seed of the
// backward pass: the student's gradient is computed in the same pass as the loss and handed over
// when the tape runs backward. The teacher is a plain tensor and gets no gradient.
//
// distill_loss_lm_head fuses the output heads: logits are formed chunk_rows rows at a time into a
// scratch chunk (lm_head_chunks.hpp), so neither model's [rows, vocab] logits exist at once, and
// the gradient reaches the hidden states (and a trainable head) chunk by chunk.
#include <algorithm>
#include <cstdint>

#include "../kernels/distill_loss.hpp"
#if defined(__CUDACC__)
#include "../kernels/distill_loss.cuh"
#endif
#include "lm_head_chunks.hpp"

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
  if (record) record_loss_grad(tape, student_logits, std::move(dstudent));
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
  const int64_t vocab = lm_head_vocab("distill_loss_lm_head student", student_hidden, student_head);
  check_same_shape("distill_loss_lm_head teacher hidden", teacher_hidden, student_hidden.value());
  check_rank2("distill_loss_lm_head teacher head", teacher_head.shape());
  MIL_CHECK(teacher_head.size(0) == vocab && teacher_head.size(1) == student_head.size(1),
            "distill_loss_lm_head: teacher head ", teacher_head.shape().str(),
            " differs from the student head ", student_head.shape().str());
  const int64_t rows = student_hidden.size(0), dim = student_hidden.size(1);
  const std::vector<int64_t> bounds = even_chunks(rows, chunk_rows);
  auto loss = distill_detail::begin<T, D>(targets, rows, vocab, config);
  const DistillLossParams params = distill_detail::params(config, loss.divisor());
  Tensor<T, D> teacher_chunk =
      Tensor<T, D>::empty(Shape{std::min(chunk_rows, std::max<int64_t>(rows, 1)), vocab});
  lm_head_loss_chunks(tape, student_hidden, student_head, bounds,
                      [&](int64_t r0, int64_t n, T* logits, bool record) {
                        T* t = teacher_chunk.data();
                        MIL_RUN(D, matmul, GemmShape{n, vocab, dim, false, true}, t,
                                teacher_hidden.data() + r0 * dim, teacher_head.data());
                        // The chunk's gradient replaces the student's logits.
                        MIL_RUN(D, distill_loss_forward_backward, loss.ce.data() + r0,
                                loss.kl.data() + r0, record ? logits : nullptr, logits, t,
                                targets.data() + r0, n, vocab, params);
                      });
  return loss;
}

}  // namespace mil::ag
