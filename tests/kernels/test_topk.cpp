// Row top-k with log-sum-exp (kernels/topk.hpp), against a full sort, and the sampler's top-k
// form (Sampler::sample_top) against sampling the whole row.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <mil/generate/sampler.hpp>
#include <mil/kernels/topk.hpp>

#include "common/random.hpp"

using namespace mil;

namespace {

// Row r of x (cols of ld) in the sampler's order by a full sort, and its log-sum-exp by a
// straightforward double sum (no max shift: the test rows are small).
struct Sorted {
  std::vector<int32_t> ids;
  std::vector<float> values;
  double lse = 0;
};
Sorted full_sort(const std::vector<float>& x, int64_t r, int64_t cols, int64_t ld) {
  Sorted s;
  double sum = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const float v = x[size_t(r * ld + c)];
    if (std::isnan(v)) continue;
    sum += std::exp(double(v));
    if (v > -INFINITY) s.ids.push_back(int32_t(c));
  }
  std::stable_sort(s.ids.begin(), s.ids.end(), [&](int32_t a, int32_t b) {
    return x[size_t(r * ld + a)] > x[size_t(r * ld + b)];  // stable: ties keep the smaller id first
  });
  for (int32_t i : s.ids) s.values.push_back(x[size_t(r * ld + i)]);
  s.lse = std::log(sum);
  return s;
}

}  // namespace

TEST_CASE("topk_rows: the k best in order with ties NaN -inf short rows and a stride") {
  const float nan = NAN, inf = INFINITY;
  const int64_t cols = 6, ld = 8;  // 2 columns of padding per row, never read
  const int32_t k = 4;
  std::vector<float> x = {
      1, 3, 3, 2, 0, 3, 99, 99,          // a three-way tie: ids 1, 2, 5 in order
      nan, -1, nan, -2, 5, -inf, 99, 99,  // NaN and -inf are no candidates
      -inf, -inf, 2, -inf, nan, -inf, 99, 99,  // one candidate: padded with -1 / -inf
      -inf, -inf, -inf, -inf, -inf, -inf, 99, 99,  // none
      0.5f, -0.25f, 0.75f, 0.125f, -3, 1.5f, 99, 99};
  const int64_t rows = int64_t(x.size()) / ld;
  std::vector<int32_t> ids(size_t(rows * k), 7);
  std::vector<float> values(size_t(rows * k), 7), lse(size_t(rows), 7);
  cpu::topk_rows(ids.data(), values.data(), lse.data(), x.data(), rows, cols, ld, k);
  // Catches: ties to the larger id, NaN or -inf taken, padding read (99 would win), short rows
  // not padded.
  CHECK(std::vector(ids.begin(), ids.begin() + 4) == std::vector<int32_t>{1, 2, 5, 3});
  CHECK(std::vector(ids.begin() + 4, ids.begin() + 8) == std::vector<int32_t>{4, 1, 3, -1});
  CHECK(std::vector(ids.begin() + 8, ids.begin() + 12) == std::vector<int32_t>{2, -1, -1, -1});
  CHECK(std::vector(ids.begin() + 12, ids.begin() + 16) == std::vector<int32_t>{-1, -1, -1, -1});
  CHECK(values[9] == -inf);
  CHECK(values[12] == -inf);
  CHECK(lse[3] == -inf);  // nothing but -inf: log 0
  for (int64_t r : {0, 1, 2, 4}) {
    CAPTURE(r);
    const Sorted s = full_sort(x, r, cols, ld);
    for (int32_t j = 0; j < k; ++j) {
      const bool has = size_t(j) < s.ids.size();
      CHECK(ids[size_t(r * k + j)] == (has ? s.ids[size_t(j)] : -1));
      CHECK(values[size_t(r * k + j)] == (has ? s.values[size_t(j)] : -inf));
    }
    // Catches: NaN summed in, -inf rows of exp(-inf - top) mishandled, the max shift dropped.
    CHECK(lse[size_t(r)] == doctest::Approx(s.lse).epsilon(1e-6));
  }
  // +inf: the log-sum-exp is +inf, and +inf ranks first.
  std::vector<float> up = {1, inf, 2};
  cpu::topk_rows(ids.data(), values.data(), lse.data(), up.data(), 1, 3, 3, 2);
  CHECK(ids[0] == 1);
  CHECK(ids[1] == 2);
  CHECK(lse[0] == inf);
}

TEST_CASE("topk_rows: wide random rows in float and bf16 against a full sort") {
  const int64_t rows = 3, cols = 5000;
  for (int32_t k : {1, 10, kMaxTopK}) {
    CAPTURE(k);
    auto x = test::random_vector<float>(size_t(rows * cols), 11 + uint64_t(k), -6.f, 6.f);
    // bf16 rounding makes many exact ties: the order must still be larger value, smaller id.
    const auto xb = test::cast_vector<bf16>(x);
    std::vector<float> rounded(xb.size());
    for (size_t i = 0; i < xb.size(); ++i) rounded[i] = float(xb[i]);
    std::vector<int32_t> ids(size_t(rows * k));
    std::vector<float> values(static_cast<size_t>(rows * k)), lse(static_cast<size_t>(rows));
    cpu::topk_rows(ids.data(), values.data(), lse.data(), xb.data(), rows, cols, cols, k);
    int64_t ties = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const Sorted s = full_sort(rounded, r, cols, cols);
      for (int32_t j = 0; j < k; ++j) {
        REQUIRE(ids[size_t(r * k + j)] == s.ids[size_t(j)]);
        REQUIRE(values[size_t(r * k + j)] == s.values[size_t(j)]);
        ties += j > 0 && values[size_t(r * k + j)] == values[size_t(r * k + j - 1)];
      }
      double top = -INFINITY, sum = 0;
      for (int64_t c = 0; c < cols; ++c) top = std::max(top, double(rounded[size_t(r * cols + c)]));
      for (int64_t c = 0; c < cols; ++c) sum += std::exp(double(rounded[size_t(r * cols + c)]) - top);
      CHECK(lse[size_t(r)] == doctest::Approx(top + std::log(sum)).epsilon(1e-6));
    }
    if (k == kMaxTopK) CHECK(ties > 0);  // the fixture reaches the tie-break
  }
  std::vector<int32_t> ids(1);
  std::vector<float> v(1), lse(1), x(4);
  CHECK_THROWS_WITH_AS(cpu::topk_rows(ids.data(), v.data(), lse.data(), x.data(), 1, 4, 4, kMaxTopK + 1),
                       doctest::Contains("k=65"), Error);
  CHECK_THROWS_WITH_AS(cpu::topk_rows(ids.data(), v.data(), lse.data(), x.data(), 1, 4, 3, 1),
                       doctest::Contains("ld=3"), Error);
}

TEST_CASE("sampler: sample_top draws what sample draws from the whole row") {
  // A top-k kernel on the GPU sends the host each row's best k: the draws must not change.
  const int64_t cols = 400;
  auto x = test::random_vector<float>(size_t(50 * cols), 21, -3.f, 3.f);
  for (size_t i = 0; i < x.size(); i += 7) x[i] = float(bf16(x[i]));  // some exact ties
  x[5] = NAN;
  x[9] = -INFINITY;
  struct Case {
    float temperature;
    int32_t top_k;
    float top_p, min_p;
  };
  for (const Case& c : {Case{0.7f, 10, 0.95f, 0.f}, Case{1.f, 40, 1.f, 0.05f}, Case{0.f, 0, 1.f, 0.f},
                        Case{1.3f, 1, 0.5f, 0.f}, Case{0.9f, 64, 0.9f, 0.1f}}) {
    CAPTURE(c.top_k);
    CAPTURE(c.temperature);
    gen::SamplingConfig sc;
    sc.temperature = c.temperature;
    sc.top_k = c.top_k;
    sc.top_p = c.top_p;
    sc.min_p = c.min_p;
    sc.seed = 4;
    const int32_t k = std::max(c.top_k, 8);  // the kernel may send more than the sampler keeps
    gen::Sampler whole(sc), top(sc);
    REQUIRE(top.samples_from_top(k));
    std::vector<int32_t> ids(static_cast<size_t>(k));
    std::vector<float> values(static_cast<size_t>(k));
    float lse = 0;
    int64_t differ_from_first = 0;
    for (int64_t r = 0; r < 50; ++r) {
      const std::span<const float> row(x.data() + r * cols, size_t(cols));
      cpu::topk_rows(ids.data(), values.data(), &lse, row.data(), 1, cols, cols, k);
      const int32_t a = whole.sample(row, {}), b = top.sample_top(ids, values);
      REQUIRE(a == b);
      differ_from_first += a != ids[0];
    }
    // Catches a fixture where every draw is the top token (the test would prove little).
    if (c.temperature > 0 && c.top_k != 1) CHECK(differ_from_first > 5);
  }
  // Not allowed: a repetition penalty, no top-k, or a top-k wider than the candidates.
  gen::SamplingConfig sc;
  sc.repetition_penalty = 1.1f;
  CHECK_FALSE(gen::Sampler(sc).samples_from_top(64));
  sc.repetition_penalty = 1.f;
  sc.top_k = 0;
  CHECK_FALSE(gen::Sampler(sc).samples_from_top(64));
  sc.top_k = 40;
  CHECK_FALSE(gen::Sampler(sc).samples_from_top(39));
  gen::Sampler s(sc);
  const std::vector<int32_t> ids(39, 0);
  const std::vector<float> values(39, 0.f);
  CHECK_THROWS_WITH_AS(s.sample_top(ids, values), doctest::Contains("needs the top 40"), Error);
}
