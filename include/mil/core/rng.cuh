#pragma once
// GPU fills from the counter-based streams of rng.hpp: element i of stream (seed, offset) is the
// value the CPU fills of rng.hpp write, so a tensor initialised on either device is the same.
// Uniforms are bitwise equal to the CPU's; normals agree up to the rounding of logf and cospif.
#include "rng.hpp"

#if !defined(__CUDACC__) || !MIL_CUDA_ENABLED
#error "mil/core/rng.cuh is for .cu files compiled by nvcc with MIL_CUDA_ENABLED=1"
#endif

#include <algorithm>

#include "cuda_check.hpp"

namespace mil::cuda {

namespace detail {

constexpr int rng_threads = 256;
constexpr int64_t rng_max_blocks = 8192;  // a grid-stride loop covers the rest

inline int rng_grid(int64_t work_items) {
  return int(std::min<int64_t>((work_items + rng_threads - 1) / rng_threads, rng_max_blocks));
}

}  // namespace detail

// One thread per Philox block of four uniforms. lo + (hi - lo) * u is one explicit FMA, as in
// rng::uniform on the CPU, so the fills are bitwise equal whatever either compiler contracts.
template <class T>
__global__ void fill_uniform_kernel(T* x, int64_t n, float lo, float hi, uint64_t seed,
                                    uint64_t offset) {
  const float span = hi - lo;
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += int64_t(gridDim.x) * blockDim.x) {
    rng::U32x4 r = rng::random_block(seed, offset, uint64_t(b));
    const int64_t first = 4 * b;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (first + j < n)
        x[first + j] = T(__fmaf_rn(span, rng::to_unit_float(r.v[j]), lo));
  }
}

// One thread per element; mean + stddev * z is rounded twice, as on the CPU (see above).
template <class T>
__global__ void fill_normal_kernel(T* x, int64_t n, float mean, float stddev, uint64_t seed,
                                   uint64_t offset) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = T(__fadd_rn(mean, __fmul_rn(stddev, rng::normal(seed, offset, uint64_t(i)))));
}

// x[i] = uniform [lo, hi) element i of stream (seed, offset), for i < n. T: float or bf16.
template <class T>
void fill_uniform(T* x, int64_t n, float lo, float hi, uint64_t seed, uint64_t offset,
                  cudaStream_t stream) {
  MIL_CHECK(n >= 0, "fill_uniform: negative element count ", n);
  if (n == 0) return;
  fill_uniform_kernel<T><<<detail::rng_grid((n + 3) / 4), detail::rng_threads, 0, stream>>>(
      x, n, lo, hi, seed, offset);
  MIL_CUDA_CHECK_LAUNCH("fill_uniform_kernel");
}

// x[i] = mean + stddev * (standard normal element i of stream (seed, offset)), for i < n.
template <class T>
void fill_normal(T* x, int64_t n, float mean, float stddev, uint64_t seed, uint64_t offset,
                 cudaStream_t stream) {
  MIL_CHECK(n >= 0, "fill_normal: negative element count ", n);
  if (n == 0) return;
  fill_normal_kernel<T><<<detail::rng_grid(n), detail::rng_threads, 0, stream>>>(
      x, n, mean, stddev, seed, offset);
  MIL_CUDA_CHECK_LAUNCH("fill_normal_kernel");
}

}  // namespace mil::cuda

namespace mil::rng {

// GPU tensors: the same calls as the CPU fills of rng.hpp, on cuda::current_stream().
template <Element T>
void fill_uniform(Tensor<T, Cuda>& t, float lo, float hi, uint64_t seed, uint64_t offset = 0) {
  cuda::fill_uniform(t.data(), t.numel(), lo, hi, seed, offset, cuda::current_stream());
}
template <Element T>
void fill_normal(Tensor<T, Cuda>& t, float mean, float stddev, uint64_t seed,
                 uint64_t offset = 0) {
  cuda::fill_normal(t.data(), t.numel(), mean, stddev, seed, offset, cuda::current_stream());
}

}  // namespace mil::rng
