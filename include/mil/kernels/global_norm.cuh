#pragma once
// Global L2 norm on the GPU, for float and bf16 gradients (CPU reference in global_norm.hpp).
//
// sum_of_squares is deterministic: a grid whose size depends only on n and the element type
// writes one fp32 partial per block (fixed per-thread order, fixed tree in the block), and a
// second one-block kernel adds the partials in a fixed order. Two runs give the same bits. The
// result stays on the device, and clip_coefficient turns it into the clipping factor there, so
// clipping needs no host synchronisation.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../core/allocator.hpp"
#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/cuda_warp.cuh"
#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cuda {
namespace global_norm_detail {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;  // partials; a fixed bound keeps the second stage one block
constexpr int kUnroll = 4;        // 16-byte loads in flight per thread

// Sum of the squares of the kVec<T> elements in 16 bytes, added to acc in element order.
template <class T>
MIL_DEVICE inline float add_squares(float acc, const uint4& r) {
  float f[kVec<T>];
  unpack<T>(r, f);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) acc = fmaf(f[i], f[i], acc);
  return acc;
}

// The block's sum, in every thread, by a fixed tree.
MIL_DEVICE inline float block_sum(float v) {
  __shared__ float warp_sums[32];
  v = warp_sum(v);
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? warp_sums[lane] : 0.f;
  return warp_sum(v);
}

// partials[block] = sum of squares of this block's share: 16-byte vectors grid-strided, plus the
// fewer than 2 * kVec elements before the first and after the last 16-byte boundary.
template <class T>
__global__ void __launch_bounds__(kThreads)
    sum_of_squares_partials_kernel(float* __restrict__ partials, const T* __restrict__ x,
                                   int64_t n) {
  const VecSplit s = split16(x, n);
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;

  float acc[kUnroll] = {};
  if (tid < s.scalars()) {
    const float f = to_float(x[s.scalar_element(tid)]);
    acc[0] = f * f;
  }
  const uint4* xv = reinterpret_cast<const uint4*>(x + s.head);
  for (int64_t base = tid; base < s.nvec; base += kUnroll * stride) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * stride < s.nvec) r[u] = xv[base + u * stride];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (base + u * stride < s.nvec) acc[u] = add_squares<T>(acc[u], r[u]);
  }
  const float sum = block_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *out = sum of the partials, one block, fixed order.
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    sum_partials_kernel(float* __restrict__ out, const float* __restrict__ partials, int count) {
  float v = 0.f;
  for (int i = int(threadIdx.x); i < count; i += kBlock) v += partials[i];
  v = block_sum(v);
  if (threadIdx.x == 0) *out = v;
}

template <class T>
__global__ void clip_coefficient_kernel(T* __restrict__ coef, const T* __restrict__ sum_sq,
                                        T max_norm) {
  const T s = *sum_sq;
  *coef = isfinite(s) ? fminf(T(1), max_norm / (sqrtf(s) + T(1e-6))) : T(NAN);
}

// Device memory for one launcher call, given back to the caching allocator on `stream`, so only
// work ordered after this call on that stream can reuse it.
struct Scratch {
  void* ptr;
  Scratch(size_t bytes, cudaStream_t stream)
      : ptr(CachingAllocator::instance().allocate(bytes, stream)) {}
  ~Scratch() { CachingAllocator::instance().deallocate(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace global_norm_detail

// *out (one float on the device) = sum of x_i^2, accumulated in fp32; deterministic.
template <class T>
void sum_of_squares(float* out, const T* x, int64_t n, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::sum_of_squares runs in float or bf16");
  namespace d = global_norm_detail;
  MIL_CHECK(n >= 0, "sum_of_squares: negative size ", n);
  if (n == 0) {
    MIL_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float), stream));
    return;
  }
  // The grid depends on n only (not on the GPU): the summation order is fixed by the input.
  const int64_t per_block = int64_t(d::kThreads) * kVec<T> * d::kUnroll;
  const int blocks = int(std::clamp<int64_t>((n + per_block - 1) / per_block, 1, d::kMaxBlocks));
  d::Scratch partials(size_t(blocks) * sizeof(float), stream);
  auto* p = static_cast<float*>(partials.ptr);
  d::sum_of_squares_partials_kernel<T><<<blocks, d::kThreads, 0, stream>>>(p, x, n);
  MIL_CUDA_CHECK_LAUNCH("sum_of_squares_partials_kernel");
  d::sum_partials_kernel<d::kThreads><<<1, d::kThreads, 0, stream>>>(out, p, blocks);
  MIL_CUDA_CHECK_LAUNCH("sum_partials_kernel");
}

// *coef = min(1, max_norm / (sqrt(*sum_sq) + 1e-6)) on the device; NaN when *sum_sq is not
// finite (the optimizer must notice the bad norm and skip the step, not clip by 0 or 1).
inline void clip_coefficient(float* coef, const float* sum_sq, float max_norm,
                             cudaStream_t stream) {
  MIL_CHECK(max_norm > 0, "clip_coefficient: max_norm must be positive, got ", max_norm);
  global_norm_detail::clip_coefficient_kernel<float><<<1, 1, 0, stream>>>(coef, sum_sq, max_norm);
  MIL_CUDA_CHECK_LAUNCH("clip_coefficient_kernel");
}

}  // namespace mil::cuda
