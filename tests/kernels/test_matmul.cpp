#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/kernels/matmul.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// C = alpha op(A) op(B) + beta C by the definition, in double; beta = 0 ignores c_in.
template <class T>
std::vector<double> triple_loop(const GemmShape& s, const std::vector<T>& a,
                                const std::vector<T>& b, const std::vector<T>& c_in) {
  std::vector<double> c(size_t(s.batch * s.m * s.n));
  for (int64_t q = 0; q < s.batch; ++q) {
    const T* A = a.data() + q * s.m * s.k;
    const T* B = b.data() + q * s.k * s.n;
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t j = 0; j < s.n; ++j) {
        double sum = 0;
        for (int64_t p = 0; p < s.k; ++p) {
          double x = s.trans_a ? A[p * s.m + i] : A[i * s.k + p];
          double y = s.trans_b ? B[j * s.k + p] : B[p * s.n + j];
          sum += x * y;
        }
        size_t at = size_t(q * s.m * s.n + i * s.n + j);
        c[at] = double(s.alpha) * sum + (s.beta != 0 ? double(s.beta) * double(c_in[at]) : 0.0);
      }
  }
  return c;
}

std::string describe(const GemmShape& s) {
  return "m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) +
         " batch=" + std::to_string(s.batch) + " ta=" + std::to_string(s.trans_a) +
         " tb=" + std::to_string(s.trans_b) + " alpha=" + std::to_string(s.alpha) +
         " beta=" + std::to_string(s.beta);
}

template <class T>
void check_against_triple_loop(GemmShape s, uint64_t seed, double tol) {
  auto a = test::random_vector<T>(size_t(s.batch * s.m * s.k), seed);
  auto b = test::random_vector<T>(size_t(s.batch * s.k * s.n), seed + 1);
  auto c_in = test::random_vector<T>(size_t(s.batch * s.m * s.n), seed + 2);
  auto ref = triple_loop(s, a, b, c_in);
  // beta = 0: C starts as NaN, which must never reach the output.
  std::vector<T> c =
      s.beta != 0 ? c_in : std::vector<T>(c_in.size(), std::numeric_limits<T>::quiet_NaN());
  cpu::matmul(s, c.data(), a.data(), b.data());
  test::require_close("matmul " + describe(s), c, ref, tol);
}

// Backward of C = alpha op(A) op(B) + beta C_in through matmul calls (the formulas of matmul.hpp);
// accumulate adds to what the gradient buffers hold (beta = 1), else overwrites them (beta = 0).
void matmul_backward(const GemmShape& s, double* da, double* db, double* dc_in, const double* dc,
                     const double* a, const double* b, bool accumulate) {
  const float beta = accumulate ? 1.f : 0.f;
  if (!s.trans_a)
    cpu::matmul(GemmShape{s.m, s.k, s.n, false, !s.trans_b, s.batch, s.alpha, beta}, da, dc, b);
  else
    cpu::matmul(GemmShape{s.k, s.m, s.n, s.trans_b, true, s.batch, s.alpha, beta}, da, b, dc);
  if (!s.trans_b)
    cpu::matmul(GemmShape{s.k, s.n, s.m, !s.trans_a, false, s.batch, s.alpha, beta}, db, a, dc);
  else
    cpu::matmul(GemmShape{s.n, s.k, s.m, true, s.trans_a, s.batch, s.alpha, beta}, db, dc, a);
  for (int64_t i = 0; i < s.batch * s.m * s.n; ++i)
    dc_in[i] = (accumulate ? dc_in[i] : 0.0) + double(s.beta) * dc[i];
}

}  // namespace

TEST_CASE("matmul: known 2x3 by 3x2 product - alpha and beta") {
  std::vector<float> a{1, 2, 3, 4, 5, 6};     // (2,3)
  std::vector<float> b{7, 8, 9, 10, 11, 12};  // (3,2)
  std::vector<float> c(4, std::nanf(""));
  cpu::matmul(GemmShape{2, 2, 3}, c.data(), a.data(), b.data());
  CHECK(c == std::vector<float>{58, 64, 139, 154});
  std::vector<float> d{1, 1, 1, 1};
  cpu::matmul(GemmShape{2, 2, 3, false, false, 1, 0.5f, 2.f}, d.data(), a.data(), b.data());
  CHECK(d == std::vector<float>{31, 34, 71.5f, 79});
  // A^T B^T with A stored (3,2) and B stored (2,3): the same numbers read transposed.
  std::vector<float> at{1, 4, 2, 5, 3, 6}, bt{7, 9, 11, 8, 10, 12};
  std::vector<float> e(4, std::nanf(""));
  cpu::matmul(GemmShape{2, 2, 3, true, true}, e.data(), at.data(), bt.data());
  CHECK(e == std::vector<float>{58, 64, 139, 154});
}

TEST_CASE("matmul: all transposes - batch 3 - awkward sizes - alpha and beta match a triple loop") {
  const int64_t sizes[][3] = {{7, 13, 5}, {1, 1, 1}, {3, 17, 1}, {16, 1, 9}, {1, 6, 31}};
  const float scales[][2] = {{1.f, 0.f}, {0.75f, 0.f}, {1.5f, -0.5f}, {-1.f, 1.f}};
  uint64_t seed = 100;
  for (auto& mnk : sizes)
    for (int t = 0; t < 4; ++t)
      for (auto& ab : scales)
        for (int64_t batch : {1, 3}) {
          GemmShape s{mnk[0], mnk[1], mnk[2], bool(t & 1), bool(t & 2), batch, ab[0], ab[1]};
          check_against_triple_loop<float>(s, seed, 1e-6);
          check_against_triple_loop<double>(s, seed, 1e-13);
          seed += 3;
        }
}

TEST_CASE("matmul: beta = 0 never reads C (an infinite C stays out of the output)") {
  GemmShape s{4, 5, 3, false, true, 2, 1.f, 0.f};
  auto a = test::random_vector<float>(24, 1), b = test::random_vector<float>(30, 2);
  std::vector<float> c(40, std::numeric_limits<float>::infinity());
  cpu::matmul(s, c.data(), a.data(), b.data());
  for (float x : c) CHECK(std::isfinite(x));
}

TEST_CASE("matmul: k = 0 gives beta C - empty outputs write nothing") {
  std::vector<double> c(6, std::nan(""));
  cpu::matmul<double>(GemmShape{2, 3, 0}, c.data(), nullptr, nullptr);
  CHECK(c == std::vector<double>(6, 0.0));
  std::vector<double> d{1, 2, 3, 4, 5, 6};
  cpu::matmul<double>(GemmShape{3, 2, 0, false, false, 1, 1.f, -2.f}, d.data(), nullptr, nullptr);
  CHECK(d == std::vector<double>{-2, -4, -6, -8, -10, -12});
  cpu::matmul<double>(GemmShape{0, 3, 4}, nullptr, nullptr, nullptr);
  cpu::matmul<double>(GemmShape{3, 0, 4, true, true, 5}, nullptr, nullptr, nullptr);
}

TEST_CASE("matmul: invalid sizes throw") {
  std::vector<float> x(16);
  CHECK_THROWS_AS(cpu::matmul(GemmShape{-1, 2, 2}, x.data(), x.data(), x.data()), Error);
  CHECK_THROWS_AS(cpu::matmul(GemmShape{2, 2, -2}, x.data(), x.data(), x.data()), Error);
  CHECK_THROWS_AS(cpu::matmul(GemmShape{2, 2, 2, false, false, 0}, x.data(), x.data(), x.data()),
                  Error);
  CHECK_THROWS_AS(
      cpu::matmul(GemmShape{int64_t(1) << 40, int64_t(1) << 40, 1}, x.data(), x.data(), x.data()),
      Error);
  CHECK_THROWS_AS(cpu::matmul<float>(GemmShape{2, 2, 2}, x.data(), nullptr, x.data()), Error);
}

TEST_CASE("matmul: backward as matmul calls matches central differences for all transposes") {
  for (int t = 0; t < 4; ++t) {
    GemmShape s{3, 4, 5, bool(t & 1), bool(t & 2), 2, 0.75f, 0.5f};
    auto a = test::random_vector(size_t(s.batch * s.m * s.k), 10 + t);
    auto b = test::random_vector(size_t(s.batch * s.k * s.n), 20 + t);
    auto c_in = test::random_vector(size_t(s.batch * s.m * s.n), 30 + t);
    auto g = test::random_vector(c_in.size(), 40 + t);
    auto forward = [&] {
      std::vector<double> c = c_in;
      cpu::matmul(s, c.data(), a.data(), b.data());
      return c;
    };
    // Overwrite: buffers start as NaN, which must not survive.
    std::vector<double> da(a.size(), std::nan("")), db(b.size(), std::nan("")),
        dc_in(c_in.size(), std::nan(""));
    matmul_backward(s, da.data(), db.data(), dc_in.data(), g.data(), a.data(), b.data(), false);
    test::check_gradients("matmul " + describe(s),
                          {{"A", &a, &da}, {"B", &b, &db}, {"C", &c_in, &dc_in}}, forward, g);
    // Accumulate: pre-filled buffers end as fill + gradient.
    const double fill = 0.25;
    std::vector<double> da2(a.size(), fill), db2(b.size(), fill), dc2(c_in.size(), fill);
    matmul_backward(s, da2.data(), db2.data(), dc2.data(), g.data(), a.data(), b.data(), true);
    for (auto* pair : {&da, &db, &dc_in}) {
      auto& got = pair == &da ? da2 : pair == &db ? db2 : dc2;
      std::vector<double> want(pair->size());
      for (size_t i = 0; i < want.size(); ++i) want[i] = fill + (*pair)[i];
      test::require_close("matmul accumulate " + describe(s), got, want, 1e-14);
    }
  }
}

TEST_CASE("linear_rows: y = x W^T matches a triple loop - accumulate adds to y") {
  // out = 37 columns split over the threads; in = 19 and rows = 5 have no special size.
  const int64_t rows = 5, out = 37, in = 19;
  const auto check = [&](auto zero, double tol) {
    using T = decltype(zero);
    const auto x = test::random_vector<T>(size_t(rows * in), 71);
    const auto w = test::random_vector<T>(size_t(out * in), 72);
    const auto y0 = test::random_vector<T>(size_t(rows * out), 73);
    // y = x W^T is op(A) op(B) with A = x (rows, in) and B = W stored (out, in).
    const auto ref = triple_loop(GemmShape{rows, out, in, false, true}, x, w, y0);
    std::vector<T> y(y0.size(), std::numeric_limits<T>::quiet_NaN());  // overwrite never reads y
    cpu::linear_rows(y.data(), x.data(), w.data(), rows, out, in, false);
    test::require_close(std::string("linear_rows ") + (sizeof(T) == 4 ? "f32" : "f64"), y, ref, tol);
    std::vector<T> acc = y0;
    cpu::linear_rows(acc.data(), x.data(), w.data(), rows, out, in, true);
    std::vector<double> want(ref.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = double(y0[i]) + ref[i];
    test::require_close(std::string("linear_rows accumulate ") + (sizeof(T) == 4 ? "f32" : "f64"),
                        acc, want, tol);
  };
  check(0.f, 1e-6);
  check(0.0, 1e-14);
}

TEST_CASE("linear_rows: a row's result does not depend on the rows beside it or the threads") {
  const int64_t rows = 7, out = 45, in = 300;  // sums long enough for the order to show
  const auto x = test::random_vector<float>(size_t(rows * in), 81);
  const auto w = test::random_vector<float>(size_t(out * in), 82);
  std::vector<float> all(size_t(rows * out));
  cpu::linear_rows(all.data(), x.data(), w.data(), rows, out, in, false);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> one(static_cast<size_t>(out));
    cpu::linear_rows(one.data(), x.data() + r * in, w.data(), 1, out, in, false);
    CHECK(test::bytes_of(one) == test::bytes_of(std::vector<float>(all.begin() + r * out,
                                                                   all.begin() + (r + 1) * out)));
  }
  const int threads = cpu::threads();
  cpu::set_threads(threads == 1 ? 3 : 1);
  std::vector<float> other(all.size());
  cpu::linear_rows(other.data(), x.data(), w.data(), rows, out, in, false);
  cpu::set_threads(threads);
  CHECK(test::bytes_of(other) == test::bytes_of(all));
  CHECK_THROWS_AS(cpu::set_threads(0), Error);
}

TEST_CASE("linear_rows: empty sizes write nothing - in = 0 gives zeros - bad arguments throw") {
  std::vector<float> y(6, 0.5f);
  cpu::linear_rows<float>(y.data(), nullptr, nullptr, 2, 3, 0, true);  // adds empty sums
  CHECK(y == std::vector<float>(6, 0.5f));
  cpu::linear_rows<float>(y.data(), nullptr, nullptr, 2, 3, 0, false);
  CHECK(y == std::vector<float>(6, 0.f));
  cpu::linear_rows<float>(nullptr, nullptr, nullptr, 0, 3, 4, false);
  cpu::linear_rows<float>(nullptr, nullptr, nullptr, 2, 0, 4, false);
  std::vector<float> x(8, 1.f);
  CHECK_THROWS_AS(cpu::linear_rows<float>(y.data(), x.data(), x.data(), -1, 3, 4, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows<float>(y.data(), x.data(), nullptr, 2, 3, 4, false), Error);
  CHECK_THROWS_AS(cpu::linear_rows<float>(y.data(), x.data(), x.data(), int64_t(1) << 40,
                                          int64_t(1) << 40, 1, false),
                  Error);
}
