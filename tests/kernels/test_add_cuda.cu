#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include <mil/kernels/add.cuh>
#include <mil/kernels/add.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

template <class T>
std::vector<T> random_t(size_t n, uint64_t seed) {
  return test::cast_vector<T>(test::random_vector<float>(n, seed, -3.f, 3.f));
}

// GPU add against the CPU one (bitwise: one fp32 addition, one rounding), with each pointer
// `offset` elements into its buffer (offsets that are not a multiple of 16 bytes take the scalar
// path). The output starts poisoned.
template <class T>
void check_add(int64_t n, int64_t offset, uint64_t seed) {
  auto a = random_t<T>(size_t(n + offset), seed), b = random_t<T>(size_t(n + offset), seed + 1);
  std::vector<T> ref(size_t(n + offset), test::poison<T>());
  cpu::add(ref.data() + offset, a.data() + offset, b.data() + offset, n);
  auto a_gpu = test::to_gpu(a), b_gpu = test::to_gpu(b);
  auto out = test::poisoned_gpu<T>(size_t(n + offset));
  mil::cuda::add<T>(out.data() + offset, a_gpu.data() + offset, b_gpu.data() + offset, n,
                    mil::cuda::current_stream());
  auto got = out.to_vector();
  INFO("cuda add ", std::is_same_v<T, float> ? "f32" : "bf16", " n=", n, " offset=", offset);
  CHECK(test::bytes_of(got) == test::bytes_of(ref));
  test::require_close("cuda add", got, ref, 1e-7);
}

template <class T>
void check_add_into(int64_t n, uint64_t seed) {
  auto src = random_t<T>(size_t(n), seed);
  std::vector<T> acc(size_t(n), T(0.5f));
  cpu::add_into(acc.data(), src.data(), n, true);
  auto src_gpu = test::to_gpu(src);
  auto dst = test::to_gpu(std::vector<T>(size_t(n), T(0.5f)));
  mil::cuda::add_into<T>(dst.data(), src_gpu.data(), n, true, mil::cuda::current_stream());
  CHECK(test::bytes_of(dst.to_vector()) == test::bytes_of(acc));
  auto copy = test::poisoned_gpu<T>(size_t(n));
  mil::cuda::add_into<T>(copy.data(), src_gpu.data(), n, false, mil::cuda::current_stream());
  CHECK(test::bytes_of(copy.to_vector()) == test::bytes_of(src));
  // Exact aliasing: dst += dst doubles, a copy onto itself changes nothing.
  mil::cuda::add_into<T>(src_gpu.data(), src_gpu.data(), n, false, mil::cuda::current_stream());
  CHECK(test::bytes_of(src_gpu.to_vector()) == test::bytes_of(src));
  std::vector<T> twice(src);
  cpu::add_into(twice.data(), twice.data(), n, true);
  mil::cuda::add_into<T>(src_gpu.data(), src_gpu.data(), n, true, mil::cuda::current_stream());
  CHECK(test::bytes_of(src_gpu.to_vector()) == test::bytes_of(twice));
}

}  // namespace

TEST_CASE("add cuda: matches the CPU bitwise - aligned and unaligned - with tails") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 40;
  for (int64_t n : {1, 7, 8, 9, 4097, 1000003})
    for (int64_t offset : {0, 1, 4}) {
      check_add<float>(n, offset, seed += 2);
      check_add<bf16>(n, offset, seed += 2);
    }
}

TEST_CASE("add cuda: add_into copies or accumulates over a pre-filled buffer - aliasing allowed") {
  MIL_GPU_TEST_GUARD();
  for (int64_t n : {1, 13, 100003}) {
    check_add_into<float>(n, 60 + uint64_t(n));
    check_add_into<bf16>(n, 70 + uint64_t(n));
  }
  mil::cuda::add<float>(nullptr, nullptr, nullptr, 0,
                        mil::cuda::current_stream());  // n = 0: no launch
  CHECK_THROWS_AS(mil::cuda::add<float>(nullptr, nullptr, nullptr, -1, mil::cuda::current_stream()),
                  Error);
}
