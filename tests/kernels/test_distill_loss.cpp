#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <mil/autograd/distill_loss.hpp>
#include <mil/kernels/cross_entropy.hpp>
#include <mil/kernels/distill_loss.hpp>

#include "common/compare.hpp"
#include "common/error_of.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// The loss written as textbook log-softmaxes in double, independently of the kernel's
// single-pass statistics: ce = -log p1[y], kl = sum q (log q - log p), and the gradient
// dce (p1 - onehot) + dkl (p - q) / tau.
struct Reference {
  std::vector<double> ce, kl, grad;
};

std::vector<double> log_softmax(const double* x, int64_t n, double scale) {
  double m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j] * scale);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] * scale - m);
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) out[size_t(j)] = x[j] * scale - m - std::log(sum);
  return out;
}

Reference reference(const std::vector<double>& s, const std::vector<double>& t,
                    const std::vector<int32_t>& labels, int64_t vocab, const DistillLossParams& p) {
  const int64_t rows = int64_t(labels.size());
  Reference ref{std::vector<double>(size_t(rows)), std::vector<double>(size_t(rows)),
                std::vector<double>(s.size(), 0.0)};
  const double tau = p.temperature;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t y = labels[size_t(r)];
    if (y == p.ignore_index) continue;
    const auto log_p1 = log_softmax(&s[size_t(r * vocab)], vocab, 1.0);
    const auto log_p = log_softmax(&s[size_t(r * vocab)], vocab, 1.0 / tau);
    const auto log_q = log_softmax(&t[size_t(r * vocab)], vocab, 1.0 / tau);
    ref.ce[size_t(r)] = -log_p1[size_t(y)];
    double kl = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const size_t i = size_t(j);
      kl += std::exp(log_q[i]) * (log_q[i] - log_p[i]);
      ref.grad[size_t(r * vocab + j)] =
          p.dce * (std::exp(log_p1[i]) - (j == y)) + p.dkl / tau * (std::exp(log_p[i]) - std::exp(log_q[i]));
    }
    ref.kl[size_t(r)] = kl;
  }
  return ref;
}

// Random logits of one row set; the teacher is the student plus noise, as a trained student's
// logits are near the teacher's (and far from them where `spread` is large).
struct Case {
  int64_t rows, vocab;
  std::vector<double> student, teacher;
  std::vector<int32_t> labels;
};

Case make_case(int64_t rows, int64_t vocab, uint64_t seed, float range, float spread,
               std::vector<int32_t> labels = {}) {
  Case c{rows, vocab, test::random_vector(size_t(rows * vocab), seed, -range, range), {}, labels};
  const auto noise = test::random_vector(c.student.size(), seed + 1, -spread, spread);
  c.teacher.resize(c.student.size());
  for (size_t i = 0; i < c.student.size(); ++i) c.teacher[i] = c.student[i] + noise[i];
  if (c.labels.empty())
    for (int64_t r = 0; r < rows; ++r)
      c.labels.push_back(r % 4 == 2 ? -100 : int32_t((r * 7919 + int64_t(seed)) % vocab));
  return c;
}

template <class T>
struct KernelOut {
  std::vector<acc_t<T>> ce, kl;
  std::vector<T> grad;
};

template <class T>
KernelOut<T> run_kernel(const Case& c, const DistillLossParams& p, bool with_grad = true) {
  const auto s = test::cast_vector<T>(c.student), t = test::cast_vector<T>(c.teacher);
  KernelOut<T> out{std::vector<acc_t<T>>(size_t(c.rows), test::poison<acc_t<T>>()),
                   std::vector<acc_t<T>>(size_t(c.rows), test::poison<acc_t<T>>()),
                   std::vector<T>(s.size(), test::poison<T>())};
  cpu::distill_loss_forward_backward<T>(out.ce.data(), out.kl.data(),
                                        with_grad ? out.grad.data() : nullptr, s.data(), t.data(),
                                        c.labels.data(), c.rows, c.vocab, p);
  return out;
}

// A Var on the CPU holding `values` as [rows, cols].
template <class T>
ag::Var<T, Cpu> var(const std::vector<double>& values, int64_t rows, int64_t cols,
                    bool requires_grad = true) {
  return ag::Var<T, Cpu>(Tensor<T, Cpu>::from(Shape{rows, cols}, test::cast_vector<T>(values)),
                         requires_grad);
}

}  // namespace

TEST_CASE("distill_loss: kernel matches a log-softmax reference across temperatures and weights") {
  // Every weight mix at every temperature: a wrong tau factor in either term, a swapped p and q,
  // or a CE computed at the temperature shows as a gradient error here.
  for (float tau : {0.5f, 1.f, 2.f, 4.f})
    for (auto [dce, dkl] : {std::pair{1.f, 0.f}, {0.f, 1.f}, {0.3f, 0.7f}, {1.f, 0.1f}}) {
      const DistillLossParams p{tau, dce, dkl, -100};
      const Case c = make_case(6, 53, uint64_t(tau * 10 + dce * 100), 4.f, 2.f);
      const Reference ref = reference(c.student, c.teacher, c.labels, c.vocab, p);
      const std::string what = "tau=" + std::to_string(tau) + " dce=" + std::to_string(dce) +
                               " dkl=" + std::to_string(dkl);
      const auto d = run_kernel<double>(c, p);
      test::require_close(what + " double ce", d.ce, ref.ce, 1e-12);
      test::require_close(what + " double kl", d.kl, ref.kl, 1e-12);
      test::require_close(what + " double grad", d.grad, ref.grad, 1e-12);
      const auto f = run_kernel<float>(c, p);
      test::require_close(what + " float ce", f.ce, ref.ce, 1e-6);
      test::require_close(what + " float kl", f.kl, ref.kl, 1e-5);
      test::require_close(what + " float grad", f.grad, ref.grad, 1e-6);
      for (int64_t r = 0; r < c.rows; ++r) CHECK(d.kl[size_t(r)] >= -1e-15);
    }
}

TEST_CASE("distill_loss: logits of +-80 neither overflow nor lose accuracy") {
  // exp(80) overflows float's sums without the max subtraction (and exp(80 / 0.5) double's
  // intermediate products would be huge); teacher and student far apart make KL large.
  for (float tau : {0.5f, 1.f, 3.f}) {
    const DistillLossParams p{tau, 0.5f, 0.5f, -100};
    Case c = make_case(5, 41, 7, 80.f, 40.f);
    for (double& x : c.teacher) x = std::clamp(x, -80.0, 80.0);
    const Reference ref = reference(c.student, c.teacher, c.labels, c.vocab, p);
    const auto f = run_kernel<float>(c, p);
    for (size_t r = 0; r < f.ce.size(); ++r) CHECK((std::isfinite(f.ce[r]) && std::isfinite(f.kl[r])));
    test::require_close("+-80 float ce", f.ce, ref.ce, 1e-5);
    test::require_close("+-80 float kl", f.kl, ref.kl, 1e-5);
    test::require_close("+-80 float grad", f.grad, ref.grad, 1e-5);
  }
}

TEST_CASE("distill_loss: ignored rows give zero losses and gradient - also when every row is ignored") {
  const DistillLossParams p{2.f, 0.4f, 0.6f, -1};
  Case c = make_case(4, 9, 3, 3.f, 1.f, {-1, 5, -1, 0});
  const auto out = run_kernel<float>(c, p);
  for (int64_t r : {0, 2}) {
    CHECK(out.ce[size_t(r)] == 0.f);
    CHECK(out.kl[size_t(r)] == 0.f);
    for (int64_t j = 0; j < c.vocab; ++j) CHECK(out.grad[size_t(r * c.vocab + j)] == 0.f);
  }
  for (int64_t r : {1, 3}) CHECK(out.ce[size_t(r)] > 0.f);
  c.labels = {-1, -1, -1, -1};
  const auto none = run_kernel<float>(c, p);
  CHECK(none.ce == std::vector<float>(4, 0.f));
  CHECK(none.kl == std::vector<float>(4, 0.f));
  CHECK(none.grad == std::vector<float>(c.student.size(), 0.f));
  // Through the op: nothing counts, the means are 0 and the gradient is 0.
  ag::Tape tape;
  auto s = var<float>(c.student, c.rows, c.vocab);
  auto t = Tensor<float, Cpu>::from(Shape{c.rows, c.vocab}, test::cast_vector<float>(c.teacher));
  auto labels = Tensor<int32_t, Cpu>::from(Shape{c.rows}, c.labels);
  auto loss = ag::distill_loss(tape, s, t, labels, {0.4f, 0.6f, 2.f, false, -1});
  tape.backward();
  CHECK(loss.count == 0);
  CHECK(loss.mean() == 0.0);
  CHECK(s.grad().to_vector() == std::vector<float>(c.student.size(), 0.f));
}

TEST_CASE("distill_loss: a teacher equal to the student gives KL 0 and the CE gradient") {
  // KL's statistics of equal rows are equal bit for bit, so KL and its gradient vanish exactly;
  // what is left must be the cross-entropy kernel's own gradient.
  Case c = make_case(5, 31, 11, 6.f, 0.f);
  c.teacher = c.student;
  for (float tau : {0.7f, 1.f, 2.5f}) {
    const auto kl_only = run_kernel<float>(c, {tau, 0.f, 1.f, -100});
    CHECK(kl_only.kl == std::vector<float>(size_t(c.rows), 0.f));
    CHECK(kl_only.grad == std::vector<float>(c.student.size(), 0.f));
    const auto both = run_kernel<float>(c, {tau, 0.25f, 3.f, -100});
    const auto s = test::cast_vector<float>(c.student);
    std::vector<float> ce(size_t(c.rows)), dce(s.size());
    cpu::cross_entropy_forward_backward<float>(ce.data(), dce.data(), s.data(), c.labels.data(),
                                               c.rows, c.vocab, 0.25f);
    CHECK(both.kl == std::vector<float>(size_t(c.rows), 0.f));
    test::require_close("equal rows ce", both.ce, ce, 1e-6);
    test::require_close("equal rows grad", both.grad, dce, 1e-6);
  }
}

TEST_CASE("distill_loss: gradient check in double of dce ce + dkl kl per row") {
  for (float tau : {0.5f, 1.f, 3.f}) {
    const DistillLossParams p{tau, 0.6f, 1.3f, -100};
    Case c = make_case(4, 7, 21, 2.f, 1.5f, {3, -100, 0, 6});
    const auto out = run_kernel<double>(c, p);
    auto forward = [&] {
      const auto o = run_kernel<double>(c, p, false);
      std::vector<double> f(o.ce.size());
      for (size_t r = 0; r < f.size(); ++r) f[r] = p.dce * o.ce[r] + p.dkl * o.kl[r];
      return f;
    };
    test::check_gradients("distill_loss tau=" + std::to_string(tau),
                          {{"student", &c.student, &out.grad}}, forward,
                          std::vector<double>(size_t(c.rows), 1.0));
  }
}

TEST_CASE("distill_loss: the op's gradient checks in double for both normalisations") {
  // mean() = alpha mean(ce) + beta tau^2 mean(kl), so this also checks the tau^2 and the divisor.
  for (bool all_rows : {false, true})
    for (float tau : {0.5f, 2.f}) {
      Case c = make_case(5, 6, 31, 2.f, 1.f, {2, -100, 5, 0, -100});
      const ag::DistillLossConfig config{0.3f, 0.8f, tau, all_rows, -100};
      const auto t = Tensor<double, Cpu>::from(Shape{c.rows, c.vocab}, c.teacher);
      const auto labels = Tensor<int32_t, Cpu>::from(Shape{c.rows}, c.labels);
      ag::Tape tape;
      auto s = var<double>(c.student, c.rows, c.vocab);
      const auto loss = ag::distill_loss(tape, s, t, labels, config);
      tape.backward();
      CHECK(loss.count == 3);
      CHECK(loss.rows == 5);
      CHECK(loss.divisor() == (all_rows ? 5 : 3));
      // The means against the reference's sums.
      const Reference ref = reference(c.student, c.teacher, c.labels, c.vocab, {tau, 0, 0, -100});
      double ce = 0, kl = 0;
      for (int64_t r = 0; r < c.rows; ++r) ce += ref.ce[size_t(r)], kl += ref.kl[size_t(r)];
      const double n = all_rows ? 5 : 3;
      CHECK(loss.mean_ce() == doctest::Approx(ce / n).epsilon(1e-12));
      CHECK(loss.mean_kl() == doctest::Approx(kl / n).epsilon(1e-12));
      CHECK(loss.mean() ==
            doctest::Approx(double(0.3f) * ce / n + double(0.8f) * double(tau) * double(tau) * kl / n)
                .epsilon(1e-12));
      auto forward = [&] {
        ag::Tape quiet;
        ag::NoGrad no_grad(quiet);
        auto sv = var<double>(c.student, c.rows, c.vocab, false);
        return std::vector<double>{ag::distill_loss(quiet, sv, t, labels, config).mean()};
      };
      const auto grad = s.grad().to_vector();
      test::check_gradients("distill_loss op all_rows=" + std::to_string(all_rows),
                            {{"student", &c.student, &grad}}, forward, {1.0});
    }
}

TEST_CASE("distill_loss: in place equals out of place - and forward only gives the same losses") {
  const DistillLossParams p{1.5f, 0.5f, 0.5f, -100};
  const Case c = make_case(5, 37, 41, 4.f, 2.f);
  auto check = [&](auto zero) {
    using T = decltype(zero);
    const auto out = run_kernel<T>(c, p);
    const auto only = run_kernel<T>(c, p, false);
    auto buffer = test::cast_vector<T>(c.student);
    const auto t = test::cast_vector<T>(c.teacher);
    std::vector<acc_t<T>> ce(size_t(c.rows)), kl(size_t(c.rows));
    cpu::distill_loss_forward_backward<T>(ce.data(), kl.data(), buffer.data(), buffer.data(),
                                          t.data(), c.labels.data(), c.rows, c.vocab, p);
    CHECK(test::bytes_of(buffer) == test::bytes_of(out.grad));
    CHECK(ce == out.ce);
    CHECK(kl == out.kl);
    CHECK(only.ce == out.ce);
    CHECK(only.kl == out.kl);
  };
  check(0.f);
  check(0.0);
  check(bf16(0.f));
}

TEST_CASE("distill_loss: bf16 logits agree with the float reference on the same values") {
  const DistillLossParams p{2.f, 0.5f, 1.f, -100};
  Case c = make_case(3, 300, 51, 5.f, 2.f);
  for (double& x : c.student) x = double(float(bf16(float(x))));
  for (double& x : c.teacher) x = double(float(bf16(float(x))));
  const auto b = run_kernel<bf16>(c, p);
  const Reference ref = reference(c.student, c.teacher, c.labels, c.vocab, p);
  test::require_close("bf16 ce", b.ce, ref.ce, 1e-6);
  test::require_close("bf16 kl", b.kl, ref.kl, 1e-5);
  test::require_close("bf16 grad", b.grad, ref.grad, 1e-2);
}

TEST_CASE("distill_loss: bad input gives a clear error and writes nothing") {
  const Case c = make_case(3, 5, 61, 1.f, 1.f, {0, -100, 4});
  const auto s = test::cast_vector<float>(c.student), t = test::cast_vector<float>(c.teacher);
  std::vector<float> ce(3, test::poison<float>()), kl(3, test::poison<float>()),
      grad(s.size(), test::poison<float>());
  auto run = [&](std::vector<int32_t> labels, float tau, int64_t vocab = 5) {
    return test::error_of([&] {
      cpu::distill_loss_forward_backward<float>(ce.data(), kl.data(), grad.data(), s.data(),
                                                t.data(), labels.data(), 3, vocab, {tau, 1, 1, -100});
    });
  };
  for (int32_t bad : {5, -1, 1 << 30}) {
    const std::string what = "label " + std::to_string(bad) + " at row 2";
    CHECK(run({0, -100, bad}, 1.f).find(what) != std::string::npos);
  }
  for (float tau : {0.f, -1.f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()})
    CHECK(run({0, -100, 4}, tau).find("temperature must be positive") != std::string::npos);
  CHECK(run({0, -100, 4}, 1.f, 0).find("bad sizes") != std::string::npos);
  CHECK(ce == std::vector<float>(3, test::poison<float>()));
  CHECK(kl == std::vector<float>(3, test::poison<float>()));
  CHECK(grad == std::vector<float>(s.size(), test::poison<float>()));

  // The ops: shapes, label counts and configuration.
  ag::Tape tape;
  auto sv = var<float>(c.student, 3, 5);
  auto labels = Tensor<int32_t, Cpu>::from(Shape{3}, c.labels);
  const auto teacher = Tensor<float, Cpu>::from(Shape{3, 5}, t);
  const auto narrow = Tensor<float, Cpu>::from(Shape{3, 4}, std::vector<float>(12, 0.f));
  CHECK(test::error_of([&] { ag::distill_loss(tape, sv, narrow, labels, {}); })
            .find("distill_loss teacher logits") != std::string::npos);
  const auto two = Tensor<int32_t, Cpu>::from(Shape{2}, {0, 1});
  CHECK(test::error_of([&] { ag::distill_loss(tape, sv, teacher, two, {}); })
            .find("2 labels for 3 rows") != std::string::npos);
  const auto out_of_vocab = Tensor<int32_t, Cpu>::from(Shape{3}, {0, 5, 1});
  CHECK(test::error_of([&] { ag::distill_loss(tape, sv, teacher, out_of_vocab, {}); })
            .find("label 5 at row 1 is outside the vocabulary [0, 5)") != std::string::npos);
  ag::DistillLossConfig cold;
  cold.temperature = 0.f;
  CHECK(test::error_of([&] { ag::distill_loss(tape, sv, teacher, labels, cold); })
            .find("temperature must be positive") != std::string::npos);
  ag::DistillLossConfig nan_weight;
  nan_weight.ce_weight = std::numeric_limits<float>::quiet_NaN();
  CHECK(test::error_of([&] { ag::distill_loss(tape, sv, teacher, labels, nan_weight); })
            .find("non-finite weights") != std::string::npos);
  CHECK(tape.size() == 0);

  auto hidden = var<float>(std::vector<double>(6, 0.5), 3, 2);
  auto head = var<float>(std::vector<double>(10, 0.5), 5, 2);
  const auto t_hidden = Tensor<float, Cpu>::from(Shape{3, 2}, std::vector<float>(6, 0.5f));
  const auto t_head = Tensor<float, Cpu>::from(Shape{5, 2}, std::vector<float>(10, 0.5f));
  const auto t_head_wide = Tensor<float, Cpu>::from(Shape{6, 2}, std::vector<float>(12, 0.5f));
  auto head_3 = var<float>(std::vector<double>(15, 0.5), 5, 3);
  CHECK(test::error_of([&] {
          ag::distill_loss_lm_head(tape, hidden, head_3, t_hidden, t_head, labels, {});
        }).find("does not take hidden states of width 2") != std::string::npos);
  CHECK(test::error_of([&] {
          ag::distill_loss_lm_head(tape, hidden, head, t_hidden, t_head_wide, labels, {});
        }).find("differs from the student head") != std::string::npos);
  CHECK(test::error_of([&] {
          ag::distill_loss_lm_head(tape, hidden, head, t_hidden, t_head, labels, {}, 0);
        }).find("chunk_rows must be positive") != std::string::npos);
  CHECK(tape.size() == 0);
}

TEST_CASE("distill_loss_lm_head: equals distill_loss on the full logits for any chunk size") {
  // rows = 10: chunks of 1, 3 and 4 leave a short last chunk, 5 and 10 divide, 64 exceeds rows.
  const int64_t rows = 10, dim = 6, vocab = 23;
  const auto h = test::random_vector(size_t(rows * dim), 71, -1.f, 1.f);
  const auto w = test::random_vector(size_t(vocab * dim), 72, -1.f, 1.f);
  const auto th = test::random_vector(size_t(rows * dim), 73, -1.f, 1.f);
  const auto tw = test::random_vector(size_t(vocab * dim), 74, -1.f, 1.f);
  std::vector<int32_t> label_values;
  for (int64_t r = 0; r < rows; ++r) label_values.push_back(r % 3 == 1 ? -100 : int32_t(r * 5 % vocab));
  const auto labels = Tensor<int32_t, Cpu>::from(Shape{rows}, label_values);
  const auto t_hidden = Tensor<double, Cpu>::from(Shape{rows, dim}, th);
  const auto t_head = Tensor<double, Cpu>::from(Shape{vocab, dim}, tw);
  const ag::DistillLossConfig config{0.5f, 1.f, 2.f, false, -100};

  // Unchunked: logits through ag::linear (teacher's under NoGrad), then distill_loss.
  ag::Tape tape;
  auto hidden = var<double>(h, rows, dim), head = var<double>(w, vocab, dim);
  auto logits = ag::linear(tape, hidden, head);
  Tensor<double, Cpu> teacher_logits;
  {
    ag::NoGrad no_grad(tape);
    teacher_logits = ag::linear(tape, ag::Var<double, Cpu>(t_hidden), ag::Var<double, Cpu>(t_head)).value();
  }
  const auto full = ag::distill_loss(tape, logits, teacher_logits, labels, config);
  tape.backward();
  const auto ref_hidden = hidden.grad().to_vector(), ref_head = head.grad().to_vector();

  for (int64_t chunk : {1, 3, 4, 5, 10, 64}) {
    const std::string what = "chunk " + std::to_string(chunk);
    auto hc = var<double>(h, rows, dim), wc = var<double>(w, vocab, dim);
    const auto loss = ag::distill_loss_lm_head(tape, hc, wc, t_hidden, t_head, labels, config, chunk);
    CHECK(tape.size() == 1);
    tape.backward();
    test::require_close(what + " ce", loss.ce.to_vector(), full.ce.to_vector(), 1e-12);
    test::require_close(what + " kl", loss.kl.to_vector(), full.kl.to_vector(), 1e-12);
    CHECK(loss.mean() == doctest::Approx(full.mean()).epsilon(1e-12));
    test::require_close(what + " d hidden", hc.grad().to_vector(), ref_hidden, 1e-12);
    test::require_close(what + " d head", wc.grad().to_vector(), ref_head, 1e-12);
  }
  // A frozen head gets no gradient and frozen hidden states none either; the other input gets
  // the same gradient as before.
  auto hc = var<double>(h, rows, dim), frozen = var<double>(w, vocab, dim, false);
  (void)ag::distill_loss_lm_head(tape, hc, frozen, t_hidden, t_head, labels, config, 3);
  tape.backward();
  CHECK_FALSE(frozen.has_grad());
  test::require_close("frozen head d hidden", hc.grad().to_vector(), ref_hidden, 1e-12);
  auto frozen_hidden = var<double>(h, rows, dim, false), wc = var<double>(w, vocab, dim);
  (void)ag::distill_loss_lm_head(tape, frozen_hidden, wc, t_hidden, t_head, labels, config, 3);
  tape.backward();
  CHECK_FALSE(frozen_hidden.has_grad());
  test::require_close("frozen hidden d head", wc.grad().to_vector(), ref_head, 1e-12);
  // Nothing recorded without a tape; the losses are the same.
  {
    ag::NoGrad no_grad(tape);
    auto hn = var<double>(h, rows, dim), wn = var<double>(w, vocab, dim);
    const auto loss = ag::distill_loss_lm_head(tape, hn, wn, t_hidden, t_head, labels, config, 4);
    CHECK(tape.size() == 0);
    test::require_close("no grad ce", loss.ce.to_vector(), full.ce.to_vector(), 1e-12);
  }
}
