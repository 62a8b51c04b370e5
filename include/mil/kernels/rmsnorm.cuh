#pragma once
// RMSNorm on the GPU (T = float or bf16; fp32 math; rstd is float).
//
// Forward: a "row slot" of threads_per_row threads (a multiple of 32) normalises one row; a block
// holds several slots when rows are short. x is loaded once into registers as 16-byte packs, the
// sum of squares is reduced over the slot, and out is written from the registers.
// Backward: dx per row as in the forward; dw is reduced deterministically: each block walks a
// fixed range of rows and keeps per-column sums in registers, the slots of a block are added in
// a fixed order, each block writes one fp32 partial row into a scratch tensor, and a second
// kernel adds the partial rows in a fixed order and writes (or accumulates into) dw. Results are
// bitwise reproducible on a given GPU (the number of blocks follows the SM count).
//
// Rows whose length or base pointers do not allow 16-byte packs run the same kernels with
// one-element packs. Rows too long for the register cache re-read the tail from global memory.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/rmsnorm.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/cuda_warp.cuh"
#include "../core/dtype.hpp"
#include "../core/tensor.hpp"
#include "rmsnorm.hpp"

namespace mil::cuda {
namespace rmsnorm_detail {

constexpr int kForwardCached = 4;   // packs per thread kept in registers by the forward
constexpr int kBackwardCached = 2;  // by the backward (which also keeps the dw sums there)
// Threads per row and per block at most: leaves up to 128 registers per thread for the caches.
constexpr int kMaxThreads = 512;

// Sum over the threads of one row slot (threads_per_row consecutive threads, a multiple of 32);
// every thread of the slot gets the same value, added in the same order each time. Must be
// reached by all threads of the block (it synchronises when a slot spans several warps).
__device__ inline float slot_sum(float v, float* warp_sums, int threads_per_row) {
  v = warp_sum(v);
  if (threads_per_row == 32) return v;  // uniform over the block
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int warps_per_slot = threads_per_row >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int first = warp / warps_per_slot * warps_per_slot;
  float t = lane < warps_per_slot ? warp_sums[first + lane] : 0.f;
  t = warp_sum(t);
  __syncthreads();  // warp_sums is rewritten by the next call
  return t;
}

struct RowGeometry {
  int threads_per_row;  // multiple of 32, at most kMaxThreads
  int rows_per_block;   // row slots per block
};

// Threads so that each holds at most `per_thread` packs (up to kMaxThreads per row), and as many
// row slots as fit in a block of about `block_target` (<= kMaxThreads) threads.
inline RowGeometry row_geometry(int64_t packs, int per_thread, int block_target) {
  int64_t threads = (packs + per_thread - 1) / per_thread;
  threads = std::clamp<int64_t>((threads + 31) / 32 * 32, 32, kMaxThreads);
  int slots = std::max(1, block_target / int(threads));
  return {int(threads), slots};
}

}  // namespace rmsnorm_detail

template <class T, int VEC>
__global__ void __launch_bounds__(rmsnorm_detail::kMaxThreads)
    rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const T* w, int64_t rows, int64_t dim,
                           int threads_per_row, float eps) {
  using P = Pack<T, VEC>;
  constexpr int K = rmsnorm_detail::kForwardCached;
  __shared__ float warp_sums[32];
  const int slot = int(threadIdx.x) / threads_per_row;
  const int lane = int(threadIdx.x) % threads_per_row;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / threads_per_row) + slot;
  const bool valid = row < rows;
  const int64_t packs = dim / VEC;
  const P* xr = reinterpret_cast<const P*>(x + (valid ? row : 0) * dim);

  P cache[K];
  float sum_sq = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t p = lane + int64_t(k) * threads_per_row;
    if (valid && p < packs) {
      cache[k] = xr[p];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float f = float(cache[k].v[e]);
        sum_sq += f * f;
      }
    }
  }
  for (int64_t p = lane + int64_t(K) * threads_per_row; valid && p < packs; p += threads_per_row) {
    const P xp = xr[p];
#pragma unroll
    for (int e = 0; e < VEC; ++e) sum_sq += float(xp.v[e]) * float(xp.v[e]);
  }
  sum_sq = rmsnorm_detail::slot_sum(sum_sq, warp_sums, threads_per_row);
  if (!valid) return;  // after the last barrier

  const float r = 1.f / sqrtf(sum_sq / float(dim) + eps);
  if (rstd != nullptr && lane == 0) rstd[row] = r;
  const P* wp = reinterpret_cast<const P*>(w);
  P* outr = reinterpret_cast<P*>(out + row * dim);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t p = lane + int64_t(k) * threads_per_row;
    if (p < packs) {
      const P wk = wp[p];
      P o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) o.v[e] = T(float(cache[k].v[e]) * r * float(wk.v[e]));
      outr[p] = o;
    }
  }
  for (int64_t p = lane + int64_t(K) * threads_per_row; p < packs; p += threads_per_row) {
    const P xp = xr[p], wk = wp[p];
    P o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o.v[e] = T(float(xp.v[e]) * r * float(wk.v[e]));
    outr[p] = o;
  }
}

// Block b handles rows [b * rows_per_range, (b + 1) * rows_per_range) and, when dw_partial is
// not null, writes its column sums of dout * x * rstd to dw_partial[b * dim, (b + 1) * dim).
template <class T, int VEC>
__global__ void __launch_bounds__(rmsnorm_detail::kMaxThreads)
    rmsnorm_backward_kernel(T* dx, float* dw_partial, const T* dout, const T* x, const T* w,
                            const float* rstd, int64_t rows, int64_t dim, int threads_per_row,
                            int64_t rows_per_range, bool accumulate_dx) {
  using P = Pack<T, VEC>;
  constexpr int K = rmsnorm_detail::kBackwardCached;
  __shared__ float warp_sums[32];
  extern __shared__ float rmsnorm_dw_exchange[];  // dim floats when a block has several slots
  const int slot = int(threadIdx.x) / threads_per_row;
  const int lane = int(threadIdx.x) % threads_per_row;
  const int slots = int(blockDim.x) / threads_per_row;
  const int64_t packs = dim / VEC;
  const int64_t first = int64_t(blockIdx.x) * rows_per_range;
  const int64_t last = first + rows_per_range < rows ? first + rows_per_range : rows;
  const P* wp = reinterpret_cast<const P*>(w);

  float acc[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[k][e] = 0.f;
  // Columns beyond the register cache (only with one slot per block) sum in the partial row.
  float* part = dw_partial != nullptr ? dw_partial + int64_t(blockIdx.x) * dim : nullptr;
  if (part != nullptr)
    for (int64_t p = lane + int64_t(K) * threads_per_row; p < packs; p += threads_per_row)
#pragma unroll
      for (int e = 0; e < VEC; ++e) part[p * VEC + e] = 0.f;

  for (int64_t base = first; base < last; base += slots) {
    const int64_t row = base + slot;
    const bool valid = row < last;
    const P* xr = reinterpret_cast<const P*>(x + (valid ? row : 0) * dim);
    const P* gr = reinterpret_cast<const P*>(dout + (valid ? row : 0) * dim);
    const float r = valid ? rstd[row] : 0.f;  // loaded early: its latency hides behind the row's
    P xc[K], gc[K];
    float dot = 0.f;  // dot(dout * w, x) over the row
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t p = lane + int64_t(k) * threads_per_row;
      if (valid && p < packs) {
        xc[k] = xr[p];
        gc[k] = gr[p];
        const P wk = wp[p];
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot += float(gc[k].v[e]) * float(wk.v[e]) * float(xc[k].v[e]);
      }
    }
    for (int64_t p = lane + int64_t(K) * threads_per_row; valid && p < packs;
         p += threads_per_row) {
      const P xp = xr[p], gp = gr[p], wk = wp[p];
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += float(gp.v[e]) * float(wk.v[e]) * float(xp.v[e]);
    }
    dot = rmsnorm_detail::slot_sum(dot, warp_sums, threads_per_row);
    if (!valid) continue;  // no barrier below until the next row

    const float coef = r * r * dot / float(dim);
    P* dxr = reinterpret_cast<P*>(dx + row * dim);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t p = lane + int64_t(k) * threads_per_row;
      if (p < packs) {
        const P wk = wp[p];
        P d;
        if (accumulate_dx) d = dxr[p];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float xv = float(xc[k].v[e]), gv = float(gc[k].v[e]);
          float v = r * (gv * float(wk.v[e]) - xv * coef);
          if (accumulate_dx) v += float(d.v[e]);
          d.v[e] = T(v);
          acc[k][e] += gv * xv * r;
        }
        dxr[p] = d;
      }
    }
    for (int64_t p = lane + int64_t(K) * threads_per_row; p < packs; p += threads_per_row) {
      const P xp = xr[p], gp = gr[p], wk = wp[p];
      P d;
      if (accumulate_dx) d = dxr[p];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float xv = float(xp.v[e]), gv = float(gp.v[e]);
        float v = r * (gv * float(wk.v[e]) - xv * coef);
        if (accumulate_dx) v += float(d.v[e]);
        d.v[e] = T(v);
        if (part != nullptr) part[p * VEC + e] += gv * xv * r;
      }
      dxr[p] = d;
    }
  }
  if (part == nullptr) return;  // uniform over the block

  // Add the slots' sums into slot 0 in slot order (a fixed order: deterministic).
  for (int s = 1; s < slots; ++s) {
    if (slot == s)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t p = lane + int64_t(k) * threads_per_row;
        if (p < packs)
#pragma unroll
          for (int e = 0; e < VEC; ++e) rmsnorm_dw_exchange[p * VEC + e] = acc[k][e];
      }
    __syncthreads();
    if (slot == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t p = lane + int64_t(k) * threads_per_row;
        if (p < packs)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[k][e] += rmsnorm_dw_exchange[p * VEC + e];
      }
    __syncthreads();
  }
  if (slot == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t p = lane + int64_t(k) * threads_per_row;
      if (p < packs)
#pragma unroll
        for (int e = 0; e < VEC; ++e) part[p * VEC + e] = acc[k][e];
    }
}

// dw[c] (=|+=) sum over parts of partial[part, c], in a fixed order. Block: 32 columns x 8 lanes.
template <class T>
__global__ void __launch_bounds__(256)
    rmsnorm_dw_reduce_kernel(T* dw, const float* partial, int64_t parts, int64_t dim,
                             bool accumulate) {
  __shared__ float sums[8][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (col < dim)
    for (int64_t p = threadIdx.y; p < parts; p += 8) s += partial[p * dim + col];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < dim) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) t += sums[i][threadIdx.x];
    dw[col] = T(accumulate ? float(dw[col]) + t : t);
  }
}

// out, x: [rows, dim]; w: [dim]; rstd: [rows] (fp32) or nullptr.
template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t rows, int64_t dim,
                     float eps, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "rmsnorm_forward on the GPU supports float and bf16");
  MIL_CHECK(rows >= 0 && dim > 0, "rmsnorm_forward: bad sizes rows=", rows, " dim=", dim);
  if (rows == 0) return;
  const bool packed = dim % kVec<T> == 0 && aligned16(out) && aligned16(x) && aligned16(w);
  const int vec = packed ? kVec<T> : 1;
  const auto geo = rmsnorm_detail::row_geometry(dim / vec, rmsnorm_detail::kForwardCached, 256);
  const int64_t grid = (rows + geo.rows_per_block - 1) / geo.rows_per_block;
  MIL_CHECK(grid <= INT32_MAX, "rmsnorm_forward: too many rows: ", rows);
  const dim3 block(unsigned(geo.threads_per_row * geo.rows_per_block));
  if (packed)
    rmsnorm_forward_kernel<T, kVec<T>><<<unsigned(grid), block, 0, stream>>>(
        out, rstd, x, w, rows, dim, geo.threads_per_row, eps);
  else
    rmsnorm_forward_kernel<T, 1><<<unsigned(grid), block, 0, stream>>>(out, rstd, x, w, rows, dim,
                                                                       geo.threads_per_row, eps);
  MIL_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

namespace rmsnorm_detail {

template <class T, int VEC>
void launch_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const float* rstd,
                     int64_t rows, int64_t dim, bool accumulate_dx, bool accumulate_dw,
                     cudaStream_t stream) {
  const auto geo = row_geometry(dim / VEC, kBackwardCached, 256);
  const int block = geo.threads_per_row * geo.rows_per_block;
  // With several slots per block every column is in registers (threads_per_row * K >= packs,
  // threads_per_row <= 128), so the exchange buffer holds at most 128 * 2 * 8 floats = 8 KiB.
  const size_t smem = dw != nullptr && geo.rows_per_block > 1 ? size_t(dim) * sizeof(float) : 0;
  int blocks_per_sm = 0;
  MIL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_sm, rmsnorm_backward_kernel<T, VEC>, block, smem));
  // One wave of resident blocks, each walking a contiguous range of rows.
  const int64_t target = int64_t(sm_count()) * std::max(1, blocks_per_sm);
  int64_t rows_per_range = (rows + target - 1) / target;
  rows_per_range =
      (rows_per_range + geo.rows_per_block - 1) / geo.rows_per_block * geo.rows_per_block;
  const int64_t grid = (rows + rows_per_range - 1) / rows_per_range;

  Tensor<float, Cuda> partial;
  if (dw != nullptr) {
    StreamScope scope(stream);
    partial = Tensor<float, Cuda>::empty(Shape{grid, dim});
  }
  rmsnorm_backward_kernel<T, VEC><<<unsigned(grid), unsigned(block), smem, stream>>>(
      dx, dw != nullptr ? partial.data() : nullptr, dout, x, w, rstd, rows, dim,
      geo.threads_per_row, rows_per_range, accumulate_dx);
  MIL_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  if (dw != nullptr) {
    rmsnorm_dw_reduce_kernel<T><<<unsigned((dim + 31) / 32), dim3(32, 8), 0, stream>>>(
        dw, partial.data(), grid, dim, accumulate_dw);
    MIL_CUDA_CHECK_LAUNCH("rmsnorm_dw_reduce_kernel");
  }
}

}  // namespace rmsnorm_detail

// rstd is the forward's (required). dw may be nullptr (frozen weight: no weight-gradient work).
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t rows, int64_t dim, bool accumulate_dx, bool accumulate_dw,
                      cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "rmsnorm_backward on the GPU supports float and bf16");
  MIL_CHECK(rows >= 0 && dim > 0, "rmsnorm_backward: bad sizes rows=", rows, " dim=", dim);
  MIL_CHECK(rstd != nullptr || rows == 0,
            "rmsnorm_backward: rstd from the forward pass is required");
  if (rows == 0) {
    if (dw != nullptr && !accumulate_dw)
      MIL_CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(dim) * sizeof(T), stream));  // 0.0 in both types
    return;
  }
  const bool packed =
      dim % kVec<T> == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(w);
  if (packed)
    rmsnorm_detail::launch_backward<T, kVec<T>>(dx, dw, dout, x, w, rstd, rows, dim,
                                                accumulate_dx, accumulate_dw, stream);
  else
    rmsnorm_detail::launch_backward<T, 1>(dx, dw, dout, x, w, rstd, rows, dim, accumulate_dx,
                                          accumulate_dw, stream);
}

}  // namespace mil::cuda
