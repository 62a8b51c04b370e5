#pragma once
// Element-wise sum and gradient accumulation on the GPU, for float and bf16 (CPU reference and
// semantics in add.hpp; the results are bitwise equal to it: one fp32 addition, one rounding).
// Memory bound: 16-byte loads and stores when all pointers are 16-byte aligned, a scalar tail.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/error.hpp"

#if !MIL_CUDA_ENABLED
#error "mil/kernels/add.cuh needs a CUDA build (MIL_CUDA_ENABLED=1)"
#endif

namespace mil::cuda {
namespace detail {

// Elements [0, packs * P) in packs of P = 16 / sizeof(T), the rest one by one.
template <class T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n, int64_t packs) {
  constexpr int P = kVec<T>;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = first; p < packs; p += stride) {
    uint4 ra = reinterpret_cast<const uint4*>(a)[p];
    uint4 rb = reinterpret_cast<const uint4*>(b)[p];
    T xa[P], xb[P];
    memcpy(xa, &ra, 16);
    memcpy(xb, &rb, 16);
#pragma unroll
    for (int j = 0; j < P; ++j) xa[j] = from_acc<T>(to_acc(xa[j]) + to_acc(xb[j]));
    memcpy(&ra, xa, 16);
    reinterpret_cast<uint4*>(out)[p] = ra;
  }
  for (int64_t i = packs * P + first; i < n; i += stride)
    out[i] = from_acc<T>(to_acc(a[i]) + to_acc(b[i]));
}

}  // namespace detail

// out = a + b over n elements; out may alias a or b exactly.
template <class T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::add runs in float or bf16");
  MIL_CHECK(n >= 0, "add: negative size ", n);
  if (n == 0) return;
  constexpr int64_t P = kVec<T>;
  const bool aligned = aligned16(out) && aligned16(a) && aligned16(b);
  const int64_t packs = aligned ? n / P : 0;
  const int64_t work = packs + (n - packs * P);  // threads wanted: one per pack or tail element
  constexpr int threads = 256;
  const int blocks = int(std::min<int64_t>((work + threads - 1) / threads, int64_t(1) << 20));
  detail::add_kernel<T><<<blocks, threads, 0, stream>>>(out, a, b, n, packs);
  MIL_CUDA_CHECK_LAUNCH("add_kernel");
}

// dst = src (accumulate = false) or dst += src (accumulate = true); dst may alias src exactly.
template <class T>
void add_into(T* dst, const T* src, int64_t n, bool accumulate, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda::add_into runs in float or bf16");
  MIL_CHECK(n >= 0, "add_into: negative size ", n);
  if (accumulate)
    add(dst, dst, src, n, stream);
  else if (dst != src && n > 0)
    MIL_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyDeviceToDevice, stream));
}

}  // namespace mil::cuda
