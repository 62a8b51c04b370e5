#pragma once
// Gated grouped RMSNorm on the GPU (contract and CPU reference in gated_rmsnorm.hpp; T = float or
// bf16, fp32 math, rstd fp32).
//
// Forward and the dx/dz part of the backward: a "slot" of tpg lanes (a power of two <= 32, so a
// slot sits inside one warp) handles one (row, group): a first loop over the group's packs
// reduces the sum of squares (forward) or dot(dout * w, v) (backward) over the slot with xor
// shuffles, a second loop re-reads the group (L1 hits: it was just read) and writes the outputs.
// dw is a column sum over rows: a second kernel walks column packs over fixed row ranges, each
// block writes one fp32 partial row, and a reduction adds the partial rows in a fixed order
// (bitwise reproducible on a given GPU: the number of row ranges follows the SM count).
// Groups whose size, strides or pointers do not allow 16-byte packs use one-element packs.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/gated_rmsnorm.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/math.hpp"
#include "../core/tensor.hpp"
#include "gated_rmsnorm.hpp"

namespace mil::cuda {
namespace gated_norm_detail {

constexpr int kThreads = 256;
constexpr int kDwCols = 32;  // column packs per dw block
constexpr int kDwRows = 8;   // row walkers per dw block

// Sum over the tpg lanes of a slot (every lane gets it); all lanes of the warp must call it.
__device__ __forceinline__ float slot_sum(float v, int tpg) {
  for (int o = tpg >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p <<= 1;
  return p;
}

}  // namespace gated_norm_detail

// One slot of tpg lanes per (row, group); blocks of kThreads.
template <class T, int VEC>
__global__ void __launch_bounds__(gated_norm_detail::kThreads)
    gated_rmsnorm_forward_kernel(T* __restrict__ out, float* __restrict__ rstd,
                                 const T* __restrict__ x, const T* __restrict__ z,
                                 const T* __restrict__ w, int64_t rows, int64_t dim,
                                 int64_t group_size, int64_t z_stride, int tpg, float eps) {
  using P = Pack<T, VEC>;
  const int slot = int(threadIdx.x) / tpg, lane = int(threadIdx.x) % tpg;
  const int64_t groups = dim / group_size, packs = group_size / VEC;
  const int64_t item = int64_t(blockIdx.x) * (blockDim.x / tpg) + slot;
  const bool valid = item < rows * groups;
  const int64_t r = valid ? item / groups : 0, g = valid ? item % groups : 0;
  const P* xr = reinterpret_cast<const P*>(x + r * dim + g * group_size);
  const P* zr = reinterpret_cast<const P*>(z + r * z_stride + g * group_size);
  float ss = 0.f;
  for (int64_t p = lane; valid && p < packs; p += tpg) {
    const P xv = xr[p], zv = zr[p];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float zf = to_float(zv.v[e]);
      const float v = to_float(xv.v[e]) * zf * fast_sigmoid(zf);
      ss += v * v;
    }
  }
  ss = gated_norm_detail::slot_sum(ss, tpg);
  if (!valid) return;  // after the shuffles
  const float rs = 1.f / sqrtf(ss / float(group_size) + eps);
  if (rstd != nullptr && lane == 0) rstd[item] = rs;  // item = r * groups + g
  const P* wg = reinterpret_cast<const P*>(w + g * group_size);
  P* outr = reinterpret_cast<P*>(out + r * dim + g * group_size);
  for (int64_t p = lane; p < packs; p += tpg) {
    const P xv = xr[p], zv = zr[p], wv = wg[p];
    P o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float zf = to_float(zv.v[e]);
      const float v = to_float(xv.v[e]) * zf * fast_sigmoid(zf);
      o.v[e] = from_float<T>(v * rs * to_float(wv.v[e]));
    }
    outr[p] = o;
  }
}

// dx (packed like x) and dz (z's stride), either may be null; one slot per (row, group).
template <class T, int VEC>
__global__ void __launch_bounds__(gated_norm_detail::kThreads)
    gated_rmsnorm_backward_kernel(T* __restrict__ dx, T* __restrict__ dz,
                                  const T* __restrict__ dout, const T* __restrict__ x,
                                  const T* __restrict__ z, const T* __restrict__ w,
                                  const float* __restrict__ rstd, int64_t rows, int64_t dim,
                                  int64_t group_size, int64_t z_stride, int tpg, bool accumulate) {
  using P = Pack<T, VEC>;
  const int slot = int(threadIdx.x) / tpg, lane = int(threadIdx.x) % tpg;
  const int64_t groups = dim / group_size, packs = group_size / VEC;
  const int64_t item = int64_t(blockIdx.x) * (blockDim.x / tpg) + slot;
  const bool valid = item < rows * groups;
  const int64_t r = valid ? item / groups : 0, g = valid ? item % groups : 0;
  const int64_t xo = r * dim + g * group_size, zo = r * z_stride + g * group_size;
  const P* xr = reinterpret_cast<const P*>(x + xo);
  const P* zr = reinterpret_cast<const P*>(z + zo);
  const P* gr = reinterpret_cast<const P*>(dout + xo);
  const P* wg = reinterpret_cast<const P*>(w + g * group_size);
  const float rs = valid ? rstd[item] : 0.f;
  float dot = 0.f;
  for (int64_t p = lane; valid && p < packs; p += tpg) {
    const P xv = xr[p], zv = zr[p], gv = gr[p], wv = wg[p];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float zf = to_float(zv.v[e]);
      const float v = to_float(xv.v[e]) * zf * fast_sigmoid(zf);
      dot += to_float(gv.v[e]) * to_float(wv.v[e]) * v;
    }
  }
  dot = gated_norm_detail::slot_sum(dot, tpg);
  if (!valid) return;
  const float coef = rs * rs * dot / float(group_size);
  P* dxr = dx != nullptr ? reinterpret_cast<P*>(dx + xo) : nullptr;
  P* dzr = dz != nullptr ? reinterpret_cast<P*>(dz + zo) : nullptr;
  for (int64_t p = lane; p < packs; p += tpg) {
    const P xv = xr[p], zv = zr[p], gv = gr[p], wv = wg[p];
    P ox, oz;
    if (accumulate && dxr != nullptr) ox = dxr[p];
    if (accumulate && dzr != nullptr) oz = dzr[p];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float zf = to_float(zv.v[e]), xf = to_float(xv.v[e]);
      const float sg = fast_sigmoid(zf), v = xf * zf * sg;
      const float dv = rs * (to_float(gv.v[e]) * to_float(wv.v[e]) - v * coef);
      float vx = dv * zf * sg;
      float vz = dv * xf * sg * (1.f + zf * (1.f - sg));
      if (accumulate) {
        if (dxr != nullptr) vx += to_float(ox.v[e]);
        if (dzr != nullptr) vz += to_float(oz.v[e]);
      }
      ox.v[e] = from_float<T>(vx);
      oz.v[e] = from_float<T>(vz);
    }
    if (dxr != nullptr) dxr[p] = ox;
    if (dzr != nullptr) dzr[p] = oz;
  }
}

// Block (kDwCols, kDwRows): column pack blockIdx.x * kDwCols + x over rows [blockIdx.y *
// rows_per_range, ...) walked by the kDwRows row lanes; writes the block's column sums of
// dout * v * rstd to partial[blockIdx.y * dim ...].
template <class T, int VEC>
__global__ void __launch_bounds__(gated_norm_detail::kDwCols* gated_norm_detail::kDwRows)
    gated_rmsnorm_dw_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                            const T* __restrict__ x, const T* __restrict__ z,
                            const float* __restrict__ rstd, int64_t rows, int64_t dim,
                            int64_t group_size, int64_t z_stride, int64_t rows_per_range) {
  using P = Pack<T, VEC>;
  using namespace gated_norm_detail;
  __shared__ float sums[kDwRows][kDwCols * VEC];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t p = int64_t(blockIdx.x) * kDwCols + tx, packs = dim / VEC;
  const int64_t groups = dim / group_size, g = p * VEC / group_size;
  const int64_t first = int64_t(blockIdx.y) * rows_per_range;
  const int64_t last = std::min(first + rows_per_range, rows);
  float acc[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
  if (p < packs)
    for (int64_t r = first + ty; r < last; r += kDwRows) {
      const P xv = *reinterpret_cast<const P*>(x + r * dim + p * VEC);
      const P zv = *reinterpret_cast<const P*>(z + r * z_stride + p * VEC);
      const P gv = *reinterpret_cast<const P*>(dout + r * dim + p * VEC);
      const float rs = rstd[r * groups + g];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float zf = to_float(zv.v[e]);
        acc[e] += to_float(gv.v[e]) * to_float(xv.v[e]) * zf * fast_sigmoid(zf) * rs;
      }
    }
#pragma unroll
  for (int e = 0; e < VEC; ++e) sums[ty][tx * VEC + e] = acc[e];
  __syncthreads();
  // Row lanes added in a fixed order.
  for (int i = ty * kDwCols + tx; i < kDwCols * VEC; i += kDwCols * kDwRows) {
    const int64_t col = int64_t(blockIdx.x) * kDwCols * VEC + i;
    if (col >= dim) continue;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kDwRows; ++k) s += sums[k][i];
    partial[int64_t(blockIdx.y) * dim + col] = s;
  }
}

// dw[c] (=|+=) the sum over parts of partial[part, c], in part order.
template <class T>
__global__ void gated_rmsnorm_dw_reduce_kernel(T* __restrict__ dw, const float* __restrict__ partial,
                                               int64_t parts, int64_t dim, bool accumulate) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= dim) return;
  float s = 0.f;
  for (int64_t k = 0; k < parts; ++k) s += partial[k * dim + col];
  dw[col] = from_float<T>(accumulate ? to_float(dw[col]) + s : s);
}

// out, x: [rows, dim] packed; z: rows of z_stride; w: [dim]; rstd: [rows, dim / group_size] fp32
// or null.
template <class T>
void gated_rmsnorm_forward(T* out, float* rstd, const T* x, const T* z, const T* w,
                           const GatedNormShape& s, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "gated_rmsnorm_forward on the GPU supports float and bf16");
  using namespace gated_norm_detail;
  gated_rmsnorm_check("gated_rmsnorm_forward", s);
  if (s.rows == 0) return;
  constexpr int V = kVec<T>;
  const bool packed = s.group_size % V == 0 && s.zs() % V == 0 && aligned16(out) &&
                      aligned16(x) && aligned16(z) && aligned16(w);
  const int vec = packed ? V : 1;
  const int tpg = pow2_at_least(s.group_size / vec, 32);
  const int64_t items = s.rows * s.groups(), per_block = kThreads / tpg;
  const int64_t grid = (items + per_block - 1) / per_block;
  MIL_CHECK(grid <= INT32_MAX, "gated_rmsnorm_forward: too many rows: ", s.rows);
  if (packed)
    gated_rmsnorm_forward_kernel<T, V><<<unsigned(grid), kThreads, 0, stream>>>(
        out, rstd, x, z, w, s.rows, s.dim, s.group_size, s.zs(), tpg, s.eps);
  else
    gated_rmsnorm_forward_kernel<T, 1><<<unsigned(grid), kThreads, 0, stream>>>(
        out, rstd, x, z, w, s.rows, s.dim, s.group_size, s.zs(), tpg, s.eps);
  MIL_CUDA_CHECK_LAUNCH("gated_rmsnorm_forward_kernel");
}

namespace gated_norm_detail {

template <class T, int VEC>
void launch_dw(T* dw, const T* dout, const T* x, const T* z, const float* rstd,
               const GatedNormShape& s, bool accumulate, cudaStream_t stream) {
  const int64_t packs = s.dim / VEC;
  const int64_t grid_x = (packs + kDwCols - 1) / kDwCols;
  // About two blocks per SM in all, each over a contiguous range of rows.
  const int64_t target = std::max<int64_t>(1, 2 * sm_count() / grid_x);
  const int64_t ranges = std::clamp<int64_t>((s.rows + kDwRows - 1) / kDwRows, 1, std::min<int64_t>(target, 65535));
  const int64_t rows_per_range = (s.rows + ranges - 1) / ranges;
  const int64_t grid_y = (s.rows + rows_per_range - 1) / rows_per_range;
  MIL_CHECK(grid_x <= INT32_MAX, "gated_rmsnorm_backward: dim too large: ", s.dim);
  StreamScope scope(stream);
  auto partial = Tensor<float, Cuda>::empty(Shape{grid_y * s.dim});
  gated_rmsnorm_dw_kernel<T, VEC><<<dim3(unsigned(grid_x), unsigned(grid_y)),
                                    dim3(kDwCols, kDwRows), 0, stream>>>(
      partial.data(), dout, x, z, rstd, s.rows, s.dim, s.group_size, s.zs(), rows_per_range);
  MIL_CUDA_CHECK_LAUNCH("gated_rmsnorm_dw_kernel");
  gated_rmsnorm_dw_reduce_kernel<T><<<unsigned((s.dim + 255) / 256), 256, 0, stream>>>(
      dw, partial.data(), grid_y, s.dim, accumulate);
  MIL_CUDA_CHECK_LAUNCH("gated_rmsnorm_dw_reduce_kernel");
}

}  // namespace gated_norm_detail

// dx (packed like x) and dz (z's stride) take accumulate_inputs and may be null; dw may be null
// (frozen weight) and takes accumulate_dw. rstd is the forward's (required).
template <class T>
void gated_rmsnorm_backward(T* dx, T* dz, T* dw, const T* dout, const T* x, const T* z, const T* w,
                            const float* rstd, const GatedNormShape& s, bool accumulate_inputs,
                            bool accumulate_dw, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "gated_rmsnorm_backward on the GPU supports float and bf16");
  using namespace gated_norm_detail;
  gated_rmsnorm_check("gated_rmsnorm_backward", s);
  MIL_CHECK(rstd != nullptr || s.rows == 0,
            "gated_rmsnorm_backward: rstd from the forward is required");
  if (s.rows == 0) {
    if (dw != nullptr && !accumulate_dw)
      MIL_CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(s.dim) * sizeof(T), stream));  // 0.0 in both types
    return;
  }
  constexpr int V = kVec<T>;
  const bool packed = s.group_size % V == 0 && s.zs() % V == 0 && aligned16(x) && aligned16(z) &&
                      aligned16(w) && aligned16(dout) && (dx == nullptr || aligned16(dx)) &&
                      (dz == nullptr || aligned16(dz));
  const int vec = packed ? V : 1;
  if (dx != nullptr || dz != nullptr) {
    const int tpg = pow2_at_least(s.group_size / vec, 32);
    const int64_t items = s.rows * s.groups(), per_block = kThreads / tpg;
    const int64_t grid = (items + per_block - 1) / per_block;
    MIL_CHECK(grid <= INT32_MAX, "gated_rmsnorm_backward: too many rows: ", s.rows);
    if (packed)
      gated_rmsnorm_backward_kernel<T, V><<<unsigned(grid), kThreads, 0, stream>>>(
          dx, dz, dout, x, z, w, rstd, s.rows, s.dim, s.group_size, s.zs(), tpg,
          accumulate_inputs);
    else
      gated_rmsnorm_backward_kernel<T, 1><<<unsigned(grid), kThreads, 0, stream>>>(
          dx, dz, dout, x, z, w, rstd, s.rows, s.dim, s.group_size, s.zs(), tpg,
          accumulate_inputs);
    MIL_CUDA_CHECK_LAUNCH("gated_rmsnorm_backward_kernel");
  }
  if (dw != nullptr) {
    if (packed) launch_dw<T, V>(dw, dout, x, z, rstd, s, accumulate_dw, stream);
    else launch_dw<T, 1>(dw, dout, x, z, rstd, s, accumulate_dw, stream);
  }
}

}  // namespace mil::cuda
