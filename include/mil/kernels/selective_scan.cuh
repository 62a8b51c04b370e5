#pragma once
// The Mamba-1 selective scan on the GPU (contract and CPU reference in selective_scan.hpp). T =
// float or bf16 at the interface, fp32 math and states; d_state = 16 (others throw).
//
// Work split: four lanes of a warp share a channel, each keeping 4 of its 16 states in registers
// for the whole sequence (four times the parallelism of a thread per channel: S has only
// 16 x 576 channel-sequences); C.h is reduced over the four lanes with two xor shuffles. A block
// owns `ct` channels (16, or 8 when many B/C groups meet in a tile) of one sequence and walks it
// in chunks of kTC tokens: u, delta, z (and dout), and the B and C rows of the groups the tile
// touches are copied into shared memory (cp.async, double-buffered, when sizes and pointers allow
// 16-byte copies; plain loads otherwise), a pre-pass computes dt = softplus(delta + bias_scale
// bias) once per (token, channel), then the scan runs from shared memory. Decays are exp2 of
// dt * a * log2(e) on the special-function unit (16 per channel and token: the forward's floor).
// Forward: y = (C.h + D u) silu(z) is collected per chunk in shared memory and stored coalesced.
// With states: each lane reads its 4 initial states and writes its 4 final ones.
// Decode (seq = 1): one kernel, four lanes per (batch row, channel), no shared memory.
//
// Backward (no states), never per-step states in global memory:
// 1. the forward kernel in "chunk" mode stores only the state at the start of every chunk of kTC
//    tokens (fp32, batch x chunks x channels x 16);
// 2. one block per (tile, sequence) walks the chunks from the last: it recomputes the states at
//    the starts of the kR-token sub-chunks of the chunk (registers), then, sub-chunk by sub-chunk
//    from the last, recomputes the kR steps keeping states and decays in registers and walks them
//    backwards with G = dLoss/dh in registers:
//      G = G e^(dt' a) + dy C;  t1 = h - dt u B (= e^(dt a) h_prev);  S1 = sum G B;
//      S4 = sum a G t1;  dA += dt G t1;  du = D dy + dt S1;  d(dt) = u S1 + S4
//    du, ddelta and dz are written per channel by the first lane of the four (after shuffles);
//    dC = sum over the group's channels of dy h and dB = sum of dt u G are formed from per-lane
//    values in shared memory after each sub-chunk, in a fixed order: directly when the tile
//    holds whole groups, else as fp32 partials per tile that a second kernel adds in order.
// 3. parameter gradients: per-(sequence, channel) partials, added over the batch in order.
// Every sum has a fixed order: results are bitwise reproducible run to run.
//
// States and slots live on the device; slots are not validated on the host: a batch row whose
// slot is out of range starts from zero states and stores none. Gradients must not alias inputs.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/selective_scan.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/tensor.hpp"
#include "selective_scan.hpp"

namespace mil::cuda {
namespace scan_detail {

constexpr int kN = 16;      // d_state
constexpr int kLanes = 4;   // lanes per channel (4 states each)
constexpr int kTC = 32;     // tokens per chunk
constexpr int kR = 8;       // backward sub-chunk (states and decays in registers)
constexpr int kSub = kTC / kR;
constexpr int kMaxCt = 16;  // channels per block at most (64 threads)
// Backward blocks per SM the registers must allow: S (16 x 576 channels) is 576 blocks of 16.
constexpr int kBwdBlocks = 6;
constexpr int kParams = kN + 2;  // per (sequence, channel): dA_log[16], dD, ddelta_bias
constexpr float kLog2e = 1.4426950408889634f;
// The sm_90 limit of dynamic shared memory per block (227 KiB).
constexpr size_t kMaxSmem = 232448;

// ---- device helpers ----

__device__ __forceinline__ float ex2(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(v));
  return r;
}
// log(1 + e^v) like the CPU (PyTorch's threshold of 20).
__device__ __forceinline__ float softplus(float v) { return v > 20.f ? v : log1pf(__expf(v)); }
__device__ __forceinline__ float sigmoid(float v) {
  return 1.f / (1.f + __expf(-v));  // __expf overflow gives 1/inf = 0: no NaN
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared; valid = false writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

template <class T>
__device__ __forceinline__ void put(T* dst, float v, bool accumulate) {
  *dst = from_float<T>(accumulate ? to_float(*dst) + v : v);
}

// dst[rows][cols] <- rows r < valid_rows, columns < valid_cols of src (row r at src + r * stride);
// the rest zeros. ASYNC: 16-byte cp.async pieces (cols, valid_cols, stride and the pointers allow
// them); else element by element.
template <class T, bool ASYNC>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t stride, int rows,
                                          int valid_rows, int cols, int valid_cols, int tid,
                                          int threads) {
  if constexpr (ASYNC) {
    constexpr int V = 16 / int(sizeof(T));
    const int pieces = cols / V;
    for (int i = tid; i < rows * pieces; i += threads) {
      const int r = i / pieces, p = i % pieces;
      const bool ok = r < valid_rows && p * V < valid_cols;
      cp_async16(dst + r * cols + p * V, ok ? src + r * stride + p * V : src, ok);
    }
  } else {
    for (int i = tid; i < rows * cols; i += threads) {
      const int r = i / cols, c = i % cols;
      dst[i] = r < valid_rows && c < valid_cols ? src[r * stride + c] : from_float<T>(0.f);
    }
  }
}

// ---- arguments and shared-memory layout ----

template <class T>
struct Args {
  const T *u, *delta, *delta_bias, *A_log, *B, *C, *D, *z, *dout;
  int64_t batch, seq, channels, gb, gc;  // gb, gc: channels per B / C group
  int64_t us, ds, bs, cs, zs, ys;
  float bias_scale;
  int ct, nbg, ncg;  // channels per block; B / C groups a tile touches at most
};

// Per buffer (T elements): u, delta, z, dout tiles [kTC][ct], B [kTC][nbg * 16], C [kTC][ncg * 16];
// two buffers, then fp32: three [kTC][ct] arrays, D and the scaled bias [ct]; the backward adds
// per-lane states and G of a sub-chunk: two [kR][threads][4].
struct Layout {
  int u, dl, z, g, b, c, buffer;  // offsets / size in T elements
  int f32;                        // byte offset of the fp32 part
  int a0, a1, a2, sd, sbias;      // float offsets within it
  int sh, sg;                     // backward only
  int bytes;
};
template <class T>
MIL_HOST_DEVICE inline Layout layout(int ct, int nbg, int ncg, bool backward) {
  Layout l{};
  const int tile = kTC * ct;
  l.u = 0, l.dl = tile, l.z = 2 * tile, l.g = 3 * tile;
  l.b = (backward ? 4 : 3) * tile;
  l.c = l.b + kTC * nbg * kN;
  l.buffer = l.c + kTC * ncg * kN;
  l.buffer = (l.buffer * int(sizeof(T)) + 15) / 16 * 16 / int(sizeof(T));
  l.f32 = 2 * l.buffer * int(sizeof(T));
  l.a0 = 0, l.a1 = tile, l.a2 = 2 * tile, l.sd = 3 * tile, l.sbias = 3 * tile + ct;
  int n = 3 * tile + 2 * ct;
  n = (n + 3) / 4 * 4;
  l.sh = n, l.sg = n + kR * ct * kLanes * 4;
  if (backward) n += 2 * kR * ct * kLanes * 4;
  l.bytes = l.f32 + n * 4;
  return l;
}

// Groups of size `group` that a tile of ct channels (tiles at multiples of ct) touches at most.
inline int groups_per_tile(int64_t channels, int64_t group, int ct) {
  int64_t most = 1;
  for (int64_t c0 = 0; c0 < channels; c0 += ct) {
    const int64_t last = std::min(c0 + ct, channels) - 1;
    most = std::max(most, last / group - c0 / group + 1);
  }
  return int(most);
}

// Issues the copies of chunk k (tokens [k kTC, ...)) of the tile into buffer `raw`.
template <class T, bool ASYNC>
__device__ __forceinline__ void issue_chunk(T* raw, const Layout& l, const Args<T>& a, int64_t b,
                                            int64_t c0, int ncv, int k, bool need_c, bool need_z,
                                            bool need_g, int tid, int threads) {
  const int64_t t0 = int64_t(k) * kTC;
  const int valid = int(std::min<int64_t>(kTC, a.seq - t0));
  const int64_t row0 = b * a.seq + t0;
  const int ct = a.ct;
  load_tile<T, ASYNC>(raw + l.u, a.u + row0 * a.us + c0, a.us, kTC, valid, ct, ncv, tid, threads);
  load_tile<T, ASYNC>(raw + l.dl, a.delta + row0 * a.ds + c0, a.ds, kTC, valid, ct, ncv, tid,
                      threads);
  if (need_z)
    load_tile<T, ASYNC>(raw + l.z, a.z + row0 * a.zs + c0, a.zs, kTC, valid, ct, ncv, tid, threads);
  if (need_g)
    load_tile<T, ASYNC>(raw + l.g, a.dout + row0 * a.ys + c0, a.ys, kTC, valid, ct, ncv, tid,
                        threads);
  const int64_t last = c0 + ncv - 1;
  const int64_t fb = c0 / a.gb;
  load_tile<T, ASYNC>(raw + l.b, a.B + row0 * a.bs + fb * kN, a.bs, kTC, valid, a.nbg * kN,
                      int(last / a.gb - fb + 1) * kN, tid, threads);
  if (need_c) {
    const int64_t fc = c0 / a.gc;
    load_tile<T, ASYNC>(raw + l.c, a.C + row0 * a.cs + fc * kN, a.cs, kTC, valid, a.ncg * kN,
                        int(last / a.gc - fc + 1) * kN, tid, threads);
  }
  if constexpr (ASYNC) cp_async_commit();
}

// Per-channel D and bias_scale * delta_bias of the tile into shared memory.
template <class T>
__device__ __forceinline__ void load_channel_params(float* sd, float* sbias, const Args<T>& a,
                                                    int64_t c0, int tid, int threads) {
  for (int i = tid; i < a.ct; i += threads) {
    const int64_t c = c0 + i;
    const bool ok = c < a.channels;
    sd[i] = ok && a.D != nullptr ? to_float(a.D[c]) : 0.f;
    sbias[i] = ok && a.delta_bias != nullptr ? a.bias_scale * to_float(a.delta_bias[c]) : 0.f;
  }
}

}  // namespace scan_detail

// ---- forward ----

// grid (tiles, batch), ct * 4 threads, layout(ct, nbg, ncg, false).bytes of shared memory.
// CHUNKS: no y; instead the state at the start of every chunk k goes to
// chunk_states[((b * chunks + k) * channels + c) * 16 ...] (the backward's recomputation).
template <class T, bool ASYNC, bool CHUNKS>
__global__ void __launch_bounds__(scan_detail::kMaxCt* scan_detail::kLanes)
    selective_scan_forward_kernel(T* __restrict__ y, float* __restrict__ chunk_states,
                                  const scan_detail::Args<T> a, float* __restrict__ states,
                                  const int32_t* __restrict__ slots, int64_t n_slots) {
  using namespace scan_detail;
  extern __shared__ __align__(16) unsigned char scan_fwd_smem[];
  const int ct = a.ct, threads = ct * kLanes;
  const int tid = int(threadIdx.x), cl = tid >> 2, q = tid & 3;
  const int64_t b = blockIdx.y, c0 = int64_t(blockIdx.x) * ct, c = c0 + cl;
  const bool cvalid = c < a.channels;
  const int ncv = int(std::min<int64_t>(ct, a.channels - c0));
  const Layout l = layout<T>(ct, a.nbg, a.ncg, false);
  T* raw0 = reinterpret_cast<T*>(scan_fwd_smem);
  float* f = reinterpret_cast<float*>(scan_fwd_smem + l.f32);
  float *sdt = f + l.a0, *sdu = f + l.a1, *sy = f + l.a2, *sd = f + l.sd, *sbias = f + l.sbias;
  const bool need_z = !CHUNKS && a.z != nullptr;
  const int jb = cvalid ? int(c / a.gb - c0 / a.gb) : 0;
  const int jc = cvalid ? int(c / a.gc - c0 / a.gc) : 0;
  const int bw = a.nbg * kN, cw = a.ncg * kN;

  load_channel_params(sd, sbias, a, c0, tid, threads);
  float a2[4], h[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    a2[j] = cvalid ? -expf(to_float(a.A_log[c * kN + 4 * q + j])) * kLog2e : 0.f;
    h[j] = 0.f;
  }
  float* st = nullptr;
  if (!CHUNKS && states != nullptr && cvalid) {
    const int64_t slot = slots[b];
    if (slot >= 0 && slot < n_slots) st = states + (slot * a.channels + c) * kN + 4 * q;
  }
  if (st != nullptr)
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = st[j];

  const int chunks = int((a.seq + kTC - 1) / kTC);
  issue_chunk<T, ASYNC>(raw0, l, a, b, c0, ncv, 0, !CHUNKS, need_z, false, tid, threads);
  for (int k = 0; k < chunks; ++k) {
    T* raw = raw0 + (k & 1) * l.buffer;
    const int valid = int(std::min<int64_t>(kTC, a.seq - int64_t(k) * kTC));
    if constexpr (ASYNC) cp_async_wait_all();
    __syncthreads();  // chunk k in shared memory; everyone is done with chunk k - 1
    if (k + 1 < chunks)
      issue_chunk<T, ASYNC>(raw0 + ((k + 1) & 1) * l.buffer, l, a, b, c0, ncv, k + 1, !CHUNKS,
                            need_z, false, tid, threads);
    for (int i = tid; i < kTC * ct; i += threads) {
      const int t = i / ct, j = i % ct;
      float dt = 0.f, du = 0.f;
      if (t < valid && j < ncv) {
        dt = softplus(to_float(raw[l.dl + i]) + sbias[j]);
        du = dt * to_float(raw[l.u + i]);
      }
      sdt[i] = dt, sdu[i] = du;
    }
    if (CHUNKS && cvalid)
      *reinterpret_cast<float4*>(chunk_states + ((b * chunks + k) * a.channels + c) * kN + 4 * q) =
          make_float4(h[0], h[1], h[2], h[3]);
    __syncthreads();  // dt, dt u

    const T* Bt = raw + l.b + jb * kN + 4 * q;
    if constexpr (CHUNKS) {
#pragma unroll 4
      for (int t = 0; t < valid; ++t) {
        const float dt = sdt[t * ct + cl], du = sdu[t * ct + cl];
        float bb[4];
        load4(Bt + t * bw, bb);
#pragma unroll
        for (int j = 0; j < 4; ++j) h[j] = fmaf(ex2(dt * a2[j]), h[j], du * bb[j]);
      }
    } else {
      const T* Ct = raw + l.c + jc * kN + 4 * q;
#pragma unroll 4
      for (int t = 0; t < valid; ++t) {
        const float dt = sdt[t * ct + cl], du = sdu[t * ct + cl];
        float bb[4], cc[4];
        load4(Bt + t * bw, bb);
        load4(Ct + t * cw, cc);
        float p = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          h[j] = fmaf(ex2(dt * a2[j]), h[j], du * bb[j]);
          p = fmaf(cc[j], h[j], p);
        }
        p += __shfl_xor_sync(0xffffffffu, p, 1);
        p += __shfl_xor_sync(0xffffffffu, p, 2);
        if (q == 0) sy[t * ct + cl] = p;
      }
      __syncthreads();  // sy
      const int64_t row0 = b * a.seq + int64_t(k) * kTC;
      for (int i = tid; i < kTC * ct; i += threads) {
        const int t = i / ct, j = i % ct;
        if (t >= valid || j >= ncv) continue;
        float o = sy[i] + sd[j] * to_float(raw[l.u + i]);
        if (need_z) {
          const float zz = to_float(raw[l.z + i]);
          o *= zz * sigmoid(zz);
        }
        y[(row0 + t) * a.ys + c0 + j] = from_float<T>(o);
      }
    }
  }
  if (st != nullptr)
#pragma unroll
    for (int j = 0; j < 4; ++j) st[j] = h[j];
}

// One step (seq = 1): four lanes per (batch row, channel); blocks of 256 threads.
template <class T>
__global__ void __launch_bounds__(256)
    selective_scan_step_kernel(T* __restrict__ y, const scan_detail::Args<T> a,
                               float* __restrict__ states, const int32_t* __restrict__ slots,
                               int64_t n_slots) {
  using namespace scan_detail;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int q = int(i & 3);
  const int64_t bc = i >> 2;
  const bool valid = bc < a.batch * a.channels;  // the invalid lanes still join the shuffles
  const int64_t b = valid ? bc / a.channels : 0, c = valid ? bc % a.channels : 0;
  float h[4] = {0.f, 0.f, 0.f, 0.f};
  float* st = nullptr;
  if (valid && states != nullptr) {
    const int64_t slot = slots[b];
    if (slot >= 0 && slot < n_slots) st = states + (slot * a.channels + c) * kN + 4 * q;
  }
  if (st != nullptr)
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = st[j];
  const float bias = a.delta_bias != nullptr ? a.bias_scale * to_float(a.delta_bias[c]) : 0.f;
  const float u = to_float(a.u[b * a.us + c]);
  const float dt = softplus(to_float(a.delta[b * a.ds + c]) + bias), du = dt * u;
  const T* Bp = a.B + b * a.bs + c / a.gb * kN + 4 * q;
  const T* Cp = a.C + b * a.cs + c / a.gc * kN + 4 * q;
  float p = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float av = -expf(to_float(a.A_log[c * kN + 4 * q + j]));
    h[j] = fmaf(ex2(dt * av * kLog2e), h[j], du * to_float(Bp[j]));
    p = fmaf(to_float(Cp[j]), h[j], p);
  }
  p += __shfl_xor_sync(0xffffffffu, p, 1);
  p += __shfl_xor_sync(0xffffffffu, p, 2);
  if (valid && q == 0) {
    float o = p + (a.D != nullptr ? to_float(a.D[c]) : 0.f) * u;
    if (a.z != nullptr) {
      const float zz = to_float(a.z[b * a.zs + c]);
      o *= zz * sigmoid(zz);
    }
    y[b * a.ys + c] = from_float<T>(o);
  }
  if (st != nullptr)
#pragma unroll
    for (int j = 0; j < 4; ++j) st[j] = h[j];
}

// ---- backward ----

namespace scan_detail {

template <class T>
struct Grads {
  T *du, *ddelta, *dz, *dB, *dC;  // dB / dC: written directly when the tile holds whole groups
  float *dB_part, *dC_part;       // else partials per unit of channels (see the kernel)
  float* params;                  // [batch, channels, kParams] or null
  int unit_b, unit_c;             // channels summed per dB / dC value in a block
  bool accumulate;
};

}  // namespace scan_detail

// grid (tiles, batch), ct * 4 threads, layout(ct, nbg, ncg, true).bytes of shared memory.
// dB (and likewise dC) per token and state is a sum over units of unit_b consecutive channels of a
// tile: with unit_b == gb the sum goes to dB (=|+=); else to dB_part[(row * channels / unit_b +
// unit) * 16 + n] for the group-sum kernel.
template <class T, bool ASYNC>
__global__ void __launch_bounds__(scan_detail::kMaxCt* scan_detail::kLanes, scan_detail::kBwdBlocks)
    selective_scan_backward_kernel(const scan_detail::Grads<T> o,
                                   const float* __restrict__ chunk_states,
                                   const scan_detail::Args<T> a) {
  using namespace scan_detail;
  extern __shared__ __align__(16) unsigned char scan_bwd_smem[];
  const int ct = a.ct, threads = ct * kLanes;
  const int tid = int(threadIdx.x), cl = tid >> 2, q = tid & 3;
  const int64_t b = blockIdx.y, c0 = int64_t(blockIdx.x) * ct, c = c0 + cl;
  const bool cvalid = c < a.channels;
  const int ncv = int(std::min<int64_t>(ct, a.channels - c0));
  const Layout l = layout<T>(ct, a.nbg, a.ncg, true);
  T* raw0 = reinterpret_cast<T*>(scan_bwd_smem);
  float* f = reinterpret_cast<float*>(scan_bwd_smem + l.f32);
  float *sdt = f + l.a0, *sdtu = f + l.a1, *sdy = f + l.a2, *sd = f + l.sd, *sbias = f + l.sbias;
  float4* sh = reinterpret_cast<float4*>(f + l.sh);  // [kR][threads]: h after each step
  float4* sg = reinterpret_cast<float4*>(f + l.sg);  // [kR][threads]: G
  const bool has_z = a.z != nullptr, need_dz = has_z && o.dz != nullptr;
  const int jb = cvalid ? int(c / a.gb - c0 / a.gb) : 0;
  const int jc = cvalid ? int(c / a.gc - c0 / a.gc) : 0;
  const int bw = a.nbg * kN, cw = a.ncg * kN;

  load_channel_params(sd, sbias, a, c0, tid, threads);
  float a2[4], an[4], G[4], dA[4], dcarry[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    an[j] = cvalid ? -expf(to_float(a.A_log[c * kN + 4 * q + j])) : 0.f;
    a2[j] = an[j] * kLog2e;
    G[j] = dA[j] = 0.f;
    dcarry[j] = 1.f;
  }
  float dD_sum = 0.f, dbias_sum = 0.f;  // lane 0 of the channel

  const int chunks = int((a.seq + kTC - 1) / kTC);
  issue_chunk<T, ASYNC>(raw0 + ((chunks - 1) & 1) * l.buffer, l, a, b, c0, ncv, chunks - 1, true,
                        has_z, true, tid, threads);
  for (int k = chunks - 1; k >= 0; --k) {
    T* raw = raw0 + (k & 1) * l.buffer;
    const int valid = int(std::min<int64_t>(kTC, a.seq - int64_t(k) * kTC));
    const int64_t row0 = b * a.seq + int64_t(k) * kTC;
    float h[4] = {0.f, 0.f, 0.f, 0.f};
    if (cvalid) {
      const float4 v = *reinterpret_cast<const float4*>(
          chunk_states + ((b * chunks + k) * a.channels + c) * kN + 4 * q);
      h[0] = v.x, h[1] = v.y, h[2] = v.z, h[3] = v.w;
    }
    if constexpr (ASYNC) cp_async_wait_all();
    __syncthreads();  // chunk k in shared memory; everyone is done with chunk k + 1
    if (k > 0)
      issue_chunk<T, ASYNC>(raw0 + ((k - 1) & 1) * l.buffer, l, a, b, c0, ncv, k - 1, true, has_z,
                            true, tid, threads);
    for (int i = tid; i < kTC * ct; i += threads) {
      const int t = i / ct, j = i % ct;
      float dt = 0.f, dtu = 0.f, dy = 0.f;
      if (t < valid && j < ncv) {
        dt = softplus(to_float(raw[l.dl + i]) + sbias[j]);
        dtu = dt * to_float(raw[l.u + i]);
        dy = to_float(raw[l.g + i]);
        if (has_z) {
          const float zz = to_float(raw[l.z + i]);
          dy *= zz * sigmoid(zz);
        }
      }
      sdt[i] = dt, sdtu[i] = dtu, sdy[i] = dy;
    }
    __syncthreads();  // dt, dt u, dy

    const T* Bt = raw + l.b + jb * kN + 4 * q;
    const T* Ct = raw + l.c + jc * kN + 4 * q;
    const int subs = (valid + kR - 1) / kR;
    // States at the sub-chunk starts (steps past `valid` have dt = 0: no change).
    float hb[kSub][4];
#pragma unroll
    for (int s = 0; s < kSub; ++s) {
#pragma unroll
      for (int j = 0; j < 4; ++j) hb[s][j] = h[j];
      if (s + 1 < subs) {
#pragma unroll
        for (int i = 0; i < kR; ++i) {
          const int t = s * kR + i;
          const float dt = sdt[t * ct + cl], dtu = sdtu[t * ct + cl];
          float bb[4];
          load4(Bt + t * bw, bb);
#pragma unroll
          for (int j = 0; j < 4; ++j) h[j] = fmaf(ex2(dt * a2[j]), h[j], dtu * bb[j]);
        }
      }
    }
#pragma unroll
    for (int s = kSub - 1; s >= 0; --s) {
      if (s >= subs) continue;  // uniform
      // Recompute the sub-chunk: decays in registers, states in shared memory (this lane's own
      // entries: read back below without a barrier; the dC sums read them after one).
      float dec[kR][4];
#pragma unroll
      for (int j = 0; j < 4; ++j) h[j] = hb[s][j];
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        const int t = s * kR + i;
        const float dt = sdt[t * ct + cl], dtu = sdtu[t * ct + cl];
        float bb[4];
        load4(Bt + t * bw, bb);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          dec[i][j] = ex2(dt * a2[j]);
          h[j] = fmaf(dec[i][j], h[j], dtu * bb[j]);
        }
        sh[i * threads + tid] = make_float4(h[0], h[1], h[2], h[3]);
        if (need_dz) {  // dz = dout (C.h + D u) silu'(z)
          float cc[4];
          load4(Ct + t * cw, cc);
          float p = 0.f;
#pragma unroll
          for (int j = 0; j < 4; ++j) p = fmaf(cc[j], h[j], p);
          p += __shfl_xor_sync(0xffffffffu, p, 1);
          p += __shfl_xor_sync(0xffffffffu, p, 2);
          if (q == 0 && cvalid && t < valid) {
            const int e = t * ct + cl;
            const float zz = to_float(raw[l.z + e]), sz = sigmoid(zz);
            const float ssm = p + sd[cl] * to_float(raw[l.u + e]);
            put(o.dz + (row0 + t) * a.zs + c,
                to_float(raw[l.g + e]) * ssm * sz * (1.f + zz * (1.f - sz)), o.accumulate);
          }
        }
      }
      // Walk the sub-chunk backwards.
#pragma unroll
      for (int i = kR - 1; i >= 0; --i) {
        const int t = s * kR + i, e = t * ct + cl;
        const float dy = sdy[e], dt = sdt[e], dtu = sdtu[e];
        float bb[4], cc[4];
        load4(Bt + t * bw, bb);
        load4(Ct + t * cw, cc);
        const float4 hv = sh[i * threads + tid];
        const float hr[4] = {hv.x, hv.y, hv.z, hv.w};
        float s1 = 0.f, s4 = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float dn = i == kR - 1 ? dcarry[j] : dec[i + 1][j];
          G[j] = fmaf(G[j], dn, dy * cc[j]);
          const float t1 = fmaf(-dtu, bb[j], hr[j]);
          const float pg = G[j] * t1;
          s1 = fmaf(G[j], bb[j], s1);
          s4 = fmaf(an[j], pg, s4);
          dA[j] = fmaf(dt, pg, dA[j]);
        }
        sg[i * threads + tid] = make_float4(G[0], G[1], G[2], G[3]);
        s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
        s4 += __shfl_xor_sync(0xffffffffu, s4, 1);
        s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
        s4 += __shfl_xor_sync(0xffffffffu, s4, 2);
        if (q == 0 && cvalid && t < valid) {
          const float u = to_float(raw[l.u + e]);
          const float draw =
              (u * s1 + s4) * sigmoid(to_float(raw[l.dl + e]) + sbias[cl]);  // d(delta)
          if (o.du != nullptr) put(o.du + (row0 + t) * a.us + c, sd[cl] * dy + dt * s1, o.accumulate);
          if (o.ddelta != nullptr) put(o.ddelta + (row0 + t) * a.ds + c, draw, o.accumulate);
          dD_sum = fmaf(dy, u, dD_sum);
          dbias_sum += draw;
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) dcarry[j] = dec[0][j];
      __syncthreads();  // sh, sg of the sub-chunk

      // dC = sum over a unit's channels of dy h; dB = sum of dt u G.
      const int nuc = o.dC != nullptr || o.dC_part != nullptr ? ct / o.unit_c : 0;
      const int nub = o.dB != nullptr || o.dB_part != nullptr ? ct / o.unit_b : 0;
      const float* shf = reinterpret_cast<const float*>(sh);
      const float* sgf = reinterpret_cast<const float*>(sg);
      for (int idx = tid; idx < kR * (nuc + nub) * kN; idx += threads) {
        const int n = idx % kN, rest = idx / kN, unit = rest % (nuc + nub), i = rest / (nuc + nub);
        const int t = s * kR + i;
        const bool is_c = unit < nuc;
        const int size = is_c ? o.unit_c : o.unit_b, first = (is_c ? unit : unit - nuc) * size;
        if (t >= valid || first >= ncv) continue;
        const float* vals = (is_c ? shf : sgf) + i * threads * 4 + n;  // + lc * 16
        const float* scale = (is_c ? sdy : sdtu) + t * ct;
        float acc = 0.f;
        for (int m = first; m < first + size; ++m) acc = fmaf(vals[m * kN], scale[m], acc);
        const int64_t row = row0 + t, unit_g = (c0 + first) / size;
        if (is_c) {
          if (o.dC_part == nullptr) put(o.dC + row * a.cs + unit_g * kN + n, acc, o.accumulate);
          else o.dC_part[(row * (a.channels / size) + unit_g) * kN + n] = acc;
        } else {
          if (o.dB_part == nullptr) put(o.dB + row * a.bs + unit_g * kN + n, acc, o.accumulate);
          else o.dB_part[(row * (a.channels / size) + unit_g) * kN + n] = acc;
        }
      }
      __syncthreads();  // before sh, sg are rewritten
    }
  }
  if (o.params != nullptr && cvalid) {
    float* p = o.params + (b * a.channels + c) * kParams;
#pragma unroll
    for (int j = 0; j < 4; ++j) p[4 * q + j] = dA[j] * an[j];
    if (q == 0) p[kN] = dD_sum, p[kN + 1] = a.bias_scale * dbias_sum;
  }
}

// dst[row, g * 16 + n] (=|+=) the sum over the `per` units of group g of part[row, unit, n].
template <class T>
__global__ void selective_scan_group_sum_kernel(T* __restrict__ dst, const float* __restrict__ part,
                                                int64_t rows, int64_t groups, int64_t per,
                                                int64_t stride, bool accumulate) {
  const int64_t n = rows * groups * scan_detail::kN;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / (groups * scan_detail::kN), k = i % (groups * scan_detail::kN);
    const int64_t g = k / scan_detail::kN, s = k % scan_detail::kN;
    const float* p = part + ((row * groups + g) * per) * scan_detail::kN + s;
    float v = 0.f;
    for (int64_t m = 0; m < per; ++m) v += p[m * scan_detail::kN];
    scan_detail::put(dst + row * stride + k, v, accumulate);
  }
}

// Parameter gradients from the [batch, channels, kParams] partials, summed over the batch in order.
template <class T>
__global__ void selective_scan_params_kernel(T* __restrict__ ddelta_bias, T* __restrict__ dA_log,
                                             T* __restrict__ dD, const float* __restrict__ part,
                                             int64_t batch, int64_t channels, bool accumulate) {
  using scan_detail::kN;
  using scan_detail::kParams;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= channels * kParams) return;
  const int64_t c = i / kParams, k = i % kParams;
  T* dst = k < kN ? (dA_log != nullptr ? dA_log + c * kN + k : nullptr)
           : k == kN ? dD
                     : ddelta_bias;
  if (dst == nullptr) return;
  if (k >= kN) dst += c;
  float v = 0.f;
  for (int64_t b = 0; b < batch; ++b) v += part[(b * channels + c) * kParams + k];
  scan_detail::put(dst, v, accumulate);
}

namespace scan_detail {

// Makes `stream` current while temporaries are allocated, so the caching allocator reuses their
// blocks only for work ordered after this stream's kernels.
struct StreamScope {
  cudaStream_t saved;
  explicit StreamScope(cudaStream_t s) : saved(current_stream()) { current_stream() = s; }
  ~StreamScope() { current_stream() = saved; }
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;
};

inline void check_supported(const char* op, const SelectiveScanShape& s) {
  MIL_CHECK(s.d_state == kN, op, " (CUDA): d_state=", s.d_state, " is not supported (16 only)");
  MIL_CHECK(s.batch <= 65535, op, " (CUDA): batch must be <= 65535, got ", s.batch);
  MIL_CHECK(s.seq <= (int64_t(1) << 30) && s.channels <= (int64_t(1) << 30), op,
            " (CUDA): seq or channels too large");
}

template <class T>
Args<T> make_args(const T* u, const T* delta, const T* delta_bias, const T* A_log, const T* B,
                  const T* C, const T* D, const T* z, const T* dout, const SelectiveScanShape& s) {
  Args<T> a{};
  a.u = u, a.delta = delta, a.delta_bias = delta_bias, a.A_log = A_log, a.B = B, a.C = C;
  a.D = D, a.z = z, a.dout = dout;
  a.batch = s.batch, a.seq = s.seq, a.channels = s.channels;
  a.gb = s.channels / s.b_groups, a.gc = s.channels / s.c_groups;
  a.us = s.us(), a.ds = s.ds(), a.bs = s.bs(), a.cs = s.cs(), a.zs = s.zs(), a.ys = s.ys();
  a.bias_scale = s.bias_scale;
  return a;
}

// Picks the tile (16 channels, or 8 when the tiles' B / C rows would not fit) and its layout.
template <class T>
Layout choose_tile(Args<T>& a, bool backward) {
  for (int ct : {16, 8}) {
    a.ct = ct;
    a.nbg = groups_per_tile(a.channels, a.gb, ct);
    a.ncg = groups_per_tile(a.channels, a.gc, ct);
    const Layout l = layout<T>(ct, a.nbg, a.ncg, backward);
    if (size_t(l.bytes) <= kMaxSmem) return l;
  }
  MIL_FAIL("selective_scan (CUDA): tiles exceed shared memory");  // unreachable: 8 groups at most
}

// cp.async needs 16-byte pieces: aligned bases and strides, whole pieces of channels.
template <class T>
bool can_copy_async(const Args<T>& a, bool z, bool dout) {
  constexpr int V = 16 / int(sizeof(T));
  bool ok = a.channels % V == 0 && aligned16(a.u) && aligned16(a.delta) && aligned16(a.B) &&
            a.us % V == 0 && a.ds % V == 0 && a.bs % V == 0 && a.cs % V == 0 && aligned16(a.C);
  if (z && a.z != nullptr) ok = ok && aligned16(a.z) && a.zs % V == 0;
  if (dout) ok = ok && aligned16(a.dout) && a.ys % V == 0;
  return ok;
}

template <class Kernel>
void allow_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    MIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// The chunked forward (y, or chunk states when chunk_states is not null).
template <class T>
void launch_forward(T* y, float* chunk_states, Args<T> a, const SelectiveStates& states,
                    cudaStream_t stream) {
  const Layout l = choose_tile(a, false);
  const dim3 grid(unsigned((a.channels + a.ct - 1) / a.ct), unsigned(a.batch));
  const unsigned threads = unsigned(a.ct * kLanes);
  const bool async = can_copy_async(a, chunk_states == nullptr, false);
  auto go = [&](auto kernel) {
    allow_smem(kernel, l.bytes);
    kernel<<<grid, threads, size_t(l.bytes), stream>>>(y, chunk_states, a, states.data,
                                                         states.slots, states.n_slots);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_forward_kernel");
  };
  if (chunk_states != nullptr) {
    if (async) go(selective_scan_forward_kernel<T, true, true>);
    else go(selective_scan_forward_kernel<T, false, true>);
  } else {
    if (async) go(selective_scan_forward_kernel<T, true, false>);
    else go(selective_scan_forward_kernel<T, false, false>);
  }
}

}  // namespace scan_detail

// y = selective scan (see selective_scan.hpp). All pointers on the device, states.slots included.
template <class T>
void selective_scan_forward(T* y, const T* u, const T* delta, const T* delta_bias, const T* A_log,
                            const T* B, const T* C, const T* D, const T* z,
                            const SelectiveScanShape& s, const SelectiveStates& states,
                            cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "selective_scan_forward on the GPU supports float and bf16");
  using namespace scan_detail;
  selective_scan_check("selective_scan_forward", s, states);
  check_supported("selective_scan_forward", s);
  if (s.batch == 0 || s.seq == 0) return;
  const Args<T> a = make_args(u, delta, delta_bias, A_log, B, C, D, z, static_cast<const T*>(nullptr), s);
  if (s.seq == 1) {
    const int64_t threads = s.batch * s.channels * kLanes;
    selective_scan_step_kernel<T><<<unsigned((threads + 255) / 256), 256, 0, stream>>>(
        y, a, states.data, states.slots, states.n_slots);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_step_kernel");
    return;
  }
  launch_forward<T>(y, nullptr, a, states, stream);
}

// Gradients of selective_scan_forward without states (write modes in selective_scan.hpp).
template <class T>
void selective_scan_backward(const SelectiveScanGrads<T>& gr, const T* dout, const T* u,
                             const T* delta, const T* delta_bias, const T* A_log, const T* B,
                             const T* C, const T* D, const T* z, const SelectiveScanShape& s,
                             cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "selective_scan_backward on the GPU supports float and bf16");
  using namespace scan_detail;
  selective_scan_check("selective_scan_backward", s, SelectiveStates{});
  check_supported("selective_scan_backward", s);
  const bool any_param = gr.ddelta_bias || gr.dA_log || gr.dD;
  const int64_t rows = s.batch * s.seq;
  if (rows == 0) {  // no tokens: parameter gradients are empty sums
    if (!gr.accumulate_params) {
      if (gr.ddelta_bias)
        MIL_CUDA_CHECK(cudaMemsetAsync(gr.ddelta_bias, 0, size_t(s.channels) * sizeof(T), stream));
      if (gr.dD) MIL_CUDA_CHECK(cudaMemsetAsync(gr.dD, 0, size_t(s.channels) * sizeof(T), stream));
      if (gr.dA_log)
        MIL_CUDA_CHECK(cudaMemsetAsync(gr.dA_log, 0, size_t(s.channels * kN) * sizeof(T), stream));
    }
    return;
  }
  const bool any_input = gr.du || gr.ddelta || gr.dB || gr.dC || (gr.dz && z);
  if (!any_input && !any_param) return;
  StreamScope scope(stream);
  Args<T> a = make_args(u, delta, delta_bias, A_log, B, C, D, z, dout, s);

  // 1. Chunk-start states.
  const int64_t chunks = (s.seq + kTC - 1) / kTC;
  auto chunk_states = Tensor<float, Cuda>::empty(Shape{s.batch * chunks * s.channels * kN});
  launch_forward<T>(nullptr, chunk_states.data(), a, SelectiveStates{}, stream);

  // 2. The backward walk.
  const Layout l = choose_tile(a, true);
  Grads<T> o{};
  o.du = gr.du, o.ddelta = gr.ddelta, o.dz = z != nullptr ? gr.dz : nullptr;
  o.dB = gr.dB, o.dC = gr.dC;
  o.unit_b = int(std::gcd<int64_t>(a.ct, a.gb));
  o.unit_c = int(std::gcd<int64_t>(a.ct, a.gc));
  o.accumulate = gr.accumulate_inputs;
  Tensor<float, Cuda> dB_part, dC_part, params;
  if (gr.dB && o.unit_b != a.gb) {
    dB_part = Tensor<float, Cuda>::empty(Shape{rows * (s.channels / o.unit_b) * kN});
    o.dB_part = dB_part.data();
  }
  if (gr.dC && o.unit_c != a.gc) {
    dC_part = Tensor<float, Cuda>::empty(Shape{rows * (s.channels / o.unit_c) * kN});
    o.dC_part = dC_part.data();
  }
  if (any_param) {
    params = Tensor<float, Cuda>::empty(Shape{s.batch * s.channels * kParams});
    o.params = params.data();
  }
  const dim3 grid(unsigned((a.channels + a.ct - 1) / a.ct), unsigned(a.batch));
  const unsigned threads = unsigned(a.ct * kLanes);
  auto go = [&](auto kernel) {
    allow_smem(kernel, l.bytes);
    kernel<<<grid, threads, size_t(l.bytes), stream>>>(o, chunk_states.data(), a);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_backward_kernel");
  };
  if (can_copy_async(a, true, true)) go(selective_scan_backward_kernel<T, true>);
  else go(selective_scan_backward_kernel<T, false>);

  // 3. Group sums of partials, parameter sums over the batch.
  auto grid_for = [](int64_t n) {
    return unsigned(std::clamp<int64_t>((n + 255) / 256, 1, 65535 * 8));
  };
  if (o.dB_part != nullptr) {
    selective_scan_group_sum_kernel<T><<<grid_for(rows * s.b_groups * kN), 256, 0, stream>>>(
        gr.dB, o.dB_part, rows, s.b_groups, a.gb / o.unit_b, s.bs(), gr.accumulate_inputs);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_group_sum_kernel (dB)");
  }
  if (o.dC_part != nullptr) {
    selective_scan_group_sum_kernel<T><<<grid_for(rows * s.c_groups * kN), 256, 0, stream>>>(
        gr.dC, o.dC_part, rows, s.c_groups, a.gc / o.unit_c, s.cs(), gr.accumulate_inputs);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_group_sum_kernel (dC)");
  }
  if (any_param) {
    selective_scan_params_kernel<T><<<grid_for(s.channels * kParams), 256, 0, stream>>>(
        gr.ddelta_bias, gr.dA_log, gr.dD, o.params, s.batch, s.channels, gr.accumulate_params);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_params_kernel");
  }
}

}  // namespace mil::cuda
