#pragma once
// AdamW on the GPU over a flat buffer (formulas and CPU reference in adamw.hpp): one grid-stride
// launch; fp32 master weights and moments; the parameter copy and the gradient in bf16 or float.
// Bias corrections are computed on the host (adamw_coefficients); an optional device-side factor
// (e.g. the clipping coefficient from global_norm.cuh) multiplies the gradient without a host
// synchronisation.
//
// Elements go four at a time (16-byte fp32, 8-byte bf16 accesses) when all the buffers sit at the
// same position modulo four elements, as slices of aligned flat buffers at one offset do; the few
// elements before and after the vectors are done one per thread. Otherwise, one at a time.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "adamw.hpp"

namespace mil::cuda {
namespace adamw_detail {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;  // 2048 threads per SM, one wave; the rest is grid-stride

template <class P, class G>
MIL_DEVICE inline void update_one(float* master, float* m, float* v, P* param, const G* grad,
                                  int64_t i, const AdamWCoefficients<float>& c) {
  float w = master[i], mi = m[i], vi = v[i];
  adamw_element(w, mi, vi, to_float(grad[i]) * c.grad_scale, c);
  master[i] = w, m[i] = mi, v[i] = vi;
  if (param) param[i] = from_float<P>(w);
}

// kVector: elements [head, head + 4 * nvec) go in fours (all buffers 4-element aligned there).
template <class P, class G, bool kVector>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ master, float* __restrict__ m, float* __restrict__ v,
                 P* __restrict__ param, const G* __restrict__ grad, int64_t n, int64_t head,
                 AdamWCoefficients<float> c, const float* __restrict__ grad_scale_device) {
  if (grad_scale_device) c.grad_scale *= *grad_scale_device;  // the same product on the CPU
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if constexpr (kVector) {
    const int64_t nvec = (n - head) / 4, tail = head + nvec * 4;
    if (tid < head + (n - tail))
      update_one(master, m, v, param, grad, tid < head ? tid : tail + (tid - head), c);
    for (int64_t k = tid; k < nvec; k += stride) {
      const int64_t i = head + 4 * k;
      float w[4], mi[4], vi[4], g[4];
      load4(master + i, w);
      load4(m + i, mi);
      load4(v + i, vi);
      load4(grad + i, g);
#pragma unroll
      for (int e = 0; e < 4; ++e) adamw_element(w[e], mi[e], vi[e], g[e] * c.grad_scale, c);
      store4(master + i, w);
      store4(m + i, mi);
      store4(v + i, vi);
      if (param) store4(param + i, w);
    }
  } else {
    for (int64_t i = tid; i < n; i += stride) update_one(master, m, v, param, grad, i, c);
  }
}

// Position of p modulo four elements.
template <class T>
inline int64_t phase4(const T* p) {
  return int64_t(reinterpret_cast<uintptr_t>(p) / sizeof(T) % 4);
}

}  // namespace adamw_detail

// master, m, v: [n] fp32; param: [n] low-precision copy of master, or null; grad: [n];
// grad_scale_device: null, or one float on the device multiplying the gradient on top of
// step.grad_scale. None of the buffers overlap.
template <class P, class G>
void adamw_update(float* master, float* m, float* v, P* param, const G* grad, int64_t n,
                  const AdamWStep& step, const float* grad_scale_device, cudaStream_t stream) {
  static_assert(std::is_same_v<P, float> || std::is_same_v<P, bf16>,
                "cuda::adamw_update: the parameter copy is float or bf16");
  static_assert(std::is_same_v<G, float> || std::is_same_v<G, bf16>,
                "cuda::adamw_update: the gradient is float or bf16");
  namespace d = adamw_detail;
  MIL_CHECK(n >= 0, "adamw_update: negative size ", n);
  const AdamWCoefficients<float> c = adamw_coefficients<float>(step);
  if (n == 0) return;
  const int64_t phase = d::phase4(master);
  const bool vector = d::phase4(m) == phase && d::phase4(v) == phase && d::phase4(grad) == phase &&
                      (param == nullptr || d::phase4(param) == phase);
  const int64_t head = std::min<int64_t>((4 - phase) % 4, n);
  const int64_t work = vector ? (n - head) / 4 : n;  // the < 8 scalars fit in any block
  const int blocks =
      int(grid_stride_blocks(work, d::kThreads, int64_t(sm_count()) * d::kBlocksPerSm));
  if (vector)
    d::adamw_kernel<P, G, true><<<blocks, d::kThreads, 0, stream>>>(master, m, v, param, grad, n,
                                                                    head, c, grad_scale_device);
  else
    d::adamw_kernel<P, G, false>
        <<<blocks, d::kThreads, 0, stream>>>(master, m, v, param, grad, n, 0, c, grad_scale_device);
  MIL_CUDA_CHECK_LAUNCH("adamw_kernel");
}

// No low-precision copy: the fp32 master buffer is the parameter.
template <class G>
void adamw_update(float* master, float* m, float* v, std::nullptr_t, const G* grad, int64_t n,
                  const AdamWStep& step, const float* grad_scale_device, cudaStream_t stream) {
  adamw_update(master, m, v, static_cast<G*>(nullptr), grad, n, step, grad_scale_device, stream);
}

}  // namespace mil::cuda
