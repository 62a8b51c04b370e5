#pragma once
// C = alpha A B^T + beta C for a few rows of A (m <= 8): the shape of every projection in a decode
// step (one token per sequence against a weight B [n, k]). It is a stream over B, so the kernel
// must keep HBM busy: a tiled GEMM gives such a product one CTA per 128 columns and reads B at a
// fraction of the bandwidth; here each warp owns one output unit (a column, or a pair of columns
// for the fused epilogues of fused_rows.cuh), reads those rows of B once in 16-byte vectors,
// multiplies them with all m rows of A (staged once per block in shared memory) and reduces
// across lanes. Semantics as cpu::matmul (matmul.hpp); called by cuda::matmul when the operands
// fit (no transpose of A, B transposed, k a multiple of one vector, 16-byte aligned operands).
//
// The same kernel serves the fused decode products (fused_rows.cuh): an optional RMSNorm of the
// rows of A while they are staged (h = T(x rstd w), as rmsnorm_forward rounds it), and an
// epilogue that receives each unit's fp32 results.
//
// Row invariance: a row's norm is summed by one warp in a fixed order and each output by one warp
// in a fixed order, independent of m and of the block size, so a row's result does not depend on
// the other rows of the call: verifying k tokens gives bitwise the products of k decode steps.
// Launched as a dependent launch (core/cuda_pdl.cuh). Where B is constant (weights at inference:
// linear_rows and the fused rows), its first vectors are read before grid_dependency_wait(), so
// the kernel streams weights while the previous kernel finishes; a general product (matmul_skinny,
// whose B may be what the kernel before it wrote) waits first.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_pdl.cuh"
#include "../core/cuda_vec.cuh"
#include "../core/cuda_warp.cuh"
#include "matmul.hpp"

namespace mil::cuda {
namespace skinny_detail {

constexpr int kMaxRows = 8;
constexpr int kPrefetch = 4;                  // 16-byte weight vectors per lane read before the wait
constexpr size_t kMaxStaged = 96 * 1024;      // shared memory for the staged rows of A

template <class T>
struct Operands {
  const T* a;          // [m, k]
  const T* b;          // [n, k]
  int64_t k;
  const T* norm_w;     // [k]: rows of A are RMS-normalised with these weights; null: A as is
  float eps;
  bool b_constant;     // no kernel still in flight on the stream writes B: read it before the wait
};

// C = alpha A B^T + beta C: one column per warp.
template <class T>
struct ScaleEpilogue {
  static constexpr int kCols = 1;
  T* c;
  int64_t n;
  float alpha, beta;
  __device__ int64_t units() const { return n; }
  __device__ void columns(int64_t u, int64_t (&j)[1]) const { j[0] = u; }
  __device__ void store(int r, int64_t u, const int64_t (&)[1], const float (&v)[1]) const {
    T* out = c + int64_t(r) * n + u;
    const float prev = beta != 0.f ? to_float(*out) : 0.f;
    *out = from_float<T>(fmaf(alpha, v[0], beta * prev));
  }
};

// Constant B through the read-only cache; B that an earlier kernel may have written, past L1.
__device__ __forceinline__ uint4 load_b(const uint4* p, bool constant) {
  return constant ? __ldg(p) : __ldcg(p);
}

template <class T>
MIL_DEVICE inline void fma_rows(float* acc, const uint4& av, const float* bv) {
  float af[kVec<T>];
  unpack<T>(av, af);
#pragma unroll
  for (int e = 0; e < kVec<T>; ++e) *acc = fmaf(af[e], bv[e], *acc);
}

// Block: `warps` warps, one unit each; dynamic shared memory: M rows of A ([M][k] in T).
template <class T, int M, class Epi>
__global__ void __launch_bounds__(256)
    skinny_kernel(const Operands<T> op, const __grid_constant__ Epi epi) {
  constexpr int V = kVec<T>, C = Epi::kCols;
  extern __shared__ uint4 staged[];  // [M][k / V]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t vecs = op.k / V;
  const int64_t u = int64_t(blockIdx.x) * warps + warp;
  const bool active = u < epi.units();
  int64_t cols[C];
  const uint4* brow[C];
  if (active) epi.columns(u, cols);
#pragma unroll
  for (int c = 0; c < C; ++c) brow[c] = reinterpret_cast<const uint4*>(op.b + (active ? cols[c] : 0) * op.k);

  // Constant weights first: no earlier kernel writes them.
  if (!op.b_constant) grid_dependency_wait();
  uint4 pre[C][kPrefetch];
#pragma unroll
  for (int p = 0; p < kPrefetch; ++p) {
    const int64_t i = lane + int64_t(p) * 32;
#pragma unroll
    for (int c = 0; c < C; ++c)
      if (active && i < vecs) pre[c][p] = load_b(brow[c] + i, op.b_constant);
  }
  if (op.b_constant) grid_dependency_wait();

  // Stage A (normalised when asked): row r by warps r, r + warps, ...
  const uint4* a = reinterpret_cast<const uint4*>(op.a);
  if (op.norm_w != nullptr) {
    const uint4* g = reinterpret_cast<const uint4*>(op.norm_w);
    for (int r = warp; r < M; r += warps) {
      const uint4* x = a + r * vecs;
      float ss = 0.f;
      for (int64_t i = lane; i < vecs; i += 32) {
        float f[V];
        unpack<T>(x[i], f);
#pragma unroll
        for (int e = 0; e < V; ++e) ss = fmaf(f[e], f[e], ss);
      }
      const float rstd = 1.f / sqrtf(warp_sum(ss) / float(op.k) + op.eps);
      for (int64_t i = lane; i < vecs; i += 32) {
        float f[V], w[V];
        unpack<T>(x[i], f);
        unpack<T>(__ldg(g + i), w);
#pragma unroll
        for (int e = 0; e < V; ++e) f[e] = f[e] * rstd * w[e];
        staged[r * vecs + i] = pack<T>(f);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < M * vecs; i += blockDim.x) staged[i] = a[i];
  }
  __syncthreads();
  launch_dependents();
  if (!active) return;  // after the block's only barrier

  float acc[C][M];
#pragma unroll
  for (int c = 0; c < C; ++c)
#pragma unroll
    for (int r = 0; r < M; ++r) acc[c][r] = 0.f;
  auto consume = [&](int64_t i, const uint4 (&bv)[C]) {
    float bf[C][V];
#pragma unroll
    for (int c = 0; c < C; ++c) unpack<T>(bv[c], bf[c]);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const uint4 av = staged[r * vecs + i];
#pragma unroll
      for (int c = 0; c < C; ++c) fma_rows<T>(&acc[c][r], av, bf[c]);
    }
  };
#pragma unroll
  for (int p = 0; p < kPrefetch; ++p) {
    const int64_t i = lane + int64_t(p) * 32;
    if (i < vecs) {
      uint4 bv[C];
#pragma unroll
      for (int c = 0; c < C; ++c) bv[c] = pre[c][p];
      consume(i, bv);
    }
  }
  for (int64_t i = lane + int64_t(kPrefetch) * 32; i < vecs; i += 32) {
    uint4 bv[C];
#pragma unroll
    for (int c = 0; c < C; ++c) bv[c] = load_b(brow[c] + i, op.b_constant);
    consume(i, bv);
  }
#pragma unroll
  for (int c = 0; c < C; ++c)
#pragma unroll
    for (int r = 0; r < M; ++r) acc[c][r] = warp_sum(acc[c][r]);
  if (lane < M) {
    // Lane r stores row r (a register array indexed by a runtime lane is selected, not spilled).
    float v[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      v[c] = 0.f;
#pragma unroll
      for (int r = 0; r < M; ++r)
        if (r == lane) v[c] = acc[c][r];
    }
    epi.store(lane, u, cols, v);
  }
}

// Warps per block: 8, fewer while that leaves SMs without a block (a 576-column product has only
// 72 blocks of 8 warps on 132 SMs).
inline int warps_for(int64_t units) {
  int warps = 8;
  const int64_t sms = sm_count();
  while (warps > 2 && ceil_div(units, warps) < sms) warps /= 2;
  return warps;
}

template <class T>
size_t staged_bytes(int64_t m, int64_t k) {
  return size_t(m) * size_t(k) * sizeof(T);
}

template <class T, int M, class Epi>
void launch_rows(const Operands<T>& op, const Epi& epi, int64_t units, cudaStream_t stream) {
  auto kernel = skinny_kernel<T, M, Epi>;
  const size_t smem = staged_bytes<T>(M, op.k);
  if (smem > 48 * 1024)  // the attribute is per device: set on every such launch (rare shapes)
    MIL_CHECK(opt_in_shared_memory(kernel, kMaxStaged), "matmul_skinny: ", smem,
              " bytes of staged rows exceed shared memory");
  const int warps = warps_for(units);
  const int64_t blocks = ceil_div(units, warps);
  MIL_CHECK(blocks <= INT32_MAX, "matmul_skinny: too many columns");
  launch_dependent(kernel, dim3(unsigned(blocks)), dim3(unsigned(warps * 32)), smem, stream, op, epi);
}

// The row count is a template argument: acc[][] stays in registers.
template <class T, class Epi>
void dispatch_rows(int64_t m, const Operands<T>& op, const Epi& epi, int64_t units,
                   cudaStream_t stream) {
  switch (m) {
    case 1: return launch_rows<T, 1>(op, epi, units, stream);
    case 2: return launch_rows<T, 2>(op, epi, units, stream);
    case 3: return launch_rows<T, 3>(op, epi, units, stream);
    case 4: return launch_rows<T, 4>(op, epi, units, stream);
    case 5: return launch_rows<T, 5>(op, epi, units, stream);
    case 6: return launch_rows<T, 6>(op, epi, units, stream);
    case 7: return launch_rows<T, 7>(op, epi, units, stream);
    default: return launch_rows<T, 8>(op, epi, units, stream);
  }
}

// Whether m rows of k elements (k a multiple of one vector) can be staged on this device.
template <class T>
bool rows_fit(int64_t m, int64_t k) {
  if (!(m >= 1 && m <= kMaxRows && k >= 1 && k % kVec<T> == 0)) return false;
  const size_t bytes = staged_bytes<T>(m, k);
  return bytes <= 48 * 1024 || (bytes <= kMaxStaged && bytes + 1024 <= size_t(device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>()));
}

}  // namespace skinny_detail

// Whether matmul_skinny takes this product.
template <class T>
bool matmul_skinny_fits(const GemmShape& s, const T* c, const T* a, const T* b) {
  return s.batch == 1 && !s.trans_a && s.trans_b && skinny_detail::rows_fit<T>(s.m, s.k) &&
         s.n <= int64_t(INT32_MAX) * 2 && aligned16(a) && aligned16(b) && c != nullptr;
}

// b_constant: no kernel still in flight on `stream` writes b (weights at inference), so the
// kernel may read it before waiting for the previous kernel.
template <class T>
void matmul_skinny(const GemmShape& s, T* c, const T* a, const T* b, cudaStream_t stream,
                   bool b_constant = false) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "matmul_skinny: float or bf16");
  MIL_CHECK(matmul_skinny_fits(s, c, a, b), "matmul_skinny: the product does not fit (m ", s.m,
            ", k ", s.k, ", transposes, alignment)");
  if (s.n == 0) return;
  const skinny_detail::Operands<T> op{a, b, s.k, nullptr, 0.f, b_constant};
  skinny_detail::dispatch_rows(s.m, op, skinny_detail::ScaleEpilogue<T>{c, s.n, s.alpha, s.beta},
                               s.n, stream);
}

}  // namespace mil::cuda
