// cpu::linear_rows, the inference product: values against a double-precision dot product with a
// per-element rounding bound, and its contract that a row's bits do not depend on the other rows
// of the call or on the thread count.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/kernels/matmul.hpp>

#include "common/random.hpp"

using namespace mil;

namespace {

// Restores the thread count a test changed.
struct ThreadsGuard {
  int saved = cpu::threads();
  ~ThreadsGuard() { cpu::set_threads(saved); }
};

template <class T>
bool same_bits(const T* a, const T* b, int64_t n) {
  return std::memcmp(a, b, size_t(n) * sizeof(T)) == 0;
}

// y = x W^T (+ y0) against the dot products in double. Each element's bound is the classic one for
// a sum of n terms in any order of depth d (d = in / 8 + 6 covers up to 16 lanes, their tree and
// the added y0): |err| <= d eps (sum |x_i w_i| + |y0|), with 1.01 for the rounding of d eps itself.
template <class T>
void check_values(int64_t rows, int64_t out, int64_t in, bool accumulate, uint64_t seed) {
  CAPTURE(rows);
  CAPTURE(out);
  CAPTURE(in);
  CAPTURE(accumulate);
  auto x = test::random_vector<T>(size_t(rows * in), seed);
  auto w = test::random_vector<T>(size_t(out * in), seed + 1);
  auto y0 = test::random_vector<T>(size_t(rows * out), seed + 2, -4.f, 4.f);
  // Not accumulating, y starts as NaN: it must be overwritten, never read.
  std::vector<T> y = accumulate ? y0 : std::vector<T>(y0.size(), std::numeric_limits<T>::quiet_NaN());
  cpu::linear_rows(y.data(), x.data(), w.data(), rows, out, in, accumulate);
  const double eps = std::numeric_limits<T>::epsilon() / 2, depth = double(in / 8 + 6);
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < out; ++j) {
      double ref = accumulate ? double(y0[size_t(r * out + j)]) : 0.0;
      double magnitude = std::abs(ref);
      for (int64_t i = 0; i < in; ++i) {
        double p = double(x[size_t(r * in + i)]) * double(w[size_t(j * in + i)]);
        ref += p;
        magnitude += std::abs(p);
      }
      const double got = double(y[size_t(r * out + j)]);
      const double bound = 1.01 * depth * eps * magnitude;
      if (!(std::abs(got - ref) <= bound) && bad++ < 5)
        FAIL_CHECK("y[", r, ",", j, "] = ", got, ", reference ", ref, ", bound ", bound);
    }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("linear_rows: known 2x3 times (2x3)^T, accumulate adds to y") {
  const std::vector<float> x{1, 2, 3, 4, 5, 6}, w{1, 0, -1, 0.5f, 0.5f, 0.5f};
  std::vector<float> y(4, std::nanf(""));
  cpu::linear_rows(y.data(), x.data(), w.data(), 2, 2, 3, false);
  CHECK(y == std::vector<float>{-2, 3, -2, 7.5f});
  cpu::linear_rows(y.data(), x.data(), w.data(), 2, 2, 3, true);
  CHECK(y == std::vector<float>{-4, 6, -4, 15});
}

TEST_CASE("linear_rows: values within the rounding bound - sizes off the tiles and lanes") {
  uint64_t seed = 10;
  for (int64_t in : {1, 7, 9, 16, 17, 576, 577})
    for (int64_t out : {1, 3, 49, 130})
      for (int64_t rows : {1, 3, 8, 13}) {
        check_values<float>(rows, out, in, false, seed);
        check_values<float>(rows, out, in, true, seed + 3);
        check_values<double>(rows, out, in, seed % 2 == 0, seed + 6);
        seed += 9;
      }
}

TEST_CASE("linear_rows: in = 0 writes zeros (or leaves y) - empty outputs touch nothing") {
  std::vector<float> y(6, std::nanf(""));
  cpu::linear_rows<float>(y.data(), nullptr, nullptr, 2, 3, 0, false);
  CHECK(y == std::vector<float>(6, 0.f));
  std::vector<float> z{1, 2, 3, 4, 5, 6};
  cpu::linear_rows<float>(z.data(), nullptr, nullptr, 3, 2, 0, true);
  CHECK(z == std::vector<float>{1, 2, 3, 4, 5, 6});
  cpu::linear_rows<float>(nullptr, nullptr, nullptr, 0, 3, 4, false);
  cpu::linear_rows<float>(nullptr, nullptr, nullptr, 3, 0, 4, true);
}

TEST_CASE("linear_rows: a row's bits do not depend on the rows computed with it") {
  // out = 130 spans three column blocks and an odd column; in = 577 leaves a 1-element tail.
  for (int64_t in : {9, 577}) {
    const int64_t out = 130, max_rows = 17;
    auto x = test::random_vector<float>(size_t(max_rows * in), 40 + uint64_t(in));
    auto w = test::random_vector<float>(size_t(out * in), 41 + uint64_t(in));
    auto y0 = test::random_vector<float>(size_t(max_rows * out), 42 + uint64_t(in));
    for (bool accumulate : {false, true}) {
      // Each row alone, at its own offset: the reference bits.
      std::vector<float> alone = y0;
      for (int64_t r = 0; r < max_rows; ++r)
        cpu::linear_rows(alone.data() + r * out, x.data() + r * in, w.data(), 1, out, in,
                         accumulate);
      for (int64_t rows = 1; rows <= max_rows; ++rows)
        for (int64_t first = 0; first + rows <= max_rows; first += 5) {
          CAPTURE(in);
          CAPTURE(accumulate);
          CAPTURE(rows);
          CAPTURE(first);
          std::vector<float> together = y0;
          cpu::linear_rows(together.data() + first * out, x.data() + first * in, w.data(), rows,
                           out, in, accumulate);
          for (int64_t r = first; r < first + rows; ++r)
            if (!same_bits(together.data() + r * out, alone.data() + r * out, out))
              FAIL_CHECK("row ", r, " differs computed among ", rows, " rows from ", first);
        }
    }
  }
}

TEST_CASE("linear_rows: bits do not depend on the thread count") {
  ThreadsGuard guard;
  const int64_t rows = 11, out = 300, in = 1000;
  auto x = test::random_vector<float>(size_t(rows * in), 50);
  auto w = test::random_vector<float>(size_t(out * in), 51);
  std::vector<float> one(size_t(rows * out)), many(size_t(rows * out));
  cpu::set_threads(1);
  cpu::linear_rows(one.data(), x.data(), w.data(), rows, out, in, false);
  for (int n : {2, 3, 4}) {
    cpu::set_threads(n);
    cpu::linear_rows(many.data(), x.data(), w.data(), rows, out, in, false);
    CAPTURE(n);
    CHECK(same_bits(one.data(), many.data(), rows * out));
  }
}

TEST_CASE("linear_rows: negative sizes, overflowing sizes and null operands throw") {
  std::vector<float> b(16);
  float* p = b.data();
  CHECK_THROWS_AS(cpu::linear_rows(p, p, p, -1, 2, 2, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows(p, p, p, 2, -1, 2, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows(p, p, p, 2, 2, -1, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows(p, p, p, int64_t(1) << 40, 2, int64_t(1) << 40, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows<float>(nullptr, p, p, 2, 2, 2, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows<float>(p, nullptr, p, 2, 2, 2, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows<float>(p, p, nullptr, 2, 2, 2, false), Error);
  CHECK(b == std::vector<float>(16, 0.f));  // a rejected call writes nothing
}
