#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <mil/kernels/global_norm.hpp>

#include "common/random.hpp"

using namespace mil;

TEST_CASE("global_norm: sum_of_squares is exact on integer-valued inputs") {
  const int64_t n = 100003;  // many blocks of the blocked sum, and a partial last one
  std::vector<float> f(n);
  std::vector<double> d(n);
  std::vector<bf16> b(n);
  long long expect = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int value = int(i * 37 % 23) - 11;
    f[size_t(i)] = float(value), d[size_t(i)] = value, b[size_t(i)] = bf16(float(value));
    expect += value * value;
  }
  CHECK(cpu::sum_of_squares(f.data(), n) == double(expect));
  CHECK(cpu::sum_of_squares(d.data(), n) == double(expect));
  CHECK(cpu::sum_of_squares(b.data(), n) == double(expect));
  CHECK(cpu::sum_of_squares(f.data(), 1) == 121.0);
  CHECK(cpu::sum_of_squares<float>(nullptr, 0) == 0.0);
  CHECK_THROWS_AS(cpu::sum_of_squares(f.data(), -1), Error);
}

TEST_CASE("global_norm: sum_of_squares stays accurate over a million equal values") {
  const int64_t n = 1000000;
  const float value = 0.1f;  // not exact in binary: every square rounds
  std::vector<float> x(n, value);
  const double expect = double(n) * double(value) * double(value);
  CHECK(std::fabs(cpu::sum_of_squares(x.data(), n) - expect) <= 1e-12 * expect);
}

TEST_CASE(
    "global_norm: clip_coefficient is min(1, max_norm / (norm + 1e-6)), NaN when not finite") {
  CHECK(cpu::clip_coefficient(4.0, 1.f) == doctest::Approx(1.0 / (2.0 + 1e-6)).epsilon(1e-7));
  CHECK(cpu::clip_coefficient(1e6, 0.1f) == doctest::Approx(0.1 / (1e3 + 1e-6)).epsilon(1e-7));
  CHECK(cpu::clip_coefficient(0.25, 1.f) == 1.f);  // norm 0.5 below the limit: no clipping
  CHECK(cpu::clip_coefficient(0.0, 1.f) == 1.f);
  CHECK(cpu::clip_coefficient(1.0, 1.f) < 1.f);  // the 1e-6 keeps a norm at the limit just under
  CHECK(std::isnan(cpu::clip_coefficient(std::numeric_limits<double>::infinity(), 1.f)));
  CHECK(std::isnan(cpu::clip_coefficient(std::nan(""), 1.f)));
  CHECK_THROWS_AS(cpu::clip_coefficient(1.0, 0.f), Error);
}
