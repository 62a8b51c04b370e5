#pragma once
// Causal depthwise conv1d on the GPU (contract and CPU reference in conv1d.hpp; T = float or
// bf16, fp32 math).
//
// Forward: a thread owns VEC consecutive channels (one 16-byte pack when sizes and pointers allow)
// and a run of kRun tokens of one sequence, keeping the last K inputs in registers as a sliding
// window; the K - 1 inputs before its run come from x (or, before the sequence start, from the
// ring). The kernel width is a template (K = 4: fully unrolled); other widths up to 8 take a
// generic path with a runtime width and one-element packs.
// Ring: the forward reads the inputs before a call from the ring and never writes them while any
// thread may still read. When a sequence fits in one run (seq <= kRun: decode steps, speculative
// verification) the thread that read a channel's history also stores its new inputs afterwards,
// so a decode step is one launch of one thread per (batch row, pack). Longer calls store the ring
// in a second launch.
// Backward: the same runs; a thread recomputes the pre-activation over its run plus K - 1 tokens
// (the outputs its inputs feed), writes dx, and sums dw and dbias over its run in registers. The
// sums are reduced deterministically: the row lanes of a block through shared memory in a fixed
// order into one fp32 partial per block row, then a second kernel adds the partials in order.
//
// Slots and positions live on the device and are not validated on the host: a batch row whose
// slot is out of range reads zeros as history and stores nothing; positions < 0 read as zeros and
// are not stored. Two batch rows must not share a slot within one call.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/conv1d.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
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
#include "conv1d.hpp"

namespace mil::cuda {
namespace conv1d_detail {

constexpr int kRun = 16;       // tokens per thread
constexpr int kThreads = 256;  // per block
constexpr int kMaxKernel = 8;
// Register window length: the kernel width, or the largest width for the generic path (KT = 0).
template <int KT> constexpr int kWin = KT > 0 ? KT : kMaxKernel;

// Conv1dShape with strides resolved (its accessors are host-only).
struct Geo {
  int64_t batch, seq, channels, kernel, xs, ys, runs_per_seq;
  bool silu;
};
inline Geo geo_of(const Conv1dShape& s) {
  return {s.batch, s.seq, s.channels, s.kernel, s.xs(), s.ys(), (s.seq + kRun - 1) / kRun, s.silu};
}

template <class T>
struct Ring {
  T* data;
  int64_t len, n_slots;
  const int32_t* slots;
  const int32_t* positions;
};

template <class T, int VEC>
__device__ __forceinline__ void load_pack(const T* p, float (&f)[VEC]) {
  const Pack<T, VEC> v = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int e = 0; e < VEC; ++e) f[e] = to_float(v.v[e]);
}

template <class T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const float (&f)[VEC]) {
  Pack<T, VEC> v;
#pragma unroll
  for (int e = 0; e < VEC; ++e) v.v[e] = from_float<T>(f[e]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace conv1d_detail

// Block (x: packs of channels, y: runs). Thread: channels [c, c + VEC), runs of kRun tokens.
// ring_inline: every sequence is a single run; the thread stores its channels' new inputs into
// the ring after reading the history.
template <class T, int VEC, int KT>
__global__ void __launch_bounds__(conv1d_detail::kThreads)
    conv1d_forward_kernel(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ w,
                          const T* __restrict__ bias, const conv1d_detail::Geo g,
                          const conv1d_detail::Ring<T> ring, bool ring_inline) {
  using namespace conv1d_detail;
  constexpr int W = kWin<KT>;
  const int K = KT > 0 ? KT : int(g.kernel);
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c >= g.channels) return;  // no barrier in this kernel
  // wr[j] multiplies x(t - j): the taps reversed, zero beyond the width.
  float wr[W][VEC], bv[VEC];
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) wr[j][e] = j < K ? to_float(w[(c + e) * K + (K - 1 - j)]) : 0.f;
#pragma unroll
  for (int e = 0; e < VEC; ++e) bv[e] = bias != nullptr ? to_float(bias[c + e]) : 0.f;

  const int64_t runs = g.batch * g.runs_per_seq;
  for (int64_t run = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; run < runs;
       run += int64_t(gridDim.y) * blockDim.y) {
    const int64_t b = run / g.runs_per_seq, t0 = run % g.runs_per_seq * kRun;
    const int64_t t1 = t0 + kRun < g.seq ? t0 + kRun : g.seq;
    const T* xb = x + b * g.seq * g.xs + c;
    T* hist = nullptr;  // this row's slot in the ring
    int64_t start = 0;
    if (ring.data != nullptr) {
      const int64_t slot = ring.slots[b];
      start = ring.positions[b];
      if (slot >= 0 && slot < ring.n_slots) hist = ring.data + slot * ring.len * g.channels + c;
    }
    // The window as of token t0 - 1: xw[j] = x(t0 - 1 - j) for j < K - 1.
    float xw[W][VEC];
#pragma unroll
    for (int j = 0; j < W; ++j) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) xw[j][e] = 0.f;
      const int64_t t = t0 - 1 - j;
      if (j < K - 1) {
        if (t >= 0) {
          load_pack<T, VEC>(xb + t * g.xs, xw[j]);
        } else if (hist != nullptr && start + t >= 0) {
          load_pack<T, VEC>(hist + (start + t) % ring.len * g.channels, xw[j]);
        }
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
#pragma unroll
      for (int j = W - 1; j > 0; --j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) xw[j][e] = xw[j - 1][e];
      load_pack<T, VEC>(xb + t * g.xs, xw[0]);
      float o[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float a = bv[e];
#pragma unroll
        for (int j = 0; j < W; ++j)
          if (KT > 0 || j < K) a += wr[j][e] * xw[j][e];
        o[e] = g.silu ? a * fast_sigmoid(a) : a;
      }
      store_pack<T, VEC>(y + (b * g.seq + t) * g.ys + c, o);
    }
    if (ring_inline && hist != nullptr) {
      // Every read of this slot's rows for these channels is done (this thread made them all).
      for (int64_t t = g.seq > ring.len ? g.seq - ring.len : 0; t < g.seq; ++t) {
        if (start + t < 0) continue;
        *reinterpret_cast<Pack<T, VEC>*>(hist + (start + t) % ring.len * g.channels) =
            *reinterpret_cast<const Pack<T, VEC>*>(xb + t * g.xs);
      }
    }
  }
}

// The last min(seq, len) inputs of every batch row into its ring slot (after the forward kernel).
template <class T>
__global__ void conv1d_ring_store_kernel(const T* __restrict__ x, const conv1d_detail::Geo g,
                                         const conv1d_detail::Ring<T> ring) {
  const int64_t keep = g.seq < ring.len ? g.seq : ring.len;
  const int64_t n = g.batch * keep * g.channels;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % g.channels, k = i / g.channels % keep, b = i / (g.channels * keep);
    const int64_t t = g.seq - keep + k;
    const int64_t slot = ring.slots[b], p = ring.positions[b] + t;
    if (slot < 0 || slot >= ring.n_slots || p < 0) continue;
    ring.data[(slot * ring.len + p % ring.len) * g.channels + c] = x[(b * g.seq + t) * g.xs + c];
  }
}

// Block (x: packs of channels, y: run lanes); dynamic shared memory blockDim.y * (K + 1) *
// blockDim.x * VEC floats when part is not null. Block row blockIdx.y writes its dw (taps 0..K-1)
// and dbias (K) sums to part[(blockIdx.y * (K + 1) + k) * channels + c].
template <class T, int VEC, int KT>
__global__ void __launch_bounds__(conv1d_detail::kThreads)
    conv1d_backward_kernel(T* __restrict__ dx, float* __restrict__ part, const T* __restrict__ dy,
                           const T* __restrict__ x, const T* __restrict__ w,
                           const T* __restrict__ bias, const conv1d_detail::Geo g,
                           bool accumulate_dx) {
  using namespace conv1d_detail;
  constexpr int W = kWin<KT>;
  extern __shared__ float conv1d_red[];
  const int K = KT > 0 ? KT : int(g.kernel);
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + tx) * VEC;
  const bool active = c < g.channels;  // inactive threads still join the block reduction
  // wf[j] = w[j] (feeds dx), wr[j] = w[K - 1 - j] (pre-activation); zero beyond the width.
  float wf[W][VEC], wr[W][VEC], bv[VEC];
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      wf[j][e] = active && j < K ? to_float(w[(c + e) * K + j]) : 0.f;
      if constexpr (KT == 0) wr[j][e] = active && j < K ? to_float(w[(c + e) * K + (K - 1 - j)]) : 0.f;
    }
#pragma unroll
  for (int e = 0; e < VEC; ++e) bv[e] = active && bias != nullptr ? to_float(bias[c + e]) : 0.f;
  auto w_rev = [&](int j, int e) -> float {
    if constexpr (KT > 0) return wf[KT - 1 - j][e];
    else return wr[j][e];
  };

  float dwr[W][VEC], db[VEC];  // dwr[j]: sum of da(t) x(t - j)
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    db[e] = 0.f;
#pragma unroll
    for (int j = 0; j < W; ++j) dwr[j][e] = 0.f;
  }
  const int64_t runs = g.batch * g.runs_per_seq;
  for (int64_t run = int64_t(blockIdx.y) * blockDim.y + ty; active && run < runs;
       run += int64_t(gridDim.y) * blockDim.y) {
    const int64_t b = run / g.runs_per_seq, t0 = run % g.runs_per_seq * kRun;
    const int64_t t1 = t0 + kRun < g.seq ? t0 + kRun : g.seq;
    const T* xb = x + b * g.seq * g.xs + c;
    const T* gb = dy + b * g.seq * g.ys + c;
    T* dxb = dx + b * g.seq * g.xs + c;
    float xw[W][VEC], daw[W][VEC];  // x(tau - j), da(tau - j)
#pragma unroll
    for (int j = 0; j < W; ++j) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) xw[j][e] = daw[j][e] = 0.f;
      if (j < K - 1 && t0 - 1 - j >= 0) load_pack<T, VEC>(xb + (t0 - 1 - j) * g.xs, xw[j]);
    }
    // Tokens past the run (up to K - 1) only complete dx of the run's last tokens.
    for (int64_t tau = t0; tau < t1 + K - 1; ++tau) {
#pragma unroll
      for (int j = W - 1; j > 0; --j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          xw[j][e] = xw[j - 1][e];
          daw[j][e] = daw[j - 1][e];
        }
      if (tau < g.seq) {
        load_pack<T, VEC>(xb + tau * g.xs, xw[0]);
        float go[VEC];
        load_pack<T, VEC>(gb + tau * g.ys, go);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          float d = go[e];
          if (g.silu) {
            float a = bv[e];
#pragma unroll
            for (int j = 0; j < W; ++j)
              if (KT > 0 || j < K) a += w_rev(j, e) * xw[j][e];
            const float s = fast_sigmoid(a);
            d *= s * (1.f + a * (1.f - s));
          }
          daw[0][e] = d;
        }
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) xw[0][e] = daw[0][e] = 0.f;
      }
      if (tau < t1) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          db[e] += daw[0][e];
#pragma unroll
          for (int j = 0; j < W; ++j)
            if (KT > 0 || j < K) dwr[j][e] += daw[0][e] * xw[j][e];
        }
      }
      if (tau >= t0 + K - 1) {  // dx(t) = sum_j w[j] da(t + K - 1 - j), t = tau - (K - 1)
        const int64_t t = tau - (K - 1);
        float d[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          d[e] = 0.f;
#pragma unroll
          for (int j = 0; j < W; ++j)
            if (KT > 0 || j < K) d[e] += wf[j][e] * daw[j][e];
        }
        if (dx != nullptr) {
          if (accumulate_dx) {
            float old[VEC];
            load_pack<T, VEC>(dxb + t * g.xs, old);
#pragma unroll
            for (int e = 0; e < VEC; ++e) d[e] += old[e];
          }
          store_pack<T, VEC>(dxb + t * g.xs, d);
        }
      }
    }
  }
  if (part == nullptr) return;  // uniform over the block

  // Row lanes' sums in shared memory: conv1d_red[(ty * (K + 1) + k) * width + tx * VEC + e].
  const int width = int(blockDim.x) * VEC;
#pragma unroll
  for (int j = 0; j < W; ++j)
    if (j < K)
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        conv1d_red[(ty * (K + 1) + (K - 1 - j)) * width + tx * VEC + e] = dwr[j][e];
#pragma unroll
  for (int e = 0; e < VEC; ++e) conv1d_red[(ty * (K + 1) + K) * width + tx * VEC + e] = db[e];
  __syncthreads();
  const int n = (K + 1) * width, lanes = int(blockDim.y);
  for (int i = ty * int(blockDim.x) + tx; i < n; i += int(blockDim.x) * lanes) {
    const int k = i / width, col = i % width;
    const int64_t cc = int64_t(blockIdx.x) * width + col;
    if (cc >= g.channels) continue;
    float s = 0.f;
    for (int l = 0; l < lanes; ++l) s += conv1d_red[(l * (K + 1) + k) * width + col];
    part[(int64_t(blockIdx.y) * (K + 1) + k) * g.channels + cc] = s;
  }
}

// dw[c, k] and dbias[c] (=|+=) the sums over parts in order; either may be null.
template <class T>
__global__ void conv1d_param_reduce_kernel(T* __restrict__ dw, T* __restrict__ dbias,
                                           const float* __restrict__ part, int64_t parts,
                                           int64_t channels, int K, bool accumulate) {
  const int64_t n = (K + 1) * channels;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / channels, c = i % channels;
    T* dst = k < K ? (dw != nullptr ? dw + c * K + k : nullptr) : dbias != nullptr ? dbias + c : nullptr;
    if (dst == nullptr) continue;
    float s = 0.f;
    for (int64_t p = 0; p < parts; ++p) s += part[(p * (K + 1) + k) * channels + c];
    store_or_add(dst, s, accumulate);
  }
}

namespace conv1d_detail {

// Calls f(std::integral_constant<int, VEC>{}, std::integral_constant<int, KT>{}) for the
// compiled combinations: width 4 with `vec` or one-element packs, other widths generic.
template <int VEC, class F>
void dispatch(int64_t kernel, bool packed, F&& f) {
  if (kernel == 4) {
    if (packed) return f(std::integral_constant<int, VEC>{}, std::integral_constant<int, 4>{});
    return f(std::integral_constant<int, 1>{}, std::integral_constant<int, 4>{});
  }
  return f(std::integral_constant<int, 1>{}, std::integral_constant<int, 0>{});
}

inline void check_grid(const char* op, const Conv1dShape& s) {
  MIL_CHECK(s.batch * ((s.seq + kRun - 1) / kRun) < (int64_t(1) << 40) &&
                s.channels < (int64_t(1) << 31),
            op, " (CUDA): sizes too large");
}

}  // namespace conv1d_detail

// y: rows of y_stride, x: rows of x_stride ([batch * seq] rows); w: [channels, kernel]; bias may be
// null. ring: see conv1d.hpp; its slots and positions are device arrays.
template <class T>
void conv1d_forward(T* y, const T* x, const T* w, const T* bias, const Conv1dShape& s,
                    const Conv1dRing<T>& ring, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "conv1d_forward on the GPU supports float and bf16");
  using namespace conv1d_detail;
  conv1d_check("conv1d_forward", s, ring);
  check_grid("conv1d_forward", s);
  if (s.batch == 0 || s.seq == 0) return;
  constexpr int V = kVec<T>;
  const bool packed = s.channels % V == 0 && s.xs() % V == 0 && s.ys() % V == 0 &&
                      aligned16(x) && aligned16(y) && (!ring.active() || aligned16(ring.data));
  const Geo g = geo_of(s);
  const Ring<T> r{ring.data, ring.len, ring.n_slots, ring.slots, ring.positions};
  const bool inline_ring = ring.active() && g.runs_per_seq == 1;
  dispatch<V>(s.kernel, packed, [&](auto vec, auto kt) {
    constexpr int VEC = decltype(vec)::value, KT = decltype(kt)::value;
    const int64_t packs = s.channels / VEC, runs = s.batch * g.runs_per_seq;
    // Few runs (decode): the block spans channels; many: 8 (or 32) packs x row lanes.
    int lanes = 1;
    while (lanes * 2 <= runs && lanes < (VEC > 1 ? 32 : 8)) lanes *= 2;
    const int px = kThreads / lanes;
    const int64_t grid_x = (packs + px - 1) / px;
    const int64_t grid_y = std::min<int64_t>((runs + lanes - 1) / lanes, 65535);
    conv1d_forward_kernel<T, VEC, KT>
        <<<dim3(unsigned(grid_x), unsigned(grid_y)), dim3(unsigned(px), unsigned(lanes)), 0,
           stream>>>(y, x, w, bias, g, r, inline_ring);
    MIL_CUDA_CHECK_LAUNCH("conv1d_forward_kernel");
  });
  if (ring.active() && !inline_ring) {
    const int64_t n = s.batch * std::min(s.seq, ring.len) * s.channels;
    const unsigned grid = grid_stride_blocks(n, 256);
    conv1d_ring_store_kernel<T><<<grid, 256, 0, stream>>>(x, g, r);
    MIL_CUDA_CHECK_LAUNCH("conv1d_ring_store_kernel");
  }
}

template <class T>
void conv1d_forward(T* y, const T* x, const T* w, const T* bias, const Conv1dShape& s,
                    cudaStream_t stream) {
  conv1d_forward(y, x, w, bias, s, Conv1dRing<T>{}, stream);
}

// dx uses x's stride and dy y's (dx may be null: no input gradient). dw and dbias may be null
// (frozen); accumulate_dw covers both.
template <class T>
void conv1d_backward(T* dx, T* dw, T* dbias, const T* dy, const T* x, const T* w, const T* bias,
                     const Conv1dShape& s, bool accumulate_dx, bool accumulate_dw,
                     cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "conv1d_backward on the GPU supports float and bf16");
  using namespace conv1d_detail;
  conv1d_check("conv1d_backward", s, Conv1dRing<T>{});
  check_grid("conv1d_backward", s);
  const bool params = dw != nullptr || dbias != nullptr;
  if (s.batch == 0 || s.seq == 0) {  // sums over no tokens
    if (!accumulate_dw) {
      if (dw != nullptr)
        MIL_CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(s.channels * s.kernel) * sizeof(T), stream));
      if (dbias != nullptr)
        MIL_CUDA_CHECK(cudaMemsetAsync(dbias, 0, size_t(s.channels) * sizeof(T), stream));
    }
    return;
  }
  if (dx == nullptr && !params) return;
  // Four channels per thread: the registers of two windows, the taps and the dw sums stay small.
  constexpr int V = 4;
  const bool packed = s.channels % V == 0 && s.xs() % V == 0 && s.ys() % V == 0 &&
                      aligned_to(x, V * sizeof(T)) && aligned_to(dy, V * sizeof(T)) &&
                      (dx == nullptr || aligned_to(dx, V * sizeof(T)));
  const Geo g = geo_of(s);
  dispatch<V>(s.kernel, packed, [&](auto vec, auto kt) {
    constexpr int VEC = decltype(vec)::value, KT = decltype(kt)::value;
    const int px = VEC > 1 ? 8 : 32, lanes = kThreads / px;
    const int64_t packs = s.channels / VEC, runs = s.batch * g.runs_per_seq;
    const int64_t grid_x = (packs + px - 1) / px;
    // Enough block rows to fill the GPU a few times over; each walks a fixed set of runs.
    const int64_t want = std::max<int64_t>(1, 4 * sm_count() / grid_x);
    const int64_t grid_y = std::clamp<int64_t>((runs + lanes - 1) / lanes, 1, std::min<int64_t>(want, 1024));
    const size_t smem = params ? size_t(lanes) * size_t(s.kernel + 1) * size_t(px * VEC) * sizeof(float) : 0;
    StreamScope scope(stream);
    Tensor<float, Cuda> part;
    if (params) part = Tensor<float, Cuda>::empty(Shape{grid_y * (s.kernel + 1) * s.channels});
    conv1d_backward_kernel<T, VEC, KT>
        <<<dim3(unsigned(grid_x), unsigned(grid_y)), dim3(unsigned(px), unsigned(lanes)), smem,
           stream>>>(dx, params ? part.data() : nullptr, dy, x, w, bias, g, accumulate_dx);
    MIL_CUDA_CHECK_LAUNCH("conv1d_backward_kernel");
    if (params) {
      const int64_t n = (s.kernel + 1) * s.channels;
      conv1d_param_reduce_kernel<T><<<unsigned(std::min<int64_t>((n + 255) / 256, 65535)), 256, 0,
                                      stream>>>(dw, dbias, part.data(), grid_y, s.channels,
                                                int(s.kernel), accumulate_dw);
      MIL_CUDA_CHECK_LAUNCH("conv1d_param_reduce_kernel");
    }
  });
}

}  // namespace mil::cuda
