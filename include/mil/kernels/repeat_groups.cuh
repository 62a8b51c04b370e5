#pragma once
// GQA group repeat on the GPU (contract and CPU reference in repeat_groups.hpp; T = float or bf16).
// Memory bound and element-wise: the forward copies one 16-byte pack of an output row per thread,
// the backward sums the `repeat` copies of one pack of the input gradient per thread, in order and
// in fp32 (deterministic). Sizes or pointers that do not allow packs run with one-element packs.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/repeat_groups.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "repeat_groups.hpp"

namespace mil::cuda {
// One thread per output pack (VEC elements); group_size is a multiple of VEC.
template <class T, int VEC>
__global__ void repeat_groups_forward_kernel(T* __restrict__ out, const T* __restrict__ in,
                                             int64_t rows, int64_t groups, int64_t group_size,
                                             int64_t repeat, int64_t in_stride) {
  using P = Pack<T, VEC>;
  const int64_t gp = group_size / VEC;              // packs per group
  const int64_t out_packs = groups * repeat * gp;   // packs per output row
  const int64_t n = rows * out_packs;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / out_packs, j = i % out_packs;
    const int64_t g = j / (repeat * gp), p = j % gp;
    *reinterpret_cast<P*>(out + i * VEC) =
        *reinterpret_cast<const P*>(in + r * in_stride + (g * gp + p) * VEC);
  }
}

// One thread per pack of din: the sum over k of dout's copy k, then (=|+=) into din.
template <class T, int VEC>
__global__ void repeat_groups_backward_kernel(T* __restrict__ din, const T* __restrict__ dout,
                                              int64_t rows, int64_t groups, int64_t group_size,
                                              int64_t repeat, int64_t in_stride, bool accumulate) {
  using P = Pack<T, VEC>;
  const int64_t gp = group_size / VEC;
  const int64_t in_packs = groups * gp;
  const int64_t out_width = groups * repeat * group_size;
  const int64_t n = rows * in_packs;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / in_packs, j = i % in_packs;
    const int64_t g = j / gp, p = j % gp;
    const T* src = dout + r * out_width + (g * repeat * gp + p) * VEC;
    float sum[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) sum[e] = 0.f;
    for (int64_t k = 0; k < repeat; ++k) {
      const P v = *reinterpret_cast<const P*>(src + k * gp * VEC);
#pragma unroll
      for (int e = 0; e < VEC; ++e) sum[e] += to_float(v.v[e]);
    }
    P* dst = reinterpret_cast<P*>(din + r * in_stride + j * VEC);
    P d;
    if (accumulate) d = *dst;
#pragma unroll
    for (int e = 0; e < VEC; ++e)
      d.v[e] = from_float<T>(accumulate ? to_float(d.v[e]) + sum[e] : sum[e]);
    *dst = d;
  }
}

// out: packed [rows, groups * repeat * group_size]; in: rows of in_stride elements.
template <class T>
void repeat_groups_forward(T* out, const T* in, const RepeatGroupsShape& s, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "repeat_groups_forward on the GPU supports float and bf16");
  repeat_groups_check("repeat_groups_forward", s);
  if (s.rows == 0) return;
  constexpr int V = kVec<T>;
  const bool packed =
      s.group_size % V == 0 && s.is() % V == 0 && aligned16(out) && aligned16(in);
  const int64_t n = s.rows * s.out_width() / (packed ? V : 1);
  const unsigned grid = grid_stride_blocks(n, 256);
  if (packed)
    repeat_groups_forward_kernel<T, V><<<grid, 256, 0, stream>>>(out, in, s.rows, s.groups,
                                                                 s.group_size, s.repeat, s.is());
  else
    repeat_groups_forward_kernel<T, 1><<<grid, 256, 0, stream>>>(out, in, s.rows, s.groups,
                                                                 s.group_size, s.repeat, s.is());
  MIL_CUDA_CHECK_LAUNCH("repeat_groups_forward_kernel");
}

// din: rows of in_stride elements (only the first groups * group_size written); dout packed.
template <class T>
void repeat_groups_backward(T* din, const T* dout, const RepeatGroupsShape& s, bool accumulate,
                            cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "repeat_groups_backward on the GPU supports float and bf16");
  repeat_groups_check("repeat_groups_backward", s);
  if (s.rows == 0) return;
  constexpr int V = kVec<T>;
  const bool packed =
      s.group_size % V == 0 && s.is() % V == 0 && aligned16(din) && aligned16(dout);
  const int64_t n = s.rows * s.in_width() / (packed ? V : 1);
  const unsigned grid = grid_stride_blocks(n, 256);
  if (packed)
    repeat_groups_backward_kernel<T, V><<<grid, 256, 0, stream>>>(
        din, dout, s.rows, s.groups, s.group_size, s.repeat, s.is(), accumulate);
  else
    repeat_groups_backward_kernel<T, 1><<<grid, 256, 0, stream>>>(
        din, dout, s.rows, s.groups, s.group_size, s.repeat, s.is(), accumulate);
  MIL_CUDA_CHECK_LAUNCH("repeat_groups_backward_kernel");
}

}  // namespace mil::cuda
