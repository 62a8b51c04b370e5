#include <doctest/doctest.h>

#include <cmath>

#include <mil/optim/schedule.hpp>

using mil::optim::CosineSchedule;

TEST_CASE("schedule: linear warm-up - cosine to the floor - flat after the end") {
  CosineSchedule s{1.0f, 10, 110, 0.1f};
  CHECK(s.lr(0) == doctest::Approx(0.1));
  CHECK(s.lr(4) == doctest::Approx(0.5));
  CHECK(s.lr(9) == doctest::Approx(1.0));
  CHECK(s.lr(10) == doctest::Approx(1.0));
  CHECK(s.lr(60) == doctest::Approx(0.55));  // half way: (max + min) / 2
  // A quarter and three quarters of the way: cosine, not a straight line (0.775 and 0.325).
  CHECK(s.lr(35) == doctest::Approx(0.1 + 0.45 * (1 + std::sqrt(0.5))));
  CHECK(s.lr(85) == doctest::Approx(0.1 + 0.45 * (1 - std::sqrt(0.5))));
  CHECK(s.lr(110) == doctest::Approx(0.1));
  CHECK(s.lr(500) == doctest::Approx(0.1));
  for (int64_t t = 10; t < 110; ++t) CHECK(s.lr(t + 1) <= s.lr(t));
  CosineSchedule no_warmup{2.0f, 0, 4};
  CHECK(no_warmup.lr(0) == doctest::Approx(2.0));
  CHECK_THROWS_AS(CosineSchedule({1.f, 0, 0}).lr(0), mil::Error);
}
