#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <mil/kernels/cross_entropy.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

TEST_CASE("cross_entropy: uniform logits give log(V) and a gradient of dloss x (1/V - onehot)") {
  const int64_t rows = 3, vocab = 10;
  const float dloss = 0.5f;
  std::vector<int32_t> targets{0, 9, 4};
  for (float value : {0.f, 3.5f, -20.f}) {
    std::vector<double> logits(size_t(rows * vocab), value), losses(rows, -1.0),
        dlogits(logits.size(), test::poison<double>());
    cpu::cross_entropy_forward_backward<double>(losses.data(), dlogits.data(), logits.data(),
                                                targets.data(), rows, vocab, dloss);
    for (int64_t r = 0; r < rows; ++r) {
      CHECK(losses[size_t(r)] == doctest::Approx(std::log(10.0)).epsilon(1e-14));
      for (int64_t j = 0; j < vocab; ++j)
        CHECK(dlogits[size_t(r * vocab + j)] ==
              doctest::Approx(0.5 * (0.1 - (j == targets[size_t(r)]))).epsilon(1e-14));
    }
  }
}

TEST_CASE("cross_entropy: known two-class values and a large margin giving ~0 loss") {
  // softmax([0, ln 3]) = [1/4, 3/4].
  std::vector<float> logits{0.f, float(std::log(3.0))};
  std::vector<int32_t> targets{0};
  std::vector<float> loss(1), dlogits(2, test::poison<float>());
  cpu::cross_entropy_forward_backward<float>(loss.data(), dlogits.data(), logits.data(),
                                             targets.data(), 1, 2, 1.f);
  CHECK(loss[0] == doctest::Approx(std::log(4.0)).epsilon(1e-6));
  CHECK(dlogits[0] == doctest::Approx(-0.75).epsilon(1e-6));
  CHECK(dlogits[1] == doctest::Approx(0.75).epsilon(1e-6));

  // The target 60 above all others: loss = log(1 + 999 e^-60) ~ 1e-23.
  const int64_t vocab = 1000;
  std::vector<float> margin(vocab, 1.f);
  margin[123] = 61.f;
  std::vector<int32_t> t{123};
  std::vector<float> dm(vocab, test::poison<float>());
  cpu::cross_entropy_forward_backward<float>(loss.data(), dm.data(), margin.data(), t.data(), 1,
                                             vocab, 1.f);
  CHECK(loss[0] >= 0.f);
  CHECK(loss[0] < 1e-6f);
  for (float g : dm) CHECK(std::fabs(g) < 1e-6f);
}

TEST_CASE("cross_entropy: ignored rows give zero loss and zero gradient - count_targets") {
  const int64_t rows = 4, vocab = 6;
  for (int32_t ignore : {-100, -1, 2}) {
    std::vector<int32_t> targets{1, ignore, 5, ignore};
    auto logits = test::random_vector<float>(size_t(rows * vocab), 11, -3.f, 3.f);
    std::vector<float> losses(rows, test::poison<float>()),
        dlogits(logits.size(), test::poison<float>());
    cpu::cross_entropy_forward_backward<float>(losses.data(), dlogits.data(), logits.data(),
                                               targets.data(), rows, vocab, 0.25f, ignore);
    CHECK(cpu::count_targets(targets.data(), rows, ignore) == 2);
    for (int64_t r : {1, 3}) {
      CHECK(losses[size_t(r)] == 0.f);
      for (int64_t j = 0; j < vocab; ++j) CHECK(dlogits[size_t(r * vocab + j)] == 0.f);
    }
    for (int64_t r : {0, 2}) {
      CHECK(losses[size_t(r)] > 0.f);
      double sum = 0;  // a softmax gradient row sums to 0
      for (int64_t j = 0; j < vocab; ++j) sum += dlogits[size_t(r * vocab + j)];
      CHECK(std::fabs(sum) < 1e-6);
    }
  }
  std::vector<int32_t> none{-100, -100};
  CHECK(cpu::count_targets(none.data(), 2, -100) == 0);
}

TEST_CASE("cross_entropy: an out-of-range target throws naming row and value - writing nothing") {
  const int64_t rows = 3, vocab = 5;
  std::vector<float> logits(size_t(rows * vocab), 1.f);
  for (int32_t bad : {5, -1, 1 << 30}) {
    std::vector<int32_t> targets{0, -100, bad};
    std::vector<float> losses(rows, test::poison<float>()),
        dlogits(logits.size(), test::poison<float>());
    const std::string what = "target " + std::to_string(bad) + " at row 2";
    CHECK_THROWS_WITH_AS(
        cpu::cross_entropy_forward_backward<float>(losses.data(), dlogits.data(), logits.data(),
                                                   targets.data(), rows, vocab, 1.f),
        doctest::Contains(what.c_str()), Error);
    CHECK(losses == std::vector<float>(rows, test::poison<float>()));
    CHECK(dlogits == std::vector<float>(logits.size(), test::poison<float>()));
  }
  std::vector<int32_t> targets{0};
  float loss = 0;
  CHECK_THROWS_AS(cpu::cross_entropy_forward_backward<float>(&loss, nullptr, logits.data(),
                                                             targets.data(), 1, 0, 1.f),
                  Error);
}

TEST_CASE("cross_entropy: in place equals out of place - and forward-only losses are the same") {
  const int64_t rows = 5, vocab = 37;
  std::vector<int32_t> targets{36, 0, -100, 17, 3};
  auto check = [&](auto zero) {
    using T = decltype(zero);
    auto logits = test::random_vector<T>(size_t(rows * vocab), 21, -4.f, 4.f);
    std::vector<acc_t<T>> losses(rows), losses_in_place(rows), losses_only(rows);
    std::vector<T> dlogits(logits.size(), test::poison<T>());
    cpu::cross_entropy_forward_backward<T>(losses.data(), dlogits.data(), logits.data(),
                                           targets.data(), rows, vocab, 0.3f);
    cpu::cross_entropy_forward_backward<T>(losses_only.data(), nullptr, logits.data(),
                                           targets.data(), rows, vocab, 0.3f);
    std::vector<T> buffer = logits;
    cpu::cross_entropy_forward_backward<T>(losses_in_place.data(), buffer.data(), buffer.data(),
                                           targets.data(), rows, vocab, 0.3f);
    CHECK(buffer == dlogits);
    CHECK(losses_in_place == losses);
    CHECK(losses_only == losses);
  };
  check(0.f);
  check(0.0);
}

TEST_CASE("cross_entropy: gradient check in double of sum(losses) and of a per-row weighting") {
  const int64_t rows = 4, vocab = 7;
  std::vector<int32_t> targets{3, -100, 0, 6};
  auto logits = test::random_vector(size_t(rows * vocab), 31, -2.f, 2.f);
  auto forward = [&] {
    std::vector<double> losses(rows);
    cpu::cross_entropy_forward_backward<double>(losses.data(), nullptr, logits.data(),
                                                targets.data(), rows, vocab, 1.f);
    return losses;
  };
  // dloss = 1 for every row: d sum(losses).
  std::vector<double> dlogits(logits.size(), test::poison<double>()), losses(rows);
  cpu::cross_entropy_forward_backward<double>(losses.data(), dlogits.data(), logits.data(),
                                              targets.data(), rows, vocab, 1.f);
  test::check_gradients("cross_entropy", {{"logits", &logits, &dlogits}}, forward,
                        std::vector<double>(rows, 1.0));
  // Weights w_r (float values, so dloss = w_r is exact): one call per row with its own dloss.
  auto weights = test::cast_vector<double>(test::random_vector<float>(rows, 32, 0.1f, 2.f));
  std::vector<double> weighted(logits.size(), test::poison<double>());
  for (int64_t r = 0; r < rows; ++r)
    cpu::cross_entropy_forward_backward<double>(&losses[size_t(r)], &weighted[size_t(r * vocab)],
                                                &logits[size_t(r * vocab)], &targets[size_t(r)], 1,
                                                vocab, float(weights[size_t(r)]));
  test::check_gradients("cross_entropy weighted", {{"logits", &logits, &weighted}}, forward,
                        weights);
}

TEST_CASE("cross_entropy: logits near 1e4 give the same results as the same logits shifted to 0") {
  const int64_t rows = 2, vocab = 9;
  std::vector<int32_t> targets{4, 8};
  std::vector<float> small(size_t(rows * vocab)), large(small.size());
  for (size_t i = 0; i < small.size(); ++i) {
    small[i] = float(int(i * 7 % 11) - 5) * 0.5f;  // exact halves, so 1e4 + x is exact too
    large[i] = 1e4f + small[i];
  }
  std::vector<float> loss_small(rows), loss_large(rows), d_small(small.size()),
      d_large(small.size());
  cpu::cross_entropy_forward_backward<float>(loss_small.data(), d_small.data(), small.data(),
                                             targets.data(), rows, vocab, 1.f);
  cpu::cross_entropy_forward_backward<float>(loss_large.data(), d_large.data(), large.data(),
                                             targets.data(), rows, vocab, 1.f);
  for (float x : loss_large) CHECK(std::isfinite(x));
  CHECK(loss_large == loss_small);
  CHECK(d_large == d_small);
  // And the float result agrees with double.
  std::vector<double> large_d = test::cast_vector<double>(large), loss_d(rows), d_d(large.size());
  cpu::cross_entropy_forward_backward<double>(loss_d.data(), d_d.data(), large_d.data(),
                                              targets.data(), rows, vocab, 1.f);
  test::require_close("cross_entropy 1e4 loss", loss_large, loss_d, 1e-6);
  test::require_close("cross_entropy 1e4 gradient", d_large, d_d, 1e-6);
}

TEST_CASE("cross_entropy: bf16 logits agree with the float reference on the same values") {
  const int64_t rows = 3, vocab = 300;
  std::vector<int32_t> targets{299, -100, 7};
  auto values =
      test::round_to_bf16(test::random_vector<float>(size_t(rows * vocab), 41, -5.f, 5.f));
  auto logits = test::cast_vector<bf16>(values);
  std::vector<float> losses(rows), ref_losses(rows), ref(values.size());
  std::vector<bf16> dlogits(values.size(), test::poison<bf16>());
  cpu::cross_entropy_forward_backward<bf16>(losses.data(), dlogits.data(), logits.data(),
                                            targets.data(), rows, vocab, 0.5f);
  cpu::cross_entropy_forward_backward<float>(ref_losses.data(), ref.data(), values.data(),
                                             targets.data(), rows, vocab, 0.5f);
  test::require_close("cross_entropy bf16 loss", losses, ref_losses, 1e-6);
  test::require_close("cross_entropy bf16 gradient", dlogits, ref, 1e-2);
}
