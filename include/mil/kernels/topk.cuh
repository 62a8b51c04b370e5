#pragma once
// Row top-k and log-sum-exp on the GPU (contract and CPU reference in topk.hpp). One block per row
// and k rounds: round j finds the best candidate ranked after round j-1's pick, by the same total
// order as the reference (larger value, then smaller index), so ids and values equal the
// reference's exactly whatever the reduction order. k <= 64 rounds over a row of a vocabulary
// (~50k) cost far less than sending the row to the host. The log-sum-exp sums in double per
// thread and per block, so it matches the reference to float rounding.
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "argmax.cuh"
#include "topk.hpp"

namespace mil::cuda {
namespace topk_detail {

constexpr int kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads)
    topk_rows_kernel(int32_t* ids, float* values, float* logsumexp, const T* x, int64_t cols,
                     int64_t ld, int32_t k) {
  const T* row = x + int64_t(blockIdx.x) * ld;
  __shared__ float sv[kThreads];
  __shared__ int32_t si[kThreads];
  __shared__ double sd[kThreads];
  float prev_v = 0;
  int32_t prev_i = -1;  // round j - 1's pick
  for (int32_t j = 0; j < k; ++j) {
    float bv = -INFINITY;
    int32_t bi = -1;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const float v = to_float(row[c]);
      const int32_t i = int32_t(c);
      const bool after_prev = j == 0 || ranks_before(prev_v, prev_i, v, i);
      if (!isnan(v) && v != -INFINITY && after_prev && ranks_before(v, i, bv, bi)) bv = v, bi = i;
    }
    block_best<kThreads>(bv, bi, sv, si);
    prev_v = sv[0];
    prev_i = si[0];
    if (threadIdx.x == 0) {
      ids[int64_t(blockIdx.x) * k + j] = prev_i;
      values[int64_t(blockIdx.x) * k + j] = prev_i < 0 ? -INFINITY : prev_v;
    }
    __syncthreads();  // every thread has read sv[0], si[0] before the next round writes them
    if (prev_i < 0) {  // no candidates left: pad the rest
      for (int32_t r = j + 1 + int32_t(threadIdx.x); r < k; r += kThreads) {
        ids[int64_t(blockIdx.x) * k + r] = -1;
        values[int64_t(blockIdx.x) * k + r] = -INFINITY;
      }
      break;
    }
  }
  // The row maximum over non-NaN values (the first pick, unless the row is all -inf or NaN).
  float top = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    const float v = to_float(row[c]);
    if (!isnan(v)) top = fmaxf(top, v);
  }
  sv[threadIdx.x] = top;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) sv[threadIdx.x] = fmaxf(sv[threadIdx.x], sv[threadIdx.x + s]);
    __syncthreads();
  }
  top = sv[0];
  double sum = 0;
  if (isfinite(top))
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const float v = to_float(row[c]);
      if (!isnan(v)) sum += exp(double(v) - double(top));
    }
  sd[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) sd[threadIdx.x] += sd[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    logsumexp[blockIdx.x] = isfinite(top) ? float(double(top) + log(sd[0])) : top;
}

}  // namespace topk_detail

template <class T>
void topk_rows(int32_t* ids, float* values, float* logsumexp, const T* x, int64_t rows, int64_t cols,
               int64_t ld, int32_t k, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "topk_rows: float or bf16");
  check_topk_sizes(rows, cols, ld, k, kMaxTopK);
  MIL_CHECK(rows <= INT32_MAX, "topk_rows: ", rows, " rows");
  if (rows == 0) return;
  topk_detail::topk_rows_kernel<T>
      <<<unsigned(rows), topk_detail::kThreads, 0, stream>>>(ids, values, logsumexp, x, cols, ld, k);
  MIL_CUDA_CHECK_LAUNCH("topk_rows_kernel");
}

}  // namespace mil::cuda
