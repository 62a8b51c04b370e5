#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <mil/kernels/global_norm.cuh>
#include <mil/kernels/global_norm.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// Runs cuda::sum_of_squares on the n values starting `offset` elements into a GPU buffer.
template <class T>
float gpu_sum_of_squares(const std::vector<T>& x, int64_t offset) {
  auto buffer = test::gpu_at_offset(x, offset, T(1e3f));  // padding that would show if it were read
  auto out = test::poisoned_gpu<float>(1);
  cuda::sum_of_squares<T>(out.data(), buffer.data() + offset, int64_t(x.size()),
                          cuda::current_stream());
  return out.to_vector()[0];
}

template <class T>
void check_sum_of_squares(int64_t n, uint64_t seed) {
  auto x = test::cast_vector<T>(test::random_vector<float>(size_t(n), seed, -2.f, 2.f));
  const double ref = cpu::sum_of_squares(x.data(), n);
  for (int64_t offset : {0, 1, 5}) {
    const float out = gpu_sum_of_squares(x, offset);
    const std::string what = std::string("cuda sum_of_squares ") +
                             (std::is_same_v<T, float> ? "f32" : "bf16") +
                             " n=" + std::to_string(n) + " offset=" + std::to_string(offset);
    test::require_close(what, std::vector<float>{out}, std::vector<double>{ref}, 1e-5);
    // Deterministic: the same input at the same address gives the same bits.
    const float again = gpu_sum_of_squares(x, offset);
    CHECK_MESSAGE(std::memcmp(&out, &again, sizeof(float)) == 0, what, ": not deterministic");
  }
}

}  // namespace

TEST_CASE("global_norm cuda: sum_of_squares matches the CPU and is deterministic") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 400;
  for (int64_t n : {1, 7, 1000, 1000003}) {
    check_sum_of_squares<float>(n, seed++);
    check_sum_of_squares<bf16>(n, seed++);
  }
}

TEST_CASE("global_norm cuda: sum_of_squares is exact on integer-valued inputs - 0 for n = 0") {
  MIL_GPU_TEST_GUARD();
  const int64_t n = 1000003;  // the exact sum stays below 2^24, so fp32 sums it exactly
  std::vector<float> f(n);
  std::vector<bf16> b(n);
  double expect = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int value = int(i * 37 % 7) - 3;
    f[size_t(i)] = float(value), b[size_t(i)] = bf16(float(value));
    expect += value * value;
  }
  CHECK(double(gpu_sum_of_squares(f, 0)) == expect);
  CHECK(double(gpu_sum_of_squares(b, 3)) == expect);
  CHECK(gpu_sum_of_squares(std::vector<float>{}, 0) == 0.f);
}

TEST_CASE("global_norm cuda: clip_coefficient on the device matches the CPU - NaN when not finite") {
  MIL_GPU_TEST_GUARD();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const std::vector<float> sums{0.f, 0.25f, 1.f, 4.f, 1e6f, 3.7e-3f, inf, nan};
  for (float max_norm : {1.f, 0.1f}) {
    auto sum_gpu = test::to_gpu(sums);
    auto coef = test::poisoned_gpu<float>(sums.size());
    for (size_t i = 0; i < sums.size(); ++i)
      cuda::clip_coefficient(coef.data() + i, sum_gpu.data() + i, max_norm, cuda::current_stream());
    auto out = coef.to_vector();
    for (size_t i = 0; i < sums.size(); ++i) {
      const float ref = cpu::clip_coefficient(double(sums[i]), max_norm);
      INFO("sum_sq ", sums[i], " max_norm ", max_norm);
      if (std::isnan(ref)) CHECK(std::isnan(out[i]));
      else CHECK(out[i] == doctest::Approx(ref).epsilon(1e-6));
    }
  }
}

TEST_CASE("global_norm cuda: sum_of_squares then clip_coefficient stay on the device") {
  MIL_GPU_TEST_GUARD();
  const int64_t n = 4097;
  auto x = test::cast_vector<bf16>(test::random_vector<float>(size_t(n), 420));
  auto x_gpu = test::to_gpu(x);
  auto sum = test::poisoned_gpu<float>(1), coef = test::poisoned_gpu<float>(1);
  cuda::sum_of_squares<bf16>(sum.data(), x_gpu.data(), n, cuda::current_stream());
  cuda::clip_coefficient(coef.data(), sum.data(), 0.5f, cuda::current_stream());
  const float ref = cpu::clip_coefficient(cpu::sum_of_squares(x.data(), n), 0.5f);
  CHECK(ref < 1.f);
  CHECK(coef.to_vector()[0] == doctest::Approx(ref).epsilon(1e-5));
}
