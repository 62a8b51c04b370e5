// SwiGLU on the GPU against the CPU reference (in double) on fresh random inputs.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <mil/kernels/swiglu.cuh>
#include <mil/kernels/swiglu.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// gate and up live in one buffer: fused rows [gate | up] (in_stride = 2 * hidden), or the gate
// rows followed by the up rows (two separate [rows, hidden] blocks, in_stride = hidden).
// `shift` elements in front of everything make the pointers misaligned.
struct Case {
  int64_t rows, hidden;
  bool fused, accumulate;
  int64_t shift = 0;
};

template <class T>
void check_against_cpu(const Case& c, uint64_t seed) {
  const int64_t rows = c.rows, hidden = c.hidden, n = rows * hidden;
  const int64_t in_stride = c.fused ? 2 * hidden : hidden;
  const int64_t up_offset = c.fused ? hidden : n;
  const size_t buf_size = size_t(c.shift + 2 * n);
  INFO("rows ", rows, " hidden ", hidden, " fused ", c.fused, " accumulate ", c.accumulate,
       " shift ", c.shift, " bf16 ", std::is_same_v<T, bf16>);
  auto gu = test::representable<T>(buf_size, seed, -6.f, 6.f);  // gate and up, and gap/shift values
  auto dout = test::representable<T>(size_t(n), seed + 1);
  auto dgu0 = test::representable<T>(buf_size, seed + 2);  // pre-filled gradients

  auto gu_d = test::cast_vector<double>(gu), dout_d = test::cast_vector<double>(dout);
  std::vector<double> out_ref(static_cast<size_t>(n));
  // untouched elements of the gradient buffer: the pre-fill or the poison
  std::vector<double> dgu_ref =
      c.accumulate ? test::cast_vector<double>(dgu0)
                   : std::vector<double>(buf_size, double(to_acc(test::poison<T>())));
  const double* g_d = gu_d.data() + c.shift;
  cpu::swiglu_forward(out_ref.data(), g_d, g_d + up_offset, rows, hidden, in_stride);
  cpu::swiglu_backward(dgu_ref.data() + c.shift, dgu_ref.data() + c.shift + up_offset,
                       dout_d.data(), g_d, g_d + up_offset, rows, hidden, in_stride, c.accumulate);

  auto gu_gpu = test::to_gpu(test::cast_vector<T>(gu));
  auto dout_gpu = test::to_gpu(test::cast_vector<T>(dout));
  auto out_gpu = test::poisoned_gpu<T>(size_t(n));
  auto dgu_gpu =
      c.accumulate ? test::to_gpu(test::cast_vector<T>(dgu0)) : test::poisoned_gpu<T>(buf_size);
  const T* g = gu_gpu.data() + c.shift;
  T* dg = dgu_gpu.data() + c.shift;
  cuda::swiglu_forward(out_gpu.data(), g, g + up_offset, rows, hidden, in_stride, nullptr);
  cuda::swiglu_backward(dg, dg + up_offset, dout_gpu.data(), g, g + up_offset, rows, hidden,
                        in_stride, c.accumulate, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  test::require_close("swiglu gpu out", out_gpu.to_vector(), out_ref, test::tolerance<T>());
  test::require_close("swiglu gpu dgate and dup", dgu_gpu.to_vector(), dgu_ref,
                      test::tolerance<T>());
  // elements in front of the buffers keep their values exactly
  auto dgu = dgu_gpu.to_vector();
  for (int64_t i = 0; i < c.shift; ++i) CHECK(double(to_acc(dgu[size_t(i)])) == dgu_ref[size_t(i)]);
}

template <class T>
void check_awkward_sizes(uint64_t seed) {
  int mode = 0;
  for (int64_t rows : {1, 3, 129, 4097})
    for (int64_t hidden : {576, 1000, 4096 + 8, 7}) {
      check_against_cpu<T>({rows, hidden, (mode & 1) != 0, (mode & 2) != 0},
                           seed + uint64_t(mode) * 10);
      ++mode;
    }
}

}  // namespace

TEST_CASE("swiglu: gpu float matches the cpu at awkward sizes - fused and separate") {
  MIL_GPU_TEST_GUARD();
  check_awkward_sizes<float>(100);
}

TEST_CASE("swiglu: gpu bf16 matches the cpu at awkward sizes - fused and separate") {
  MIL_GPU_TEST_GUARD();
  check_awkward_sizes<bf16>(500);
}

TEST_CASE("swiglu: gpu misaligned pointers and more than 65535 rows") {
  MIL_GPU_TEST_GUARD();
  check_against_cpu<bf16>({37, 576, true, false, 1}, 900);
  check_against_cpu<float>({37, 1000, false, true, 3}, 910);
  check_against_cpu<bf16>({70001, 16, true, true}, 920);  // rows beyond the grid's y limit
}

TEST_CASE("swiglu: gpu large |gate| gives finite values") {
  MIL_GPU_TEST_GUARD();
  std::vector<float> gate{-1000, -100, 100, 1000, -1000, -100, 100, 1000}, up(8, 2.f);
  auto g = test::to_gpu(gate), u = test::to_gpu(up), d = test::to_gpu(std::vector<float>(8, 1.f));
  auto out = test::poisoned_gpu<float>(8), dg = test::poisoned_gpu<float>(8),
       du = test::poisoned_gpu<float>(8);
  cuda::swiglu_forward(out.data(), g.data(), u.data(), 1, 8, 8, nullptr);
  cuda::swiglu_backward(dg.data(), du.data(), d.data(), g.data(), u.data(), 1, 8, 8, false,
                        nullptr);
  auto o = out.to_vector(), a = dg.to_vector(), b = du.to_vector();
  for (int i = 0; i < 8; ++i) {
    CHECK(std::isfinite(o[i]));
    CHECK(std::isfinite(a[i]));
    CHECK(std::isfinite(b[i]));
  }
  CHECK(o[3] == 2000.f);
  CHECK(a[3] == 2.f);
}
