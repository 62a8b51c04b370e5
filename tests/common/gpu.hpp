#pragma once
// GPU test helpers. MIL_REQUIRE_GPU() ends a test case with the message ctest reads as "skipped"
// when no CUDA device is present.
#include <cstdio>
#include <vector>

#include <mil/core/cuda_check.hpp>
#include <mil/core/tensor.hpp>

#include "compare.hpp"

#define MIL_REQUIRE_GPU()                                         \
  do {                                                            \
    if (::mil::cuda::device_count() == 0) {                       \
      std::printf("[mil] no CUDA device: test skipped\n");        \
      return;                                                     \
    }                                                             \
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

}  // namespace mil::test
