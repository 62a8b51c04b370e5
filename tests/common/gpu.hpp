#pragma once
// GPU test helpers. MIL_GPU_TEST_GUARD() opens every test case that needs a device: without one
// it ends the case with the message ctest reads as "skipped", or, in the GPU-required mode
// (MIL_REQUIRE_GPU=1, gpu_required.hpp), fails it. CUDA errors inside a case throw mil::Error
// (cuda_check.hpp), which doctest counts as a failure in either mode.
#include <cstdio>
#include <vector>

#include <mil/core/cuda_check.hpp>
#include <mil/core/tensor.hpp>

#include "compare.hpp"
#include "gpu_required.hpp"

#define MIL_GPU_TEST_GUARD()                                                       \
  do {                                                                             \
    if (::mil::cuda::device_count() == 0) {                                        \
      if (::mil::test::gpu_required())                                             \
        FAIL(::mil::test::gpu_required_failure());                                 \
      std::printf("[mil] no CUDA device: test skipped\n");                         \
      return;                                                                      \
    }                                                                              \
  } while (0)
namespace mil::test {

template <class T>
Tensor<T, Cuda> to_gpu(const std::vector<T>& v) {
  return Tensor<T, Cuda>::from(Shape{int64_t(v.size())}, v);
}
// A GPU buffer of n elements filled with the poison value (unwritten outputs show).
template <class T>
Tensor<T, Cuda> poisoned_gpu(size_t n) {
  return to_gpu(std::vector<T>(n, poison<T>()));
}
// v after `offset` elements of `fill`, on the GPU: data that starts off 16-byte (or 256-byte)
// boundaries, as slices of larger buffers do. The default fill shows if a kernel writes there.
template <class T>
Tensor<T, Cuda> gpu_at_offset(const std::vector<T>& v, int64_t offset, T fill = poison<T>()) {
  std::vector<T> padded(size_t(offset), fill);
  padded.insert(padded.end(), v.begin(), v.end());
  return to_gpu(padded);
}
// The elements of a GPU buffer from `offset` on (undoes gpu_at_offset).
template <class T>
std::vector<T> download(const Tensor<T, Cuda>& t, int64_t offset = 0) {
  auto v = t.to_vector();
  v.erase(v.begin(), v.begin() + offset);
  return v;
}

}  // namespace mil::test
