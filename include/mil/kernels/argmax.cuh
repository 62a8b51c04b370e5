#pragma once
// Row argmax on the GPU (contract and CPU reference in argmax.hpp): one block per row, each thread
// keeps its best (value, index), then a tree merge that prefers the larger value and, on a tie,
// the smaller index, so the result does not depend on the reduction order. The merge serves the
// row top-k too (topk.cuh).
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "argmax.hpp"

namespace mil::cuda {
// (v, i) ranks before (bv, bi): a larger value, or an equal value at a smaller index; every
// candidate ranks before none (bi < 0). The order of argmax and top-k (topk.cuh).
MIL_DEVICE inline bool ranks_before(float v, int32_t i, float bv, int32_t bi) {
  return bi < 0 || v > bv || (v == bv && i < bi);
}

// The best of the block's candidates (index -1: none) into sv[0], si[0]: a tree merge by
// ranks_before, so the result does not depend on the reduction order. Threads = kThreads, sv and
// si shared arrays of kThreads; ends with the block synchronised.
template <int kThreads>
MIL_DEVICE void block_best(float v, int32_t i, float* sv, int32_t* si) {
  sv[threadIdx.x] = v;
  si[threadIdx.x] = i;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) {
      const float ov = sv[threadIdx.x + s];
      const int32_t oi = si[threadIdx.x + s];
      if (oi >= 0 && ranks_before(ov, oi, sv[threadIdx.x], si[threadIdx.x]))
        sv[threadIdx.x] = ov, si[threadIdx.x] = oi;
    }
    __syncthreads();
  }
}

namespace argmax_detail {

constexpr int kThreads = 512;

template <class T>
__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(int32_t* out, const T* x, int64_t cols) {
  const T* row = x + int64_t(blockIdx.x) * cols;
  float bv = -INFINITY;
  int32_t bi = -1;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    const float v = to_float(row[c]);
    if (!isnan(v) && ranks_before(v, int32_t(c), bv, bi)) bv = v, bi = int32_t(c);
  }
  __shared__ float sv[kThreads];
  __shared__ int32_t si[kThreads];
  block_best<kThreads>(bv, bi, sv, si);
  if (threadIdx.x == 0) out[blockIdx.x] = si[0] < 0 ? 0 : si[0];
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
