#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <mil/kernels/matmul.cuh>
#include <mil/kernels/matmul.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

std::string describe(const char* type, const GemmShape& s, int64_t offset) {
  return std::string("cuda matmul ") + type + " m=" + std::to_string(s.m) +
         " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) +
         " batch=" + std::to_string(s.batch) + " ta=" + std::to_string(s.trans_a) +
         " tb=" + std::to_string(s.trans_b) + " alpha=" + std::to_string(s.alpha) +
         " beta=" + std::to_string(s.beta) + " offset=" + std::to_string(offset);
}

// Runs mil::cuda::matmul<T> on fresh random inputs (rounded to T) and compares with cpu::matmul in
// double on the same inputs. beta = 0: C starts as NaN, which must not reach the output.
template <class T>
std::vector<T> check_matmul(const GemmShape& s, double tol, uint64_t seed, int64_t offset = 0) {
  const size_t na = size_t(s.batch * s.m * s.k), nb = size_t(s.batch * s.k * s.n),
               nc = size_t(s.batch * s.m * s.n);
  auto a = test::cast_vector<T>(test::random_vector<float>(na, seed));
  auto b = test::cast_vector<T>(test::random_vector<float>(nb, seed + 1));
  auto c_in = test::cast_vector<T>(test::random_vector<float>(nc, seed + 2));
  std::vector<double> ref = test::cast_vector<double>(c_in);
  {
    auto ad = test::cast_vector<double>(a), bd = test::cast_vector<double>(b);
    cpu::matmul(s, ref.data(), ad.data(), bd.data());
  }
  // Zero padding: operands that are not 256-byte aligned.
  auto a_gpu = test::gpu_at_offset(a, offset, T(0.f));
  auto b_gpu = test::gpu_at_offset(b, offset, T(0.f));
  auto c_gpu = test::gpu_at_offset(
      s.beta != 0 ? c_in : std::vector<T>(nc, T(std::numeric_limits<float>::quiet_NaN())), offset,
      T(0.f));
  mil::cuda::matmul<T>(s, c_gpu.data() + offset, a_gpu.data() + offset, b_gpu.data() + offset,
                       mil::cuda::current_stream());
  auto out = c_gpu.to_vector();
  out.erase(out.begin(), out.begin() + offset);
  test::require_close(describe(std::is_same_v<T, float> ? "f32" : "bf16", s, offset), out, ref,
                      tol);
  return out;
}

template <class T>
void check_all_transposes(double tol) {
  const int64_t shapes[][4] = {{1, 1, 1, 1},     {1, 1, 1, 3},    {37, 129, 65, 1},
                               {37, 129, 65, 3}, {5, 64, 128, 2}, {513, 257, 1025, 1}};
  const float scales[][2] = {{1.f, 0.f}, {0.75f, -0.5f}};
  uint64_t seed = 1000;
  for (auto& sh : shapes)
    for (int t = 0; t < 4; ++t)
      for (auto& ab : scales) {
        GemmShape s{sh[0], sh[1], sh[2], bool(t & 1), bool(t & 2), sh[3], ab[0], ab[1]};
        check_matmul<T>(s, tol, seed += 3);
      }
}

}  // namespace

TEST_CASE("matmul cuda: float matches the CPU at 1e-5 (true fp32) for all transposes and batches") {
  MIL_GPU_TEST_GUARD();
  check_all_transposes<float>(1e-5);
}

TEST_CASE(
    "matmul cuda: bf16 matches the CPU at 1e-2 on bf16 inputs for all transposes and batches") {
  MIL_GPU_TEST_GUARD();
  check_all_transposes<bf16>(1e-2);
}

TEST_CASE("matmul cuda: operands at unaligned offsets (slices) are handled") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 5000;
  for (int t = 0; t < 4; ++t)
    for (int64_t offset : {1, 3, 8}) {
      GemmShape s{33, 70, 47, bool(t & 1), bool(t & 2), 2, 1.f, 0.f};
      check_matmul<float>(s, 1e-5, seed += 3, offset);
      check_matmul<bf16>(s, 1e-2, seed += 3, offset);
      GemmShape linear{64, 96, 64, false, true, 1, 1.f, 1.f};  // tensor-core friendly sizes
      check_matmul<bf16>(linear, 1e-2, seed += 3, offset);
    }
}

TEST_CASE("matmul cuda: the cuBLAS fallback path (no cuBLASLt algorithm) matches the CPU too") {
  MIL_GPU_TEST_GUARD();
  struct Restore {
    ~Restore() { mil::cuda::detail::force_cublas_fallback(false); }
  } restore;
  mil::cuda::detail::force_cublas_fallback(true);
  uint64_t seed = 7000;
  for (int t = 0; t < 4; ++t)
    for (int64_t offset : {0, 1}) {
      GemmShape s{37, 129, 65, bool(t & 1), bool(t & 2), 3, 0.75f, offset ? -0.5f : 0.f};
      check_matmul<float>(s, 1e-5, seed += 3, offset);
      check_matmul<bf16>(s, 1e-2, seed += 3, offset);
    }
}

TEST_CASE("matmul cuda: repeated calls (cached plan) are bitwise equal") {
  MIL_GPU_TEST_GUARD();
  GemmShape s{200, 300, 700, false, true, 2, 1.f, 0.f};
  auto first = check_matmul<bf16>(s, 1e-2, 77);
  auto second = check_matmul<bf16>(s, 1e-2, 77);
  CHECK(test::bytes_of(first) == test::bytes_of(second));
  auto f1 = check_matmul<float>(s, 1e-5, 78);
  auto f2 = check_matmul<float>(s, 1e-5, 78);
  CHECK(test::bytes_of(f1) == test::bytes_of(f2));
}

TEST_CASE("matmul cuda: k = 0 gives beta C - empty outputs are a no-op - bad sizes throw") {
  MIL_GPU_TEST_GUARD();
  auto stream = mil::cuda::current_stream();
  auto c = test::to_gpu(std::vector<float>(6, std::nanf("")));
  mil::cuda::matmul<float>(GemmShape{2, 3, 0}, c.data(), nullptr, nullptr, stream);
  CHECK(c.to_vector() == std::vector<float>(6, 0.f));
  auto d = test::to_gpu(std::vector<bf16>{bf16(1.f), bf16(2.f), bf16(-3.f)});
  mil::cuda::matmul<bf16>(GemmShape{3, 1, 0, false, false, 1, 1.f, -2.f}, d.data(), nullptr,
                          nullptr, stream);
  auto dv = d.to_vector();
  CHECK(float(dv[0]) == -2.f);
  CHECK(float(dv[1]) == -4.f);
  CHECK(float(dv[2]) == 6.f);
  mil::cuda::matmul<float>(GemmShape{0, 3, 4}, nullptr, nullptr, nullptr, stream);
  CHECK_THROWS_AS(mil::cuda::matmul<float>(GemmShape{2, 2, 2, false, false, 0}, c.data(), c.data(),
                                           c.data(), stream),
                  Error);
  CHECK_THROWS_AS(
      mil::cuda::matmul<float>(GemmShape{-2, 2, 2}, c.data(), c.data(), c.data(), stream), Error);
}

TEST_CASE("matmul cuda: decode-sized products (skinny kernel) match the CPU for 1 to 8 rows") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 9000;
  for (int64_t m = 1; m <= 9; ++m)  // 9 rows: back to cuBLASLt
    for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 8}, {1729, 576}, {300, 1000}, {77, 1003}}) {
      for (auto [alpha, beta] : {std::pair{1.f, 0.f}, {0.5f, 1.f}}) {
        GemmShape s{m, n, k, false, true, 1, alpha, beta};
        check_matmul<float>(s, 1e-5, seed += 3);
        check_matmul<bf16>(s, 1e-2, seed += 3);
      }
    }
  // Unaligned operands fall back to cuBLASLt.
  check_matmul<bf16>(GemmShape{2, 64, 64, false, true}, 1e-2, 9901, 3);
  // Bitwise repeatable (fixed reduction order).
  GemmShape s{1, 4096, 576, false, true};
  auto first = check_matmul<bf16>(s, 1e-2, 9902);
  CHECK(test::bytes_of(first) == test::bytes_of(check_matmul<bf16>(s, 1e-2, 9902)));
}
