#pragma once
// SwiGLU on the GPU (T = float or bf16, fp32 math). Element-wise and memory bound: each thread
// handles one 16-byte pack of a row (one element when sizes or pointers do not allow packs);
// blockIdx.y walks the rows. gate/up and their gradients are read with in_stride, as on the CPU.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/swiglu.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/math.hpp"
#include "swiglu.hpp"

namespace mil::cuda {
namespace swiglu_detail {

struct Launch {
  dim3 grid, block;
};

inline Launch launch_shape(int64_t rows, int64_t packs) {
  const int64_t threads = std::min<int64_t>(256, (packs + 31) / 32 * 32);
  const int64_t blocks_x = (packs + threads - 1) / threads;
  MIL_CHECK(blocks_x <= INT32_MAX, "swiglu: hidden size too large: ", packs, " packs");
  return {dim3(unsigned(blocks_x), unsigned(std::min<int64_t>(rows, 65535))),
          dim3(unsigned(threads))};
}

}  // namespace swiglu_detail

template <class T, int VEC>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t rows,
                                      int64_t hidden, int64_t in_stride) {
  using P = Pack<T, VEC>;
  const int64_t j = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (j >= hidden) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const P g = *reinterpret_cast<const P*>(gate + r * in_stride + j);
    const P u = *reinterpret_cast<const P*>(up + r * in_stride + j);
    P o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float gf = float(g.v[e]);
      o.v[e] = T(gf * sigmoid(gf) * float(u.v[e]));
    }
    *reinterpret_cast<P*>(out + r * hidden + j) = o;
  }
}

template <class T, int VEC>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                       int64_t rows, int64_t hidden, int64_t in_stride,
                                       bool accumulate) {
  using P = Pack<T, VEC>;
  const int64_t j = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (j >= hidden) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t k = r * in_stride + j;
    const P g = *reinterpret_cast<const P*>(gate + k);
    const P u = *reinterpret_cast<const P*>(up + k);
    const P d = *reinterpret_cast<const P*>(dout + r * hidden + j);
    P dg, du;
    if (accumulate) {
      dg = *reinterpret_cast<const P*>(dgate + k);
      du = *reinterpret_cast<const P*>(dup + k);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float gf = float(g.v[e]), uf = float(u.v[e]), df = float(d.v[e]);
      const float s = sigmoid(gf);
      float d_up = df * gf * s;
      float d_gate = df * uf * s * (1.f + gf * (1.f - s));
      if (accumulate) {
        d_gate += float(dg.v[e]);
        d_up += float(du.v[e]);
      }
      dg.v[e] = T(d_gate);
      du.v[e] = T(d_up);
    }
    *reinterpret_cast<P*>(dgate + k) = dg;
    *reinterpret_cast<P*>(dup + k) = du;
  }
}

// out: [rows, hidden] contiguous; gate, up: rows of in_stride elements (fused or separate).
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t rows, int64_t hidden,
                    int64_t in_stride, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "swiglu_forward on the GPU supports float and bf16");
  cpu::swiglu_check_sizes("swiglu_forward", rows, hidden, in_stride);
  if (rows == 0 || hidden == 0) return;
  const bool packed = hidden % kVec<T> == 0 && in_stride % kVec<T> == 0 && aligned16(out) &&
                      aligned16(gate) && aligned16(up);
  const auto ls = swiglu_detail::launch_shape(rows, hidden / (packed ? kVec<T> : 1));
  if (packed)
    swiglu_forward_kernel<T, kVec<T>>
        <<<ls.grid, ls.block, 0, stream>>>(out, gate, up, rows, hidden, in_stride);
  else
    swiglu_forward_kernel<T, 1>
        <<<ls.grid, ls.block, 0, stream>>>(out, gate, up, rows, hidden, in_stride);
  MIL_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

// dgate, dup: laid out like gate, up; accumulate adds to both.
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t rows,
                     int64_t hidden, int64_t in_stride, bool accumulate, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "swiglu_backward on the GPU supports float and bf16");
  cpu::swiglu_check_sizes("swiglu_backward", rows, hidden, in_stride);
  if (rows == 0 || hidden == 0) return;
  const bool packed = hidden % kVec<T> == 0 && in_stride % kVec<T> == 0 && aligned16(dgate) &&
                      aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up);
  const auto ls = swiglu_detail::launch_shape(rows, hidden / (packed ? kVec<T> : 1));
  if (packed)
    swiglu_backward_kernel<T, kVec<T>><<<ls.grid, ls.block, 0, stream>>>(
        dgate, dup, dout, gate, up, rows, hidden, in_stride, accumulate);
  else
    swiglu_backward_kernel<T, 1><<<ls.grid, ls.block, 0, stream>>>(dgate, dup, dout, gate, up, rows,
                                                                   hidden, in_stride, accumulate);
  MIL_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace mil::cuda
