#pragma once
// Row argmax on the GPU (contract and CPU reference in argmax.hpp): one block per row, each thread
// keeps its best (value, index), then a tree merge that prefers the larger value and, on a tie,
// the smaller index, so the result does not depend on the reduction order.
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "argmax.hpp"

namespace mil::cuda {
namespace argmax_detail {

constexpr int kThreads = 512;

// (v, i) beats (bv, bi): larger value, or equal value at a smaller index; NaN never beats.
MIL_DEVICE inline bool beats(float v, int32_t i, float bv, int32_t bi) {
  return v > bv || (v == bv && i < bi);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(int32_t* out, const T* x, int64_t cols) {
  const T* row = x + int64_t(blockIdx.x) * cols;
  float bv = -INFINITY;
  int32_t bi = INT32_MAX;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    const float v = to_float(row[c]);
    if (!isnan(v) && (bi == INT32_MAX || beats(v, int32_t(c), bv, bi))) {
      bv = v;
      bi = int32_t(c);
    }
  }
  __shared__ float sv[kThreads];
  __shared__ int32_t si[kThreads];
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) {
      const float ov = sv[threadIdx.x + s];
      const int32_t oi = si[threadIdx.x + s];
      if (oi != INT32_MAX && (si[threadIdx.x] == INT32_MAX || beats(ov, oi, sv[threadIdx.x],
                                                                      si[threadIdx.x]))) {
        sv[threadIdx.x] = ov;
        si[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = si[0] == INT32_MAX ? 0 : si[0];
}

}  // namespace argmax_detail

template <class T>
void argmax_rows(int32_t* out, const T* x, int64_t rows, int64_t cols, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "argmax_rows: float or bf16");
  MIL_CHECK(rows >= 0 && rows <= INT32_MAX && cols >= 1 && cols <= INT32_MAX,
            "argmax_rows: bad sizes rows=", rows, " cols=", cols);
  if (rows == 0) return;
  argmax_detail::argmax_rows_kernel<T>
      <<<unsigned(rows), argmax_detail::kThreads, 0, stream>>>(out, x, cols);
  MIL_CUDA_CHECK_LAUNCH("argmax_rows_kernel");
}

}  // namespace mil::cuda
