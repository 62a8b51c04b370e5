#pragma once
// Row bias and its gradient on the GPU (contract and CPU reference in bias.hpp). The backward is
// deterministic: each block owns 32 columns, its 8 row groups sum fixed strided rows, and the
// groups are combined in a fixed order. The sum order differs from the CPU's row order, so the
// results agree to rounding, not bitwise.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "bias.hpp"

namespace mil::cuda {
namespace bias_detail {

template <class T>
__global__ void bias_add_kernel(T* y, const T* b, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(to_float(y[i]) + to_float(b[i % cols]));
}

template <class T>
__global__ void bias_backward_kernel(T* db, const T* dy, int64_t rows, int64_t cols,
                                     bool accumulate) {
  __shared__ float part[8][33];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += 8) s += to_float(dy[r * cols + c]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0.f;
#pragma unroll
    for (int g = 0; g < 8; ++g) t += part[g][threadIdx.x];
    db[c] = from_float<T>(accumulate ? to_float(db[c]) + t : t);
  }
}

}  // namespace bias_detail

template <class T>
void bias_add(T* y, const T* b, int64_t rows, int64_t cols, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "bias_add: float or bf16");
  MIL_CHECK(rows >= 0 && cols >= 0, "bias_add: negative size rows=", rows, " cols=", cols);
  const int64_t n = checked_mul(rows, cols);
  if (n == 0) return;
  const int blocks = int(std::min<int64_t>((n + 255) / 256, 8192));
  bias_detail::bias_add_kernel<T><<<blocks, 256, 0, stream>>>(y, b, rows, cols);
  MIL_CUDA_CHECK_LAUNCH("bias_add_kernel");
}

template <class T>
void bias_backward(T* db, const T* dy, int64_t rows, int64_t cols, bool accumulate,
                   cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "bias_backward: float or bf16");
  MIL_CHECK(rows >= 0 && cols >= 0, "bias_backward: negative size rows=", rows, " cols=", cols);
  if (cols == 0) return;
  const int64_t blocks = (cols + 31) / 32;
  MIL_CHECK(blocks <= INT32_MAX, "bias_backward: too many columns: ", cols);
  bias_detail::bias_backward_kernel<T><<<unsigned(blocks), dim3(32, 8), 0, stream>>>(
      db, dy, rows, cols, accumulate);
  MIL_CUDA_CHECK_LAUNCH("bias_backward_kernel");
}

}  // namespace mil::cuda
