// The comparison helper itself: each bound must reject what the other lets through.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "common/compare.hpp"
#include "common/random.hpp"

using namespace mil;

TEST_CASE("compare: one wrong element in a million fails the element bound, not the norm") {
  const size_t n = 1000000, wrong = 123457;
  const auto ref = test::random_vector(n, 1);  // uniform in [-1, 1): rms about 0.58
  for (const double tol : {test::tolerance<bf16>(), test::tolerance<float>()}) {
    CAPTURE(tol);
    const test::Bound bound = test::default_bound<float, double>(tol);
    auto out = ref;
    // An error 100x the element bound on one element: its share of the norm is still only
    // 100 x 8 tol x rms / (1000 rms) = 0.8 tol.
    out[wrong] += 100 * bound.element * 0.58;
    const test::Closeness c = test::closeness(out, ref);
    CHECK(c.normalised <= bound.normalised);
    CHECK(c.element > bound.element);
    CHECK(c.worst == wrong);
    CHECK_FALSE(c.within(bound));
    // The same error spread over every element passes the element bound and fails the norm.
    auto spread = ref;
    for (size_t i = 0; i < n; ++i) spread[i] += (i % 2 ? 1 : -1) * 2 * tol * std::fabs(ref[i]);
    const test::Closeness s = test::closeness(spread, ref);
    CHECK(s.element <= bound.element);
    CHECK(s.normalised > bound.normalised);
    CHECK_FALSE(s.within(bound));
  }
}

TEST_CASE("compare: small elements are measured against the rms, NaN and all-zero never pass") {
  const std::vector<double> ref{1, -1, 1, -1e-9};  // rms about 0.87
  // 1e-6 off on the tiny element: a million times its size, but 1.2e-6 of the rms.
  const test::Closeness tiny = test::closeness({1, -1, 1, -1e-9 + 1e-6}, ref);
  CHECK(tiny.element == doctest::Approx(1e-6 / std::sqrt(0.75)));
  CHECK(tiny.worst == 3);
  // A large element is measured against itself: 1% of it is 1e-2.
  const test::Closeness big = test::closeness({100, -1, 1, -1e-9}, {101, -1, 1, -1e-9});
  CHECK(big.element == doctest::Approx(1.0 / 101));
  const test::Closeness nan = test::closeness({1, NAN, 1, -1e-9}, ref);
  CHECK(std::isinf(nan.element));
  CHECK(nan.worst == 1);
  CHECK_FALSE(nan.within({1e9, 1e9}));
  const test::Closeness zero = test::closeness({0, 0, 0, 0}, {0, 0, 0, 1e-30});
  CHECK(zero.zero_output);
  CHECK_FALSE(zero.within({1e9, 1e9}));
  CHECK(test::closeness(ref, ref).within({0, 0}));
}

TEST_CASE("compare: the default element bound follows the element types") {
  CHECK(test::default_bound<double, double>(1e-12).element == doctest::Approx(8e-12));
  CHECK(test::default_bound<float, double>(1e-9).element == 4 * 0x1p-24);  // fp32 rounding floor
  CHECK(test::default_bound<bf16, float>(1e-4).element == 4 * 0x1p-8);     // bf16 rounding floor
  CHECK(test::default_bound<float, bf16>(1e-2).element == doctest::Approx(8e-2));
}

// require_close itself, on the million-element case above: doctest reports this case as passed
// only if one of its checks fails.
TEST_CASE("compare: require_close fails on one wrong element in a million" * doctest::should_fail()) {
  const auto ref = test::random_vector(1000000, 1);
  auto out = ref;
  out[123457] += 0.5;  // normalised error 8.7e-4, within 1e-3
  test::require_close("one wrong element (this failure is expected)", out, ref, 1e-3);
}
