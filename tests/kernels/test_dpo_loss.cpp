#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <mil/autograd/dpo_loss.hpp>
#include <mil/kernels/cross_entropy.hpp>
#include <mil/kernels/dpo_loss.hpp>
#include <mil/kernels/sequence_logprob.hpp>

#include "common/compare.hpp"
#include "common/error_of.hpp"
#include "common/gradcheck.hpp"
#include "common/preference_batch.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

constexpr int32_t kIgnore = -100;

using Batch = test::PreferenceBatch<double>;

Batch make_batch(const std::vector<int64_t>& prompts, const std::vector<int64_t>& answers,
                 const std::vector<int64_t>& pads, int64_t vocab, uint64_t seed, float range = 4.f) {
  return test::make_preference_batch<double>(prompts, answers, pads, vocab, seed, range);
}

// Four pairs of unequal lengths, with prompts and padding.
Batch standard_batch(uint64_t seed, int64_t vocab = 29, float range = 4.f) {
  return make_batch({2, 2, 1, 1, 3, 0, 1, 2}, {3, 1, 4, 2, 2, 5, 1, 1}, {0, 1, 0, 2, 0, 0, 1, 0},
                    vocab, seed, range);
}

// The textbook computation in double: log-softmax rows, sums per sequence, the pair losses written
// directly (log of a sigmoid, a square) and their derivative by central differences, so that
// neither the softplus form nor the hand-derived gradient of the implementation is reused.
struct Reference {
  std::vector<double> logp, pair_losses, chosen_rewards, rejected_rewards, grad;
  double mean = 0;
};

double textbook_pair_loss(double h, const ag::DpoLossConfig& c) {
  if (c.objective == DpoObjective::ipo) return (h - 1 / (2 * c.beta)) * (h - 1 / (2 * c.beta));
  const auto log_sigmoid = [](double x) { return std::log(1 / (1 + std::exp(-x))); };
  return -(1 - c.label_smoothing) * log_sigmoid(c.beta * h) -
         c.label_smoothing * log_sigmoid(-c.beta * h);
}

Reference reference(const Batch& b, const std::vector<double>& logits, const ag::DpoLossConfig& c) {
  const size_t sequences = b.offsets.size() - 1, pairs = sequences / 2;
  const size_t V = size_t(b.vocab);
  Reference ref{std::vector<double>(sequences, 0.0), {}, {}, {}, std::vector<double>(logits.size(), 0.0)};
  std::vector<std::vector<double>> log_p(size_t(b.rows));
  for (size_t r = 0; r < size_t(b.rows); ++r) {
    const double* x = &logits[r * V];
    double m = -INFINITY, sum = 0;
    for (size_t j = 0; j < V; ++j) m = std::max(m, x[j]);
    for (size_t j = 0; j < V; ++j) sum += std::exp(x[j] - m);
    for (size_t j = 0; j < V; ++j) log_p[r].push_back(x[j] - m - std::log(sum));
  }
  for (size_t s = 0; s < sequences; ++s)
    for (int64_t r = b.offsets[s]; r < b.offsets[s + 1]; ++r)
      if (b.targets[size_t(r)] != c.ignore_index) ref.logp[s] += log_p[size_t(r)][size_t(b.targets[size_t(r)])];
  std::vector<double> dlogp(sequences), answer_tokens(sequences, 0.0);
  for (size_t s = 0; s < sequences; ++s)
    for (int64_t r = b.offsets[s]; r < b.offsets[s + 1]; ++r)
      answer_tokens[s] += b.targets[size_t(r)] != c.ignore_index;
  for (size_t p = 0; p < pairs; ++p) {
    const double chosen = ref.logp[2 * p] - b.ref[2 * p];
    const double rejected = ref.logp[2 * p + 1] - b.ref[2 * p + 1];
    const double h = chosen - rejected, e = 1e-5;
    // DPO + NLL: the chosen answer's mean negative log-likelihood, weighted.
    const double nll = -ref.logp[2 * p] / answer_tokens[2 * p];
    ref.pair_losses.push_back(textbook_pair_loss(h, c) + c.chosen_nll_weight * nll);
    ref.chosen_rewards.push_back(c.beta * chosen);
    ref.rejected_rewards.push_back(c.beta * rejected);
    ref.mean += ref.pair_losses.back() / double(pairs);
    const double dh = (textbook_pair_loss(h + e, c) - textbook_pair_loss(h - e, c)) / (2 * e);
    dlogp[2 * p] = (dh - c.chosen_nll_weight / answer_tokens[2 * p]) / double(pairs);
    dlogp[2 * p + 1] = -dh / double(pairs);
  }
  for (size_t s = 0; s < sequences; ++s)
    for (int64_t r = b.offsets[s]; r < b.offsets[s + 1]; ++r) {
      const int32_t t = b.targets[size_t(r)];
      if (t == c.ignore_index) continue;
      for (size_t j = 0; j < V; ++j)
        ref.grad[size_t(r) * V + j] = dlogp[s] * ((int32_t(j) == t) - std::exp(log_p[size_t(r)][j]));
    }
  return ref;
}

template <class T>
ag::Var<T, Cpu> var(const std::vector<double>& values, int64_t rows, int64_t cols,
                    bool requires_grad = true) {
  return ag::Var<T, Cpu>(Tensor<T, Cpu>::from(Shape{rows, cols}, test::cast_vector<T>(values)),
                         requires_grad);
}

Tensor<int32_t, Cpu> targets_of(const Batch& b) {
  return Tensor<int32_t, Cpu>::from(Shape{b.rows}, b.targets);
}

// The op on the CPU in T: its loss and the gradient of the logits.
template <class T>
std::pair<ag::DpoLoss, std::vector<T>> run_op(const Batch& b, const ag::DpoLossConfig& c) {
  ag::Tape tape;
  auto logits = var<T>(b.logits, b.rows, b.vocab);
  auto loss = ag::dpo_loss(tape, logits, targets_of(b), b.offsets, b.ref, c);
  tape.backward();
  return {loss, logits.grad().to_vector()};
}

const ag::DpoLossConfig kConfigs[] = {{0.1, 0.0, DpoObjective::sigmoid, kIgnore},
                                      {0.5, 0.0, DpoObjective::sigmoid, kIgnore},
                                      {0.5, 0.2, DpoObjective::sigmoid, kIgnore},
                                      {0.1, 0.0, DpoObjective::ipo, kIgnore},
                                      {2.0, 0.0, DpoObjective::ipo, kIgnore},
                                      {0.1, 0.0, DpoObjective::sigmoid, kIgnore, 0.7},
                                      {0.5, 0.0, DpoObjective::ipo, kIgnore, 2.0}};

std::string name_of(const ag::DpoLossConfig& c) {
  return std::string(c.objective == DpoObjective::ipo ? "ipo" : "sigmoid") +
         " beta=" + std::to_string(c.beta) + " eps=" + std::to_string(c.label_smoothing) +
         " nll=" + std::to_string(c.chosen_nll_weight);
}

}  // namespace

TEST_CASE("cross_entropy: row scales weigh each row's gradient and leave the losses alone") {
  // The per-row scale that turns the cross-entropy kernel into the sequence log-prob backward:
  // ignored, applied to the wrong row or to the loss, it fails here.
  const int64_t rows = 5, vocab = 23;
  const auto x = test::random_vector(size_t(rows * vocab), 5, -5.f, 5.f);
  const std::vector<int32_t> targets{3, kIgnore, 0, 22, 7};
  const std::vector<double> scales{0.5, 9.0, -2.0, 0.0, 1.25};
  const float dloss = 0.75f;
  std::vector<double> ref_loss(size_t(rows), 0.0), ref_grad(x.size(), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[size_t(r)] == kIgnore) continue;
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < vocab; ++j) m = std::max(m, x[size_t(r * vocab + j)]);
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(x[size_t(r * vocab + j)] - m);
    ref_loss[size_t(r)] = m + std::log(sum) - x[size_t(r * vocab + targets[size_t(r)])];
    for (int64_t j = 0; j < vocab; ++j)
      ref_grad[size_t(r * vocab + j)] = double(dloss) * scales[size_t(r)] *
          (std::exp(x[size_t(r * vocab + j)] - m) / sum - (j == targets[size_t(r)]));
  }
  auto check = [&](auto zero, const std::string& type, double tol) {
    using T = decltype(zero);
    const auto logits = test::cast_vector<T>(x);
    const auto row_scales = test::cast_vector<acc_t<T>>(scales);
    std::vector<acc_t<T>> losses(size_t(rows), test::poison<acc_t<T>>());
    std::vector<T> grad(x.size(), test::poison<T>());
    cpu::cross_entropy_forward_backward<T>(losses.data(), grad.data(), logits.data(), targets.data(),
                                           rows, vocab, dloss, kIgnore, row_scales.data());
    const std::string what = "row scales " + type;
    test::require_close(what + " losses", losses, ref_loss, tol);
    test::require_close(what + " gradient", grad, ref_grad, tol);
    for (int64_t j = 0; j < vocab; ++j) CHECK(double(to_acc(grad[size_t(3 * vocab + j)])) == 0.0);
  };
  check(0.0, "double", 1e-13);
  check(0.f, "float", 1e-6);
}

TEST_CASE("sequence_logprob: per-sequence sums and row scales follow the offsets") {
  // Sequence 1 is empty, which an off-by-one in the ranges would shift onto its neighbours.
  const std::vector<int64_t> offsets{0, 2, 2, 5};
  const std::vector<float> nll{1.f, 2.f, 4.f, 8.f, 16.f};
  std::vector<double> logp(3);
  sum_per_sequence(logp, nll, offsets, 0);
  CHECK(logp == std::vector<double>{-3.0, 0.0, -28.0});
  std::vector<double> tail(1);  // the last sequence alone: rows from offsets[2] on
  sum_per_sequence(tail, std::vector<float>{4.f, 8.f, 16.f}, offsets, 2);
  CHECK(tail == std::vector<double>{-28.0});
  CHECK(sequence_row_scales<float>({0.5, 7.0, -2.0}, offsets, 0) ==
        std::vector<float>{-0.5f, -0.5f, 2.f, 2.f, 2.f});
  CHECK(test::error_of([] { check_sequence_offsets({1, 3}, 3); }).find("must start at 0") !=
        std::string::npos);
  CHECK(test::error_of([] { check_sequence_offsets({0, 3, 2, 4}, 4); })
            .find("sequence 1 ends at row 2 before it starts at row 3") != std::string::npos);
  CHECK(test::error_of([] { check_sequence_offsets({0, 3}, 4); })
            .find("the sequences cover 3 rows, the logits have 4") != std::string::npos);
}

TEST_CASE("dpo_loss: hand-computed pair losses for sigmoid - label smoothing and IPO") {
  // beta h = 1: softplus(-1) = log(1 + e^-1); d/dh = -beta sigmoid(-1).
  const double sp_neg1 = 0.31326168751822283, sp_1 = 1.3132616875182228;
  const double sig_neg1 = 0.2689414213699951, sig_1 = 0.7310585786300049;
  const DpoParams dpo{0.5, 0.0, DpoObjective::sigmoid};
  auto [loss, dh] = dpo_pair_loss(2.0, dpo);
  CHECK(loss == doctest::Approx(sp_neg1).epsilon(1e-14));
  CHECK(dh == doctest::Approx(-0.5 * sig_neg1).epsilon(1e-14));
  // Label smoothing 0.1: 0.9 softplus(-1) + 0.1 softplus(1); d/dh = 0.5 (-0.9 sig(-1) + 0.1 sig(1)).
  auto [ls, dls] = dpo_pair_loss(2.0, {0.5, 0.1, DpoObjective::sigmoid});
  CHECK(ls == doctest::Approx(0.9 * sp_neg1 + 0.1 * sp_1).epsilon(1e-14));
  CHECK(dls == doctest::Approx(0.5 * (-0.9 * sig_neg1 + 0.1 * sig_1)).epsilon(1e-14));
  // eps = 0.5 is symmetric in h: the loss is even and its slope at 0 is 0.
  CHECK(dpo_pair_loss(3.0, {0.5, 0.5, DpoObjective::sigmoid}).loss ==
        doctest::Approx(dpo_pair_loss(-3.0, {0.5, 0.5, DpoObjective::sigmoid}).loss).epsilon(1e-15));
  CHECK(dpo_pair_loss(0.0, {0.5, 0.5, DpoObjective::sigmoid}).dloss_dmargin == 0.0);
  // A well-separated pair, beta h = 40: loss log(1 + e^-40) and slope -beta sigmoid(-40), both
  // about e^-40 and not 0 (-log sigmoid(40) taken directly is -log(1) = 0 in double, and
  // 1 - sigmoid(40) is 0 as well).
  const auto far = dpo_pair_loss(80.0, {0.5, 0.0, DpoObjective::sigmoid});
  // (Relative errors: doctest::Approx would accept any value within 1e-12 of these.)
  CHECK(std::abs(far.loss / std::exp(-40.0) - 1) < 1e-12);
  CHECK(std::abs(far.dloss_dmargin / (-0.5 * std::exp(-40.0)) - 1) < 1e-12);
  // h = 0: log 2 whatever beta.
  CHECK(dpo_pair_loss(0.0, {3.0, 0.0, DpoObjective::sigmoid}).loss ==
        doctest::Approx(std::log(2.0)).epsilon(1e-15));
  // IPO, beta 0.5: target margin 1; h = 2 gives (2 - 1)^2 = 1 and slope 2, h = 1 gives 0 and 0.
  auto [ipo, dipo] = dpo_pair_loss(2.0, {0.5, 0.0, DpoObjective::ipo});
  CHECK(ipo == 1.0);
  CHECK(dipo == 2.0);
  CHECK(dpo_pair_loss(1.0, {0.5, 0.0, DpoObjective::ipo}).loss == 0.0);
  CHECK(dpo_pair_loss(-3.0, {0.25, 0.0, DpoObjective::ipo}).loss == 25.0);  // (-3 - 2)^2

  // Through the op with uniform logits over V = 4: every answer token has log-probability
  // -log 4, so a 3-token chosen and a 1-token rejected answer have pi_w - pi_l = -2 log 4.
  Batch b = make_batch({1, 2}, {3, 1}, {0, 0}, 4, 1);
  std::fill(b.logits.begin(), b.logits.end(), 0.25);
  b.ref = {-5.0, -2.0};
  const double pi_w = -3 * std::log(4.0), pi_l = -std::log(4.0);
  const double h = (pi_w + 5.0) - (pi_l + 2.0);
  for (const auto& c : kConfigs) {
    const auto [op, grad] = run_op<double>(b, c);
    CHECK(op.policy_logps[0] == doctest::Approx(pi_w).epsilon(1e-14));
    CHECK(op.policy_logps[1] == doctest::Approx(pi_l).epsilon(1e-14));
    // DPO + NLL adds the chosen answer's mean NLL, log 4, times its weight.
    CHECK(op.mean() == doctest::Approx(dpo_pair_loss(h, c.params()).loss +
                                       c.chosen_nll_weight * std::log(4.0)).epsilon(1e-13));
    CHECK(op.reward_margin() == doctest::Approx(c.beta * h).epsilon(1e-13));
    CHECK(op.answer_tokens == std::vector<int64_t>{3, 1});
    CHECK(op.accuracy() == (h > 0 ? 1.0 : 0.0));
  }
}

TEST_CASE("dpo_loss: the op matches the textbook reference in double - float and bf16") {
  for (const auto& c : kConfigs) {
    const Batch b = standard_batch(11);
    const Reference ref = reference(b, b.logits, c);
    const std::string what = name_of(c);
    const auto [d, dgrad] = run_op<double>(b, c);
    test::require_close(what + " double logp", d.policy_logps, ref.logp, 1e-13);
    test::require_close(what + " double pair losses", d.pair_losses, ref.pair_losses, 1e-9);
    test::require_close(what + " double chosen rewards", d.chosen_rewards, ref.chosen_rewards, 1e-13);
    test::require_close(what + " double rejected rewards", d.rejected_rewards, ref.rejected_rewards,
                        1e-13);
    CHECK(d.mean() == doctest::Approx(ref.mean).epsilon(1e-9));
    // The reference's slope is a central difference: ~1e-10 relative.
    test::require_close(what + " double gradient", dgrad, ref.grad, 1e-8);
    // Metrics from the reference's rewards.
    double right = 0, margin = 0;
    for (size_t p = 0; p < ref.chosen_rewards.size(); ++p) {
      right += ref.chosen_rewards[p] > ref.rejected_rewards[p];
      margin += (ref.chosen_rewards[p] - ref.rejected_rewards[p]) / double(d.pairs());
    }
    CHECK(d.accuracy() == right / double(d.pairs()));
    CHECK(d.reward_margin() == doctest::Approx(margin).epsilon(1e-12));

    const auto [f, fgrad] = run_op<float>(b, c);
    test::require_close(what + " float logp", f.policy_logps, ref.logp, 1e-6);
    test::require_close(what + " float gradient", fgrad, ref.grad, 1e-5);
    CHECK(f.mean() == doctest::Approx(ref.mean).epsilon(1e-5));

    // bf16 logits: the reference on the same (rounded) values, the gradient rounded to bf16.
    Batch rounded = b;
    for (double& x : rounded.logits) x = double(float(bf16(float(x))));
    const Reference ref16 = reference(rounded, rounded.logits, c);
    const auto [h, hgrad] = run_op<bf16>(rounded, c);
    test::require_close(what + " bf16 logp", h.policy_logps, ref16.logp, 1e-5);
    test::require_close(what + " bf16 gradient", hgrad, ref16.grad, test::tolerance<bf16>());
  }
}

TEST_CASE("dpo_loss: gradient check in double by finite differences") {
  // Independent of both the implementation's and the reference's derivations.
  for (const auto& c : kConfigs) {
    Batch b = make_batch({1, 1, 2, 0}, {2, 1, 1, 2}, {1, 0, 0, 1}, 5, 21, 2.f);
    const auto [loss, grad] = run_op<double>(b, c);
    auto forward = [&] {
      ag::Tape quiet;
      ag::NoGrad no_grad(quiet);
      auto x = var<double>(b.logits, b.rows, b.vocab, false);
      return std::vector<double>{ag::dpo_loss(quiet, x, targets_of(b), b.offsets, b.ref, c).mean()};
    };
    test::check_gradients("dpo_loss " + name_of(c), {{"logits", &b.logits, &grad}}, forward, {1.0});
  }
}

TEST_CASE("dpo_loss: as beta goes to 0 the sigmoid losses' gradient vanishes in proportion") {
  // dL/dh = -beta sigmoid(-beta h) (1 - eps) + ...: linear in beta near 0, and the loss tends to
  // log 2. A beta dropped from the gradient, or applied twice, breaks the proportion.
  for (double eps : {0.0, 0.3}) {
    const Batch b = standard_batch(31);
    auto norm_at = [&](double beta) {
      const auto [loss, grad] = run_op<double>(b, {beta, eps, DpoObjective::sigmoid, kIgnore});
      double sq = 0;
      for (double g : grad) sq += g * g;
      return std::pair{loss.mean(), std::sqrt(sq)};
    };
    const auto [loss_small, small] = norm_at(1e-6);
    const auto [loss_large, large] = norm_at(1e-3);
    CHECK(small > 0);
    CHECK(loss_small == doctest::Approx(std::log(2.0)).epsilon(1e-4));
    CHECK(large / small == doctest::Approx(1000.0).epsilon(5e-2));
    CHECK(small < 1e-5);
  }
}

TEST_CASE("dpo_loss: the gradient scale scales the gradient and leaves the losses alone") {
  // A micro-batch's share of an accumulated step. Catches: the scale dropped, applied to the
  // reported loss, or missing from the NLL term's gradient.
  const Batch b = standard_batch(37);
  for (double alpha : {0.0, 0.8}) {
    const ag::DpoLossConfig plain{0.2, 0.0, DpoObjective::sigmoid, kIgnore, alpha};
    ag::DpoLossConfig scaled = plain;
    scaled.grad_scale = 0.25;
    const auto [l1, g1] = run_op<double>(b, plain);
    const auto [l4, g4] = run_op<double>(b, scaled);
    CHECK(l4.pair_losses == l1.pair_losses);
    for (size_t i = 0; i < g1.size(); ++i) REQUIRE(g4[i] == doctest::Approx(0.25 * g1[i]).epsilon(1e-12));
  }
}

TEST_CASE("dpo_loss: extreme margins give finite losses and gradients") {
  // beta h of about +-2000: log(sigmoid) written directly would be log(0) = -inf (and
  // log(1 + exp(-x)) would overflow to inf).
  Batch b = standard_batch(41);
  for (double shift : {-4000.0, 4000.0}) {
    std::vector<double> ref = b.ref;
    for (size_t p = 0; p < ref.size() / 2; ++p) ref[2 * p] += shift;  // chosen reference moved
    Batch moved = b;
    moved.ref = ref;
    const auto [loss, grad] = run_op<double>(moved, {0.5, 0.1, DpoObjective::sigmoid, kIgnore});
    CHECK(std::isfinite(loss.mean()));
    for (double g : grad) REQUIRE(std::isfinite(g));
    // Huge negative margin (shift > 0): loss ~ (1 - eps) beta |h|, slope ~ -(1 - eps) beta / P.
    // Huge positive margin: loss ~ eps beta h, slope ~ eps beta / P.
    const double h0 = (loss.chosen_rewards[0] - loss.rejected_rewards[0]) / 0.5;
    const double expected = shift > 0 ? 0.9 * 0.5 * -h0 : 0.1 * 0.5 * h0;
    CHECK(loss.pair_losses[0] == doctest::Approx(expected).epsilon(1e-9));
    // The chosen answer's gradient at a target: dlogp (1 - p_t), with the saturated slope
    // dlogp = -(1 - eps) beta / P (shift > 0) or eps beta / P over P = 4 pairs.
    const int64_t row = b.offsets[0] + 2;  // first answer row of pair 0's chosen sequence
    const int32_t t = b.targets[size_t(row)];
    double sum = 0;
    for (int64_t j = 0; j < b.vocab; ++j) sum += std::exp(b.logits[size_t(row * b.vocab + j)]);
    const double p_t = std::exp(b.logits[size_t(row * b.vocab + t)]) / sum;
    const double dlogp = (shift > 0 ? -0.9 * 0.5 : 0.1 * 0.5) / 4;
    CHECK(grad[size_t(row * b.vocab + t)] == doctest::Approx(dlogp * (1 - p_t)).epsilon(1e-12));
  }
}

TEST_CASE("dpo_loss: prompt and padding rows get zero gradient and do not count") {
  const ag::DpoLossConfig c{0.3, 0.0, DpoObjective::sigmoid, kIgnore};
  Batch b = standard_batch(51);
  const auto [loss, grad] = run_op<float>(b, c);
  for (int64_t r = 0; r < b.rows; ++r)
    if (b.targets[size_t(r)] == kIgnore)
      for (int64_t j = 0; j < b.vocab; ++j) REQUIRE(grad[size_t(r * b.vocab + j)] == 0.f);
  // Answer rows do get one.
  double answer_norm = 0;
  for (size_t i = 0; i < grad.size(); ++i) answer_norm += std::abs(double(grad[i]));
  CHECK(answer_norm > 0);
  // Other logits on ignored rows change nothing.
  Batch changed = b;
  for (int64_t r = 0; r < b.rows; ++r)
    if (b.targets[size_t(r)] == kIgnore)
      for (int64_t j = 0; j < b.vocab; ++j) changed.logits[size_t(r * b.vocab + j)] = 50.0 * double(j % 3);
  const auto [same, same_grad] = run_op<float>(changed, c);
  CHECK(same.policy_logps == loss.policy_logps);
  CHECK(same.pair_losses == loss.pair_losses);
  // A different ignore index is honoured.
  Batch minus_one = b;
  for (int32_t& t : minus_one.targets) t = t == kIgnore ? -1 : t;
  const auto [other, other_grad] = run_op<float>(minus_one, {0.3, 0.0, DpoObjective::sigmoid, -1});
  CHECK(other.pair_losses == loss.pair_losses);
  CHECK(other_grad == grad);
}

TEST_CASE("dpo_loss: a batch without pairs has loss 0 and no metrics to divide") {
  // A mean over zero pairs taken literally is NaN, which would poison a training log.
  ag::Tape tape;
  auto logits = var<float>({}, 0, 11);
  const auto loss = ag::dpo_loss(tape, logits, Tensor<int32_t, Cpu>::from(Shape{0}, {}), {0}, {}, {});
  tape.backward();
  CHECK(loss.pairs() == 0);
  CHECK(loss.mean() == 0.0);
  CHECK(loss.reward_margin() == 0.0);
  CHECK(loss.accuracy() == 0.0);
  CHECK(logits.grad().numel() == 0);
}

TEST_CASE("dpo_loss: bad input gives a clear error and records nothing") {
  const Batch b = standard_batch(61, 7);
  ag::Tape tape;
  auto logits = var<float>(b.logits, b.rows, b.vocab);
  auto run = [&](const Batch& in, const ag::DpoLossConfig& c = {}) {
    return test::error_of([&] {
      (void)ag::dpo_loss(tape, logits, targets_of(in), in.offsets, in.ref, c);
    });
  };
  auto contains = [](const std::string& message, const std::string& what) {
    INFO(message);
    CHECK(message.find(what) != std::string::npos);
  };
  for (int32_t bad : {7, -1, 1 << 30}) {
    Batch x = b;
    x.targets[4] = bad;
    contains(run(x), "target " + std::to_string(bad) + " at row 4 is outside the vocabulary [0, 7)");
  }
  Batch short_targets = b;
  short_targets.targets.pop_back();
  short_targets.rows -= 1;
  contains(run(short_targets), std::to_string(b.rows - 1) + " targets for " + std::to_string(b.rows));
  Batch uncovered = b;
  uncovered.offsets.back() -= 1;
  contains(run(uncovered), "the sequences cover");
  Batch decreasing = b;
  decreasing.offsets[2] = decreasing.offsets[1] - 1;
  contains(run(decreasing), "sequence 1 ends at row");
  Batch odd = b;
  odd.offsets.erase(odd.offsets.end() - 2);
  odd.ref.pop_back();
  contains(run(odd), "7 sequences do not form (chosen, rejected) pairs");
  Batch few_refs = b;
  few_refs.ref.pop_back();
  contains(run(few_refs), "7 reference log-probabilities for 8 sequences");
  Batch nan_ref = b;
  nan_ref.ref[3] = std::numeric_limits<double>::quiet_NaN();
  contains(run(nan_ref), "reference log-probability of sequence 3");
  Batch empty_answer = b;  // sequence 5 (pair 2's rejected answer) loses its answer tokens
  for (int64_t r = b.offsets[5]; r < b.offsets[6]; ++r) empty_answer.targets[size_t(r)] = kIgnore;
  contains(run(empty_answer), "sequence 5 (the rejected answer of pair 2) has no answer tokens");
  for (double beta : {0.0, -0.1, std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity()})
    contains(run(b, {beta, 0.0, DpoObjective::sigmoid, kIgnore}), "beta must be positive");
  for (double eps : {-0.1, 0.6})
    contains(run(b, {0.1, eps, DpoObjective::sigmoid, kIgnore}), "label smoothing must lie in");
  contains(run(b, {0.1, 0.1, DpoObjective::ipo, kIgnore}), "sigmoid loss only, not IPO");
  for (double alpha : {-0.5, std::numeric_limits<double>::infinity()})
    contains(run(b, {0.1, 0.0, DpoObjective::sigmoid, kIgnore, alpha}), "chosen NLL weight must be >= 0");
  const auto flat = Tensor<float, Cpu>::from(Shape{b.rows * b.vocab}, std::vector<float>(size_t(b.rows * b.vocab)));
  contains(test::error_of([&] {
             (void)ag::dpo_loss(tape, ag::Var<float, Cpu>(flat, true), targets_of(b), b.offsets, b.ref, {});
           }),
           "dpo_loss policy logits");

  auto hidden = var<float>(std::vector<double>(size_t(b.rows * 3), 0.5), b.rows, 3);
  auto head = var<float>(std::vector<double>(size_t(b.vocab * 3), 0.5), b.vocab, 3);
  auto head_4 = var<float>(std::vector<double>(size_t(b.vocab * 4), 0.5), b.vocab, 4);
  contains(test::error_of([&] {
             (void)ag::dpo_loss_lm_head(tape, hidden, head_4, targets_of(b), b.offsets, b.ref, {});
           }),
           "does not take hidden states of width 3");
  contains(test::error_of([&] {
             (void)ag::dpo_loss_lm_head(tape, hidden, head, targets_of(b), b.offsets, b.ref, {}, 0);
           }),
           "chunk_rows must be positive");
  Batch bad_target = b;
  bad_target.targets[0] = 9;
  contains(test::error_of([&] {
             (void)ag::dpo_loss_lm_head(tape, hidden, head, targets_of(bad_target), b.offsets, b.ref, {});
           }),
           "target 9 at row 0");
  CHECK(tape.size() == 0);
  CHECK_FALSE(logits.has_grad());
}

TEST_CASE("dpo_loss_lm_head: equals dpo_loss on the full logits for any chunk size") {
  // Pairs of 9, 10, 10 and 6 rows: chunks of 1 and 9 rows hold one pair each (smaller than a
  // pair), 19 pairs 0-1 then 2 then 3, 20 pairs 0-1 then 2-3, 35 all; the chunk bounds must fall
  // between pairs.
  const Batch shape = standard_batch(71, 13);
  const int64_t rows = shape.rows, dim = 6, vocab = shape.vocab;
  const auto h = test::random_vector(size_t(rows * dim), 72, -1.f, 1.f);
  const auto w = test::random_vector(size_t(vocab * dim), 73, -1.5f, 1.5f);
  const auto targets = targets_of(shape);
  for (const auto& c : kConfigs) {
    ag::Tape tape;
    auto hidden = var<double>(h, rows, dim), head = var<double>(w, vocab, dim);
    auto logits = ag::linear(tape, hidden, head);
    const auto full = ag::dpo_loss(tape, logits, targets, shape.offsets, shape.ref, c);
    tape.backward();
    const auto ref_hidden = hidden.grad().to_vector(), ref_head = head.grad().to_vector();
    for (int64_t chunk : {1, 9, 19, 20, 35, 1024}) {
      const std::string what = name_of(c) + " chunk " + std::to_string(chunk);
      auto hc = var<double>(h, rows, dim), wc = var<double>(w, vocab, dim);
      const auto loss = ag::dpo_loss_lm_head(tape, hc, wc, targets, shape.offsets, shape.ref, c, chunk);
      CHECK(tape.size() == 1);
      tape.backward();
      test::require_close(what + " logp", loss.policy_logps, full.policy_logps, 1e-13);
      test::require_close(what + " pair losses", loss.pair_losses, full.pair_losses, 1e-12);
      CHECK(loss.mean() == doctest::Approx(full.mean()).epsilon(1e-12));
      CHECK(loss.accuracy() == full.accuracy());
      test::require_close(what + " d hidden", hc.grad().to_vector(), ref_hidden, 1e-12);
      test::require_close(what + " d head", wc.grad().to_vector(), ref_head, 1e-12);
    }
    // A frozen head: hidden states get the same gradient, the head none; and the other way round.
    auto hc = var<double>(h, rows, dim), frozen = var<double>(w, vocab, dim, false);
    (void)ag::dpo_loss_lm_head(tape, hc, frozen, targets, shape.offsets, shape.ref, c, 5);
    tape.backward();
    CHECK_FALSE(frozen.has_grad());
    test::require_close(name_of(c) + " frozen head d hidden", hc.grad().to_vector(), ref_hidden, 1e-12);
    auto frozen_hidden = var<double>(h, rows, dim, false), wc = var<double>(w, vocab, dim);
    (void)ag::dpo_loss_lm_head(tape, frozen_hidden, wc, targets, shape.offsets, shape.ref, c, 17);
    tape.backward();
    CHECK_FALSE(frozen_hidden.has_grad());
    test::require_close(name_of(c) + " frozen hidden d head", wc.grad().to_vector(), ref_head, 1e-12);
    ag::NoGrad no_grad(tape);
    auto hn = var<double>(h, rows, dim), wn = var<double>(w, vocab, dim);
    const auto quiet = ag::dpo_loss_lm_head(tape, hn, wn, targets, shape.offsets, shape.ref, c, 5);
    CHECK(tape.size() == 0);
    test::require_close(name_of(c) + " no grad pair losses", quiet.pair_losses, full.pair_losses,
                        1e-12);
  }
}
