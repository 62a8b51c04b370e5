// Row argmax (greedy decoding): ties to the smaller index, NaN never wins.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/generate/sampler.hpp>
#include <mil/kernels/argmax.hpp>

using namespace mil;

TEST_CASE("argmax: ties go to the smaller index and NaN never wins") {
  const float nan = NAN, inf = INFINITY;
  const std::vector<float> x = {1, 3, 3, 2,        // tie -> 1
                                nan, -1, nan, -2,  // NaNs skipped -> 1
                                nan, nan, nan, nan,  // all NaN -> 0
                                -inf, -inf, -inf, -inf,  // all -inf -> 0
                                0, inf, inf, nan};       // +inf tie -> 1
  std::vector<int32_t> out(5, -1);
  cpu::argmax_rows(out.data(), x.data(), 5, 4);
  CHECK(out == std::vector<int32_t>{1, 1, 0, 0, 1});
  for (int r = 0; r < 5; ++r)
    CHECK(gen::greedy_token(std::span(x).subspan(size_t(r) * 4, 4)) == out[size_t(r)]);
  CHECK_THROWS_WITH_AS(cpu::argmax_rows(out.data(), x.data(), 1, 0), doctest::Contains("cols=0"),
                       Error);
}
