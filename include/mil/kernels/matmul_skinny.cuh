#pragma once
// C = alpha A B^T + beta C for a few rows of A (m <= 8): the shape of every projection in a decode
// step (one token per sequence against a weight B [n, k]). It is a stream over B, so the kernel
// must keep HBM busy: a tiled GEMM gives such a product one CTA per 128 columns and reads B at a
// fraction of the bandwidth; here each warp owns one column j, reads row j of B once in 16-byte
// vectors, multiplies it with all m rows of A (small, served by L1/L2) and reduces across lanes.
// Fixed reduction order: results are deterministic. Semantics as cpu::matmul (matmul.hpp); called
// by cuda::matmul when the operands fit (no transpose of A, B transposed, k a multiple of one
// vector, 16-byte aligned operands).
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "matmul.hpp"

namespace mil::cuda {
namespace skinny_detail {

constexpr int kMaxRows = 8;
constexpr int kWarps = 8;  // columns per block

template <class T, int M>
__global__ void __launch_bounds__(kWarps * 32)
    matmul_skinny_kernel(T* c, const T* a, const T* b, int64_t n, int64_t k, float alpha,
                         float beta) {
  constexpr int V = kVec<T>;
  const int lane = threadIdx.x % 32;
  const int64_t j = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (j >= n) return;
  const uint4* brow = reinterpret_cast<const uint4*>(b + j * k);
  const int64_t vecs = k / V;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  for (int64_t i = lane; i < vecs; i += 32) {
    float bv[V];
    unpack<T>(__ldg(brow + i), bv);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float av[V];
      unpack<T>(__ldg(reinterpret_cast<const uint4*>(a + r * k) + i), av);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[r] = fmaf(av[e], bv[e], acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  }
  if (lane < M) {
    // Lane r writes row r (a register array indexed by a runtime lane is selected, not spilled).
    float v = 0.f;
#pragma unroll
    for (int r = 0; r < M; ++r)
      if (r == lane) v = acc[r];
    T* out = c + int64_t(lane) * n + j;
    const float prev = beta != 0.f ? to_float(*out) : 0.f;
    *out = from_float<T>(alpha * v + beta * prev);
  }
}

template <class T, int M>
void launch(const GemmShape& s, T* c, const T* a, const T* b, cudaStream_t stream) {
  const int64_t blocks = (s.n + kWarps - 1) / kWarps;
  matmul_skinny_kernel<T, M><<<unsigned(blocks), kWarps * 32, 0, stream>>>(c, a, b, s.n, s.k,
                                                                           s.alpha, s.beta);
  MIL_CUDA_CHECK_LAUNCH("matmul_skinny_kernel");
}

}  // namespace skinny_detail

// Whether matmul_skinny takes this product.
template <class T>
bool matmul_skinny_fits(const GemmShape& s, const T* c, const T* a, const T* b) {
  return s.batch == 1 && !s.trans_a && s.trans_b && s.m >= 1 &&
         s.m <= skinny_detail::kMaxRows && s.k >= 1 && s.k % kVec<T> == 0 &&
         s.n <= int64_t(INT32_MAX) * skinny_detail::kWarps && aligned16(a) && aligned16(b) &&
         c != nullptr;
}

template <class T>
void matmul_skinny(const GemmShape& s, T* c, const T* a, const T* b, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "matmul_skinny: float or bf16");
  MIL_CHECK(matmul_skinny_fits(s, c, a, b), "matmul_skinny: the product does not fit (m ", s.m,
            ", k ", s.k, ", transposes, alignment)");
  switch (s.m) {  // the row count is a template argument: acc[] stays in registers
    case 1: return skinny_detail::launch<T, 1>(s, c, a, b, stream);
    case 2: return skinny_detail::launch<T, 2>(s, c, a, b, stream);
    case 3: return skinny_detail::launch<T, 3>(s, c, a, b, stream);
    case 4: return skinny_detail::launch<T, 4>(s, c, a, b, stream);
    case 5: return skinny_detail::launch<T, 5>(s, c, a, b, stream);
    case 6: return skinny_detail::launch<T, 6>(s, c, a, b, stream);
    case 7: return skinny_detail::launch<T, 7>(s, c, a, b, stream);
    default: return skinny_detail::launch<T, 8>(s, c, a, b, stream);
  }
}

}  // namespace mil::cuda
