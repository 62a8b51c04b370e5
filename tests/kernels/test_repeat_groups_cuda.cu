// GQA group repeat on the GPU against the CPU reference: packed and one-element paths, an input
// that is a column block of a wider buffer, backward write modes, columns outside the block left
// alone, bad sizes.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include <mil/kernels/repeat_groups.cuh>
#include <mil/kernels/repeat_groups.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// rows, groups, group_size, repeat; the input sits at column `offset` of rows of `in_stride`
// (0: packed).
struct Case {
  int64_t rows, groups, group_size, repeat, in_stride, offset;
};

template <class T>
void check(const Case& c, bool accumulate, uint64_t seed) {
  RepeatGroupsShape s{c.rows, c.groups, c.group_size, c.repeat, c.in_stride};
  INFO("rows ", c.rows, " groups ", c.groups, " group_size ", c.group_size, " repeat ", c.repeat,
       " stride ", c.in_stride, " offset ", c.offset, " accumulate ", accumulate, " ",
       test::type_name<T>());
  const int64_t in_size = c.offset + c.rows * s.is(), out_size = c.rows * s.out_width();
  const auto in = test::representable<T>(size_t(in_size), seed);
  const auto dout = test::representable<T>(size_t(out_size), seed + 1);
  const auto din0 = test::representable<T>(size_t(in_size), seed + 2);  // pre-filled gradient

  auto in_d = test::cast_vector<double>(in), dout_d = test::cast_vector<double>(dout);
  std::vector<double> out_ref(static_cast<size_t>(out_size));
  auto din_ref = test::cast_vector<double>(din0);
  cpu::repeat_groups_forward(out_ref.data(), in_d.data() + c.offset, s);
  cpu::repeat_groups_backward(din_ref.data() + c.offset, dout_d.data(), s, accumulate);

  auto in_gpu = test::to_gpu(test::cast_vector<T>(in));
  auto dout_gpu = test::to_gpu(test::cast_vector<T>(dout));
  auto din_gpu = test::to_gpu(test::cast_vector<T>(din0));
  auto out_gpu = test::poisoned_gpu<T>(size_t(out_size));
  cuda::repeat_groups_forward(out_gpu.data(), in_gpu.data() + c.offset, s, nullptr);
  cuda::repeat_groups_backward(din_gpu.data() + c.offset, dout_gpu.data(), s, accumulate, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());

  // The forward is a copy: bitwise equal.
  const auto out = out_gpu.to_vector();
  const auto out_ref_t = test::cast_vector<T>(out_ref);
  CHECK(test::bytes_of(out) == test::bytes_of(out_ref_t));
  test::require_close("repeat groups gpu din", din_gpu.to_vector(), din_ref, test::tolerance<T>());
  // Columns outside the block (and the offset) keep their pre-filled values bitwise.
  const auto din = din_gpu.to_vector();
  const auto din0_t = test::cast_vector<T>(din0);
  size_t differ = 0;
  for (int64_t i = 0; i < in_size; ++i) {
    const int64_t k = i - c.offset;
    const bool inside = k >= 0 && k % s.is() < s.in_width();
    if (!inside && std::memcmp(&din[size_t(i)], &din0_t[size_t(i)], sizeof(T)) != 0) ++differ;
  }
  CHECK(differ == 0);
}

}  // namespace

TEST_CASE("repeat groups: gpu forward and backward match the cpu") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 10;
  // packed (16-byte packs), one-element packs (group 6), a strided block at an offset, repeat 1
  for (const Case& c : {Case{37, 12, 16, 3, 0, 0}, Case{5, 4, 6, 4, 0, 0},
                        Case{9, 12, 16, 4, 1536, 0}, Case{7, 3, 16, 2, 64, 8},
                        Case{11, 3, 16, 2, 61, 3}, Case{3, 2, 8, 1, 0, 0}}) {
    for (bool accumulate : {false, true}) {
      check<bf16>(c, accumulate, seed);
      check<float>(c, accumulate, seed + 1);
      seed += 10;
    }
  }
}

TEST_CASE("repeat groups: gpu zero rows touch nothing and bad sizes throw") {
  MIL_GPU_TEST_GUARD();
  auto buf = test::to_gpu(std::vector<float>(64, 1.5f));
  cuda::repeat_groups_forward(buf.data(), buf.data(), RepeatGroupsShape{0, 2, 4, 2, 0}, nullptr);
  cuda::repeat_groups_backward(buf.data(), buf.data(), RepeatGroupsShape{0, 2, 4, 2, 0}, false,
                               nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(buf.to_vector() == std::vector<float>(64, 1.5f));
  CHECK_THROWS_AS(cuda::repeat_groups_forward(buf.data(), buf.data(),
                                              RepeatGroupsShape{1, 0, 4, 2, 0}, nullptr),
                  Error);
  CHECK_THROWS_AS(cuda::repeat_groups_backward(buf.data(), buf.data(),
                                               RepeatGroupsShape{1, 2, 4, 0, 0}, false, nullptr),
                  Error);
  // in_stride smaller than the input block
  CHECK_THROWS_AS(cuda::repeat_groups_forward(buf.data(), buf.data(),
                                              RepeatGroupsShape{1, 2, 4, 2, 7}, nullptr),
                  Error);
}
