#pragma once
// The Mamba-1 selective scan on the GPU (contract and CPU reference in selective_scan.hpp). T =
// float or bf16 at the interface, fp32 math and states; d_state = 16 (others throw).
//
// Work split: a block owns `ct` channels (16, or 8 when the B / C rows of a tile would not fit) of
// one sequence and walks it in chunks of kT = 64 tokens. Each channel has kP = 8 lanes of one warp,
// lane p owning the kL = 8 consecutive tokens [8p, 8p + 8) of the chunk and all 16 states of its
// channel, one state at a time: per state it forms the 8 decays (one exp2 per token and state on
// the special-function unit: the floor), composes them with the inputs into one affine map
// h -> A h + b of its segment, and an inclusive scan of those maps over the 8 lanes (3 shuffle
// steps) gives every lane the state at its segment start from the state at the chunk start. So a
// sequence is processed 8 lanes wide with 16 independent states per thread, and no value is
// computed twice. A warp holds 4 channels x 8 lanes; sums over channels (dB, dC) use its xor
// shuffles.
// Memory: u, delta, z (and dout) and the B and C rows of the groups the tile touches are copied
// into shared memory (cp.async, double-buffered, when sizes and pointers allow 16-byte copies;
// plain loads otherwise), with 16 bytes of padding every 8 rows so that the 8 lanes of a channel
// read their own tokens from distinct banks. Each lane converts its tokens of the B / C columns
// to a "lane-major" fp32 layout (rows of 8 lanes x 4 tokens + 4 floats of padding): the state
// loop then reads 8 tokens of a column with two conflict-free 16-byte loads.
// Forward: each lane computes dt = softplus(delta + bias_scale bias) and dt u of its 8 tokens in
// registers, and writes y = (C.h + D u) silu(z) in place of u; the tile is then stored coalesced.
// The backward likewise computes dt, dt u and dy per lane, and stages du, d(delta) and dz
// lane-major for coalesced stores.
// With states: the chunk-start state of the first chunk is read from and the final one written to
// the slot.
// Decode (seq = 1): one kernel, four lanes per (batch row, channel), no shared memory.
//
// Backward (no states), never per-step states in global memory:
// 1. the forward kernel in "chunk" mode stores only the state at the start of every chunk
//    (fp32, batch x chunks x channels x 16);
// 2. the backward kernel walks the chunks from the last; per state it recomputes the decays and
//    the states of its 8 tokens (forward scan from the stored chunk state), then scans the
//    adjoint G = dLoss/dh backwards the same way (maps cin -> A cin + b over the lanes, from the
//    last), with the carry from the next chunk:
//      G_t = dy_t C_t + e^(dt_{t+1} a) G_{t+1};  t1 = h - dt u B (= e^(dt a) h_prev);
//      S1 = sum_n G B;  S4 = sum_n a G t1;  dA += dt G t1;  du = D dy + dt S1;  d(dt) = u S1 + S4
//    dC = sum over a group's channels of dy h and dB = sum of dt u G are reduced over the warp's
//    channels by halving xor shuffles, then over the warps in shared memory every kFlush states
//    in a fixed order: to dB / dC directly when the tile holds whole groups, else as fp32
//    partials per tile that a second kernel adds in order. du, ddelta and dz are staged
//    lane-major and stored coalesced.
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
#include "../core/cuda_launch.hpp"
#include "../core/cuda_ptx.cuh"
#include "../core/cuda_vec.cuh"
#include "../core/dtype.hpp"
#include "../core/math.hpp"
#include "../core/tensor.hpp"
#include "selective_scan.hpp"

namespace mil::cuda {
namespace scan_detail {

constexpr int kN = 16;          // d_state
constexpr int kL = 8;           // tokens per lane
constexpr int kP = 8;           // lanes per channel
constexpr int kT = kL * kP;     // tokens per chunk
constexpr int kStepLanes = 4;   // decode step: lanes per channel (4 states each)
constexpr int kRow = kP * 4 + 4;  // floats per lane-major row: 8 lanes x 4 tokens + padding
constexpr int kFlush = 4;       // backward: states per flush of the dB / dC partials
// Floats per slot of the backward's dB / dC partials: [kT tokens][kFlush states] and one float of
// padding per 8 tokens (the writes after halve_sum are then conflict-free).
constexpr int kPStride = kT * kFlush + kT / kL;
constexpr int kParams = kN + 2;  // per (sequence, channel): dA_log[16], dD, ddelta_bias
// The sm_90 limit of dynamic shared memory per block (227 KiB).
constexpr size_t kMaxSmem = 232448;
constexpr unsigned kFull = 0xffffffffu;

// ---- device helpers ----

// Lane-major fp32 arrays: token t = 8p + i of row r (a channel, or a B / C column) of an array of
// `rows` rows sits at lane_index(i, r, p, rows); lane p reads its 8 tokens as two float4.
__device__ __forceinline__ int lane_index(int i, int r, int p, int rows) {
  return ((i >> 2) * rows + r) * kRow + p * 4 + (i & 3);
}
__device__ __forceinline__ void load_lane(const float* arr, int r, int p, int rows,
                                          float (&v)[kL]) {
  const float4 lo = *reinterpret_cast<const float4*>(arr + r * kRow + p * 4);
  const float4 hi = *reinterpret_cast<const float4*>(arr + (rows + r) * kRow + p * 4);
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z,
  v[7] = hi.w;
}
__device__ __forceinline__ void store_lane(float* arr, int r, int p, int rows,
                                           const float (&v)[kL]) {
  *reinterpret_cast<float4*>(arr + r * kRow + p * 4) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4*>(arr + (rows + r) * kRow + p * 4) = make_float4(v[4], v[5], v[6], v[7]);
}

// Inclusive scan of affine maps x -> A x + B over the 8 lanes of a channel, from lane 0 (UP) or
// from lane 7 (down): afterwards lane p holds the composition of lanes 0..p (or p..7).
template <bool UP>
__device__ __forceinline__ void scan_maps(float& A, float& B, int p) {
#pragma unroll
  for (int d = 1; d < kP; d *= 2) {
    const float Ao = UP ? __shfl_up_sync(kFull, A, d, kP) : __shfl_down_sync(kFull, A, d, kP);
    const float Bo = UP ? __shfl_up_sync(kFull, B, d, kP) : __shfl_down_sync(kFull, B, d, kP);
    if (UP ? p >= d : p + d < kP) {
      B = fmaf(A, Bo, B);
      A *= Ao;
    }
  }
}

// Lanes 0..3 of a channel store its 16 states h[n], 4 each.
__device__ __forceinline__ void store_state(float* dst, const float* h, int p) {
  if (p < kN / 4)
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[4 * p + j] = h[4 * p + j];
}

// Raw tiles [kT tokens][width] have 16 bytes of padding after every kL rows, so that the lanes of a
// channel (8 rows apart each) read their own tokens from distinct banks.
template <class T>
MIL_HOST_DEVICE constexpr int raw_pad() {
  return 16 / int(sizeof(T));
}
template <class T>
MIL_HOST_DEVICE constexpr int raw_at(int t, int col, int width) {
  return t * width + t / kL * raw_pad<T>() + col;
}
template <class T>
MIL_HOST_DEVICE constexpr int raw_size(int width) {
  return kT * width + kP * raw_pad<T>();
}

// dst[kT][COLS] (row pitch `pitch`, padded) <- rows r < valid_rows, columns < valid_cols of src
// (row r at src + r * stride); the rest zeros. ASYNC: 16-byte cp.async pieces (COLS, valid_cols,
// stride and the pointers allow them); else element by element. COLS is a compile-time width, so
// the loop has no divisions.
template <class T, bool ASYNC, int COLS>
__device__ __forceinline__ void load_tile(T* dst, int pitch, const T* src, int64_t stride,
                                          int valid_rows, int valid_cols, int tid, int threads) {
  if constexpr (ASYNC) {
    constexpr int V = 16 / int(sizeof(T)), pieces = COLS / V;
    for (int i = tid; i < kT * pieces; i += threads) {
      const int r = i / pieces, q = i % pieces;
      const bool ok = r < valid_rows && q * V < valid_cols;
      cp_async_16(dst + raw_at<T>(r, q * V, pitch), ok ? src + r * stride + q * V : src, ok);
    }
  } else {
    for (int i = tid; i < kT * COLS; i += threads) {
      const int r = i / COLS, c = i % COLS;
      dst[raw_at<T>(r, c, pitch)] =
          r < valid_rows && c < valid_cols ? src[r * stride + c] : from_float<T>(0.f);
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
  // Backward: a block sums dB (dC) over units of unit_b (unit_c) channels, 1 << lev_b (lev_c) of
  // them by shuffles within a warp.
  int unit_b, unit_c, lev_b, lev_c;
};

// What a block's tile reads of B and C (fixed for the whole sequence): the first column and the
// number of valid columns (whole groups) of each.
struct TileColumns {
  int64_t b0, c0;
  int nb, nc;
};
template <class T>
__device__ __forceinline__ TileColumns tile_columns(const Args<T>& a, int64_t c0, int ncv) {
  const int64_t last = c0 + ncv - 1, gb0 = c0 / a.gb, gc0 = c0 / a.gc;
  return {gb0 * kN, gc0 * kN, int(last / a.gb - gb0 + 1) * kN, int(last / a.gc - gc0 + 1) * kN};
}

// Raw tiles per buffer (T elements, padded rows, raw_at): u, delta, z, dout [kT][ct], B [kT][nbg *
// 16], C [kT][ncg * 16]; two buffers. Then fp32: a log2(e) [ct][17]; the forward's chunk-start
// states [ct][17], or the backward's dA sums and adjoint carries [ct][17]; lane-major B and C
// columns; the backward's dB / dC partials [slots][kPStride], whose region the lane-major du,
// d(delta) and dz reuse after the state loop.
struct Layout {
  int u, dl, z, g, b, c, buffer;   // offsets / size in T elements
  int f32;                         // byte offset of the fp32 part
  int a2, hc, sdA, skc, fb, fc, pb, pc, s1, s4, yss;  // float offsets in the fp32 part
  int bytes;
};
template <class T>
MIL_HOST_DEVICE inline Layout layout(int ct, int nbg, int ncg, int lev_b, int lev_c,
                                     bool backward) {
  Layout l{};
  const int tile = raw_size<T>(ct);  // a multiple of 16 bytes, like every raw tile
  l.u = 0, l.dl = tile, l.z = 2 * tile, l.g = 3 * tile;
  l.b = (backward ? 4 : 3) * tile;
  l.c = l.b + raw_size<T>(nbg * kN);
  l.buffer = l.c + raw_size<T>(ncg * kN);
  l.f32 = 2 * l.buffer * int(sizeof(T));
  auto lanes = [](int rows) { return 2 * rows * kRow; };  // floats of a lane-major array
  int n = 0;
  auto take = [&](int floats) {
    const int at = n;
    n += (floats + 3) / 4 * 4;
    return at;
  };
  l.a2 = take(ct * (kN + 1));
  if (backward) l.sdA = take(ct * (kN + 1)), l.skc = take(ct * (kN + 1));
  else l.hc = take(ct * (kN + 1));
  const int shared_at = n;  // B / C columns, then y or the partials
  l.fb = take(lanes(nbg * kN)), l.fc = take(lanes(ncg * kN));
  if (backward) {
    l.pb = take((ct >> lev_b) * kPStride), l.pc = take((ct >> lev_c) * kPStride);
    const int end = n;
    n = shared_at;
    l.s1 = take(lanes(ct)), l.s4 = take(lanes(ct)), l.yss = take(lanes(ct));
    n = std::max(n, end);
  }
  l.bytes = l.f32 + n * 4;
  return l;
}
template <class T>
MIL_HOST_DEVICE inline Layout layout(const Args<T>& a, bool backward) {
  return layout<T>(a.ct, a.nbg, a.ncg, a.lev_b, a.lev_c, backward);
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

// Issues the copies of chunk k (tokens [k kT, ...)) of the tile into buffer `raw`.
template <class T, bool ASYNC, int CT>
__device__ __forceinline__ void issue_chunk(T* raw, const Layout& l, const Args<T>& a,
                                            const TileColumns& tc, int64_t b, int64_t c0, int ncv,
                                            int k, bool need_c, bool need_z, bool need_g, int tid,
                                            int threads) {
  const int64_t t0 = int64_t(k) * kT;
  const int valid = int(std::min<int64_t>(kT, a.seq - t0));
  const int64_t row0 = b * a.seq + t0;
  load_tile<T, ASYNC, CT>(raw + l.u, CT, a.u + row0 * a.us + c0, a.us, valid, ncv, tid, threads);
  load_tile<T, ASYNC, CT>(raw + l.dl, CT, a.delta + row0 * a.ds + c0, a.ds, valid, ncv, tid,
                          threads);
  if (need_z)
    load_tile<T, ASYNC, CT>(raw + l.z, CT, a.z + row0 * a.zs + c0, a.zs, valid, ncv, tid, threads);
  if (need_g)
    load_tile<T, ASYNC, CT>(raw + l.g, CT, a.dout + row0 * a.ys + c0, a.ys, valid, ncv, tid,
                            threads);
  // B and C a group (16 columns) at a time.
  for (int g = 0; g < a.nbg; ++g)
    load_tile<T, ASYNC, kN>(raw + l.b + g * kN, a.nbg * kN, a.B + row0 * a.bs + tc.b0 + g * kN,
                            a.bs, valid, tc.nb - g * kN, tid, threads);
  if (need_c)
    for (int g = 0; g < a.ncg; ++g)
      load_tile<T, ASYNC, kN>(raw + l.c + g * kN, a.ncg * kN, a.C + row0 * a.cs + tc.c0 + g * kN,
                              a.cs, valid, tc.nc - g * kN, tid, threads);
  if constexpr (ASYNC) cp_async_commit();
}

// a log2(e) of the tile's channels: [ct][kN + 1] (padded: the channels of a warp read distinct
// banks).
template <class T>
__device__ __forceinline__ void load_decay_rates(float* sa2, const Args<T>& a, int64_t c0, int ct,
                                                 int tid, int threads) {
  for (int i = tid; i < ct * kN; i += threads) {
    const int64_t ch = c0 + i / kN;
    sa2[i / kN * (kN + 1) + i % kN] =
        ch < a.channels ? -expf(to_float(a.A_log[ch * kN + i % kN])) * kLog2e : 0.f;
  }
}

// A raw [kT][groups * 16] tile of B or C columns (zeros past the valid tokens) -> fp32 lane-major
// columns: lane p of channel cl converts its own 8 tokens of columns cl, cl + ct, ...
template <class T, int CT>
__device__ __forceinline__ void columns_to_lanes(float* dst, const T* raw, int groups, int cl,
                                                 int p) {
  const int cols = groups * kN;
  for (int col = cl; col < cols; col += CT) {
    const T* src = raw + raw_at<T>(kL * p, col, cols);  // token 8p + i at src[i * cols]
    float v[kL];
#pragma unroll
    for (int i = 0; i < kL; ++i) v[i] = to_float(src[i * cols]);
    store_lane(dst, col, p, cols, v);
  }
}

}  // namespace scan_detail

// ---- forward ----

// grid (tiles, batch), ct * kP threads, layout(a, false).bytes of shared memory.
// CHUNKS: no y; instead the state at the start of every chunk k goes to
// chunk_states[((b * chunks + k) * channels + c) * 16 ...] (the backward's recomputation).
template <class T, int CT, bool ASYNC, bool CHUNKS>
__global__ void __launch_bounds__(CT* scan_detail::kP, 80 / CT)
    selective_scan_forward_kernel(T* __restrict__ y, float* __restrict__ chunk_states,
                                  const scan_detail::Args<T> a, float* __restrict__ states,
                                  const int32_t* __restrict__ slots, int64_t n_slots) {
  using namespace scan_detail;
  extern __shared__ __align__(16) unsigned char scan_fwd_smem[];
  constexpr int ct = CT, threads = ct * kP;
  const int tid = int(threadIdx.x), p = tid & (kP - 1), cl = tid / kP;
  const int64_t b = blockIdx.y, c0 = int64_t(blockIdx.x) * ct, c = c0 + cl;
  const bool cvalid = c < a.channels;
  const int ncv = int(std::min<int64_t>(ct, a.channels - c0));
  const Layout l = layout(a, false);
  T* raw0 = reinterpret_cast<T*>(scan_fwd_smem);
  float* f = reinterpret_cast<float*>(scan_fwd_smem + l.f32);
  float *fb = f + l.fb, *fc = f + l.fc, *sa2 = f + l.a2, *shc = f + l.hc;
  const bool need_z = !CHUNKS && a.z != nullptr;
  const int jb = cvalid ? int(c / a.gb - c0 / a.gb) * kN : 0;  // first B / C column of the channel
  const int jc = cvalid ? int(c / a.gc - c0 / a.gc) * kN : 0;
  const int bw = a.nbg * kN, cw = a.ncg * kN;
  // The lane's own tokens 8p + i of its channel in a raw [kT][ct] tile: at own + i * ct.
  const int own = raw_at<T>(kL * p, cl, ct);
  const float bias =
      cvalid && a.delta_bias != nullptr ? a.bias_scale * to_float(a.delta_bias[c]) : 0.f;
  const float d_skip = cvalid && a.D != nullptr ? to_float(a.D[c]) : 0.f;

  load_decay_rates(sa2, a, c0, ct, tid, threads);
  float* st = nullptr;
  if (!CHUNKS && states != nullptr && cvalid) {
    const int64_t slot = slots[b];
    if (slot >= 0 && slot < n_slots) st = states + (slot * a.channels + c) * kN;
  }
  // The state at the chunk start per channel and state, [ct][kN + 1] (registers are scarce and
  // the state loop is not unrolled); lane 0 of the channel updates it.
  float* hcs = shc + cl * (kN + 1);
  if (p == 0)
    for (int n = 0; n < kN; ++n) hcs[n] = st != nullptr ? st[n] : 0.f;

  const int chunks = int((a.seq + kT - 1) / kT);
  const TileColumns tc = tile_columns(a, c0, ncv);
  issue_chunk<T, ASYNC, CT>(raw0, l, a, tc, b, c0, ncv, 0, !CHUNKS, need_z, false, tid, threads);
  for (int k = 0; k < chunks; ++k) {
    T* raw = raw0 + (k & 1) * l.buffer;
    const int valid = int(std::min<int64_t>(kT, a.seq - int64_t(k) * kT));
    if constexpr (ASYNC) cp_async_wait_all();
    __syncthreads();  // chunk k in shared memory; everyone is done with chunk k - 1
    if (k + 1 < chunks)
      issue_chunk<T, ASYNC, CT>(raw0 + ((k + 1) & 1) * l.buffer, l, a, tc, b, c0, ncv, k + 1,
                                !CHUNKS, need_z, false, tid, threads);
    // B and C columns to lane-major fp32; dt and dt u of the lane's own tokens (zero past the
    // valid tokens and channels).
    columns_to_lanes<T, CT>(fb, raw + l.b, a.nbg, cl, p);
    if (!CHUNKS) columns_to_lanes<T, CT>(fc, raw + l.c, a.ncg, cl, p);
    if (CHUNKS && cvalid)
      store_state(chunk_states + ((b * chunks + k) * a.channels + c) * kN, hcs, p);
    float dt[kL], du[kL], acc[kL], dt_sum = 0.f;
#pragma unroll
    for (int i = 0; i < kL; ++i) {
      const bool ok = cvalid && kL * p + i < valid;
      dt[i] = ok ? fast_softplus(to_float(raw[l.dl + own + i * ct]) + bias) : 0.f;
      du[i] = dt[i] * to_float(raw[l.u + own + i * ct]);
      acc[i] = 0.f, dt_sum += dt[i];
    }
    __syncthreads();  // lane-major B and C
#pragma unroll 1
    for (int n = 0; n < kN; ++n) {
      float bv[kL], dA[kL];
      const float a2 = sa2[cl * (kN + 1) + n];
      load_lane(fb, jb + n, p, bw, bv);
#pragma unroll
      for (int i = 0; i < kL; ++i) {
        dA[i] = fast_exp2(dt[i] * a2);
        bv[i] *= du[i];
      }
      // The segment's map h -> A h + B, scanned over the channel's lanes.
      float A = fast_exp2(dt_sum * a2), B = bv[0];
#pragma unroll
      for (int i = 1; i < kL; ++i) B = fmaf(dA[i], B, bv[i]);
      scan_maps<true>(A, B, p);
      const float Ae = __shfl_up_sync(kFull, A, 1, kP), Be = __shfl_up_sync(kFull, B, 1, kP);
      const float Al = __shfl_sync(kFull, A, kP - 1, kP), Bl = __shfl_sync(kFull, B, kP - 1, kP);
      const float hc = hcs[n];
      float h = p == 0 ? hc : fmaf(Ae, hc, Be);  // the state at the segment start
      __syncwarp();
      if (p == 0) hcs[n] = fmaf(Al, hc, Bl);  // ... at the next chunk's start
      if constexpr (!CHUNKS) {
        float cv[kL];
        load_lane(fc, jc + n, p, cw, cv);
#pragma unroll
        for (int i = 0; i < kL; ++i) {
          h = fmaf(dA[i], h, bv[i]);
          acc[i] = fmaf(cv[i], h, acc[i]);
        }
      }
    }
    if constexpr (!CHUNKS) {
      // y = (C.h + D u) silu(z) of the lane's tokens, in place of u; then stored coalesced.
#pragma unroll
      for (int i = 0; i < kL; ++i) {
        T* ut = raw + l.u + own + i * ct;
        float o = fmaf(d_skip, to_float(*ut), acc[i]);
        if (need_z) {
          const float zz = to_float(raw[l.z + own + i * ct]);
          o *= zz * fast_sigmoid(zz);
        }
        *ut = from_float<T>(o);
      }
      __syncthreads();  // y
      const int64_t row0 = b * a.seq + int64_t(k) * kT;
      for (int i = tid; i < kT * ct; i += threads) {
        const int t = i / ct, j = i % ct;
        if (t < valid && j < ncv) y[(row0 + t) * a.ys + c0 + j] = raw[l.u + raw_at<T>(t, j, ct)];
      }
    }
  }
  __syncwarp();
  if (st != nullptr) store_state(st, hcs, p);
}

// One step (seq = 1): four lanes per (batch row, channel), 4 states each; blocks of 256 threads.
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
  const float dt = fast_softplus(to_float(a.delta[b * a.ds + c]) + bias), du = dt * u;
  const T* Bp = a.B + b * a.bs + c / a.gb * kN + 4 * q;
  const T* Cp = a.C + b * a.cs + c / a.gc * kN + 4 * q;
  float p = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float av = -expf(to_float(a.A_log[c * kN + 4 * q + j]));
    h[j] = fmaf(fast_exp2(dt * av * kLog2e), h[j], du * to_float(Bp[j]));
    p = fmaf(to_float(Cp[j]), h[j], p);
  }
  p += __shfl_xor_sync(0xffffffffu, p, 1);
  p += __shfl_xor_sync(0xffffffffu, p, 2);
  if (valid && q == 0) {
    float o = p + (a.D != nullptr ? to_float(a.D[c]) : 0.f) * u;
    if (a.z != nullptr) {
      const float zz = to_float(a.z[b * a.zs + c]);
      o *= zz * fast_sigmoid(zz);
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
  bool accumulate;
};

// One halving step: the lane pair `mask` apart adds its first (hi = false) or second HALF values;
// each lane keeps those sums in v[0, HALF).
template <int HALF>
__device__ __forceinline__ void halve_step(float (&v)[kL], bool hi, int mask) {
#pragma unroll
  for (int j = 0; j < HALF; ++j) {
    const float r = __shfl_xor_sync(kFull, hi ? v[j] : v[j + HALF], mask);
    v[j] = (hi ? v[j + HALF] : v[j]) + r;
  }
}

// Sums v over the warp's channels cl with equal cl >> lev (lev <= 2), halving the values at each
// level: afterwards this lane holds kL >> lev sums, of tokens i = first + j, j < kL >> lev.
__device__ __forceinline__ int halve_sum(float (&v)[kL], int lev, int lane) {
  int first = 0;
  if (lev >= 1) {  // channel bit 0 = lane bit 3
    const bool hi = lane & 8;
    halve_step<kL / 2>(v, hi, 8);
    first = hi ? kL / 2 : 0;
  }
  if (lev >= 2) {  // channel bit 1 = lane bit 4
    const bool hi = lane & 16;
    halve_step<kL / 4>(v, hi, 16);
    first += hi ? kL / 4 : 0;
  }
  return first;
}

__device__ __forceinline__ int partial_index(int slot, int t, int nn) {
  return slot * kPStride + t * kFlush + nn + t / kL;
}

// Writes the sums this lane holds after halve_sum to the partials of state nn.
__device__ __forceinline__ void put_partials(float* part, const float (&v)[kL], int lev, int first,
                                             int slot, int p, int nn) {
#pragma unroll
  for (int j = 0; j < kL; ++j)
    if (j < (kL >> lev)) part[partial_index(slot, p * kL + first + j, nn)] = v[j];
}

// Adds the partials of states [n0, n0 + kFlush) over the slots of each unit of `unit` channels and
// stores dB (or dC) rows: to dst when a unit is a whole group, else to part_out (group sums later).
template <class T>
__device__ __forceinline__ void flush_partials(const float* part, int lev, int unit, int ncv,
                                               int valid, int64_t row0, int64_t c0, int n0,
                                               T* dst, float* part_out, int64_t stride,
                                               int64_t channels, bool accumulate, int ct, int tid,
                                               int threads) {
  const int units = ct / unit, spu = unit >> lev;
  for (int idx = tid; idx < units * kT * kFlush; idx += threads) {
    const int nn = idx % kFlush, t = idx / kFlush % kT, u = idx / (kFlush * kT);
    if (t >= valid || u * unit >= ncv) continue;
    float acc = 0.f;
    for (int s = 0; s < spu; ++s) acc += part[partial_index(u * spu + s, t, nn)];
    const int64_t row = row0 + t, unit_g = (c0 + int64_t(u) * unit) / unit;
    if (part_out == nullptr)
      store_or_add(dst + row * stride + unit_g * kN + n0 + nn, acc, accumulate);
    else part_out[(row * (channels / unit) + unit_g) * kN + n0 + nn] = acc;
  }
}

}  // namespace scan_detail

// grid (tiles, batch), ct * kP threads, layout(a, true).bytes of shared memory.
// dB (and likewise dC) per token and state is a sum over units of unit_b consecutive channels of a
// tile: with unit_b == gb the sum goes to dB (=|+=); else to dB_part[(row * channels / unit_b +
// unit) * 16 + n] for the group-sum kernel.
// 4 blocks of 16 channels per SM (128 registers; a few bytes spill): 15% faster at L than 3
// blocks with 150 registers, 3% slower at S.
template <class T, int CT, bool ASYNC>
__global__ void __launch_bounds__(CT* scan_detail::kP, 64 / CT)
    selective_scan_backward_kernel(const scan_detail::Grads<T> o,
                                   const float* __restrict__ chunk_states,
                                   const scan_detail::Args<T> a) {
  using namespace scan_detail;
  extern __shared__ __align__(16) unsigned char scan_bwd_smem[];
  constexpr int ct = CT, threads = ct * kP;
  const int tid = int(threadIdx.x), lane = tid & 31, p = tid & (kP - 1), cl = tid / kP;
  const int64_t b = blockIdx.y, c0 = int64_t(blockIdx.x) * ct, c = c0 + cl;
  const bool cvalid = c < a.channels;
  const int ncv = int(std::min<int64_t>(ct, a.channels - c0));
  const Layout l = layout(a, true);
  T* raw0 = reinterpret_cast<T*>(scan_bwd_smem);
  float* f = reinterpret_cast<float*>(scan_bwd_smem + l.f32);
  float *fb = f + l.fb, *fc = f + l.fc, *pb = f + l.pb, *pc = f + l.pc;
  float *fdu = f + l.s1, *fdd = f + l.s4, *fdz = f + l.yss, *sa2 = f + l.a2;
  const bool has_z = a.z != nullptr, need_dz = has_z && o.dz != nullptr;
  const bool want_b = o.dB != nullptr || o.dB_part != nullptr;
  const bool want_c = o.dC != nullptr || o.dC_part != nullptr;
  const int jb = cvalid ? int(c / a.gb - c0 / a.gb) * kN : 0;
  const int jc = cvalid ? int(c / a.gc - c0 / a.gc) * kN : 0;
  const int bw = a.nbg * kN, cw = a.ncg * kN;
  const int slot_b = cl >> a.lev_b, slot_c = cl >> a.lev_c;
  const int own = raw_at<T>(kL * p, cl, ct);  // the lane's token 8p + i at own + i * ct
  const float bias =
      cvalid && a.delta_bias != nullptr ? a.bias_scale * to_float(a.delta_bias[c]) : 0.f;
  const float d_skip = cvalid && a.D != nullptr ? to_float(a.D[c]) : 0.f;

  // a log2(e) per channel and state (shared memory: registers are scarce here). Per channel and
  // state [ct][17]: the sums of dt G t1 (dA, times a at the end), and the adjoint flowing into the
  // last token of the chunk from the next one; lane 0 of the channel updates both.
  load_decay_rates(sa2, a, c0, ct, tid, threads);
  float* dAs = f + l.sdA + cl * (kN + 1);
  float* kcs = f + l.skc + cl * (kN + 1);
  if (p == 0)
    for (int n = 0; n < kN; ++n) dAs[n] = kcs[n] = 0.f;
  float dD_sum = 0.f, dbias_sum = 0.f;  // of the lane's tokens

  const int chunks = int((a.seq + kT - 1) / kT);
  const TileColumns tc = tile_columns(a, c0, ncv);
  issue_chunk<T, ASYNC, CT>(raw0 + ((chunks - 1) & 1) * l.buffer, l, a, tc, b, c0, ncv, chunks - 1,
                            true, has_z, true, tid, threads);
  for (int k = chunks - 1; k >= 0; --k) {
    T* raw = raw0 + (k & 1) * l.buffer;
    const int valid = int(std::min<int64_t>(kT, a.seq - int64_t(k) * kT));
    const int64_t row0 = b * a.seq + int64_t(k) * kT;
    const float* hstart = chunk_states + ((b * chunks + k) * a.channels + (cvalid ? c : 0)) * kN;
    if constexpr (ASYNC) cp_async_wait_all();
    __syncthreads();  // chunk k in shared memory; everyone is done with chunk k + 1
    if (k > 0)
      issue_chunk<T, ASYNC, CT>(raw0 + ((k - 1) & 1) * l.buffer, l, a, tc, b, c0, ncv, k - 1,
                                true, has_z, true, tid, threads);
    columns_to_lanes<T, CT>(fb, raw + l.b, a.nbg, cl, p);
    columns_to_lanes<T, CT>(fc, raw + l.c, a.ncg, cl, p);
    // dt, dt u and dy = dout silu(z) of the lane's tokens (zero past the valid ones).
    float dt[kL], dtu[kL], dy[kL], s1[kL], s4[kL], yss[kL], dt_sum = 0.f;
#pragma unroll
    for (int i = 0; i < kL; ++i) {
      const int r = own + i * ct;
      const bool ok = cvalid && kL * p + i < valid;
      dt[i] = ok ? fast_softplus(to_float(raw[l.dl + r]) + bias) : 0.f;
      dtu[i] = dt[i] * to_float(raw[l.u + r]);
      dy[i] = ok ? to_float(raw[l.g + r]) : 0.f;
      if (has_z) {
        const float zz = to_float(raw[l.z + r]);
        dy[i] *= zz * fast_sigmoid(zz);
      }
      s1[i] = s4[i] = yss[i] = 0.f, dt_sum += dt[i];
    }
    __syncthreads();  // lane-major B and C
#pragma unroll 2
    for (int n = 0; n < kN; ++n) {
      float bb[kL], cv[kL], dA[kL], h[kL], t1[kL];
      const float a2 = sa2[cl * (kN + 1) + n];
      load_lane(fb, jb + n, p, bw, bb);
      load_lane(fc, jc + n, p, cw, cv);
      // Forward: decays, the segment map, the state at the segment start, the 8 states.
      float B = 0.f;
#pragma unroll
      for (int i = 0; i < kL; ++i) {
        dA[i] = fast_exp2(dt[i] * a2);
        B = fmaf(dA[i], B, dtu[i] * bb[i]);
      }
      const float prod = fast_exp2(dt_sum * a2);
      float A = prod;
      scan_maps<true>(A, B, p);
      const float h0 = cvalid ? hstart[n] : 0.f;
      const float Ae = __shfl_up_sync(kFull, A, 1, kP), Be = __shfl_up_sync(kFull, B, 1, kP);
      float hp = p == 0 ? h0 : fmaf(Ae, h0, Be);
#pragma unroll
      for (int i = 0; i < kL; ++i) {
        t1[i] = dA[i] * hp;
        hp = h[i] = fmaf(dtu[i], bb[i], t1[i]);
      }
      // Backward: the segment map cin -> cout (G_i = dy C + cin or e^(dt a) G_(i+1); cout = e^(dt
      // a) G_0), scanned from the last lane; Kc carries it into the previous chunk.
      float Ar = prod, Br = 0.f;
#pragma unroll
      for (int i = kL - 1; i >= 0; --i) Br = dA[i] * fmaf(dy[i], cv[i], Br);
      scan_maps<false>(Ar, Br, p);
      const float An = __shfl_down_sync(kFull, Ar, 1, kP), Bn = __shfl_down_sync(kFull, Br, 1, kP);
      const float A0 = __shfl_sync(kFull, Ar, 0, kP), B0 = __shfl_sync(kFull, Br, 0, kP);
      const float Kc = kcs[n];
      float x = p == kP - 1 ? Kc : fmaf(An, Kc, Bn);
      // vb = dt u G (dB before the sum over channels) takes t1's registers, vc = dy h (dC) h's.
      float(&vb)[kL] = t1;
      float(&vc)[kL] = h;
      float dAn = 0.f;
#pragma unroll
      for (int i = kL - 1; i >= 0; --i) {
        const float G = fmaf(dy[i], cv[i], x);
        x = dA[i] * G;
        const float pg = G * t1[i];
        s1[i] = fmaf(G, bb[i], s1[i]);
        s4[i] = fmaf(a2, pg, s4[i]);
        dAn = fmaf(dt[i], pg, dAn);
        yss[i] = fmaf(cv[i], h[i], yss[i]);
        vb[i] = dtu[i] * G;
        vc[i] = dy[i] * h[i];
      }
#pragma unroll
      for (int d = 1; d < kP; d *= 2) dAn += __shfl_xor_sync(kFull, dAn, d, kP);
      __syncwarp();
      if (p == 0) kcs[n] = fmaf(A0, Kc, B0), dAs[n] += dAn;
      const int nn = n % kFlush;
      if (want_b) {
        const int first = halve_sum(vb, a.lev_b, lane);
        put_partials(pb, vb, a.lev_b, first, slot_b, p, nn);
      }
      if (want_c) {
        const int first = halve_sum(vc, a.lev_c, lane);
        put_partials(pc, vc, a.lev_c, first, slot_c, p, nn);
      }
      if (nn == kFlush - 1) {
        __syncthreads();  // partials of kFlush states
        if (want_b)
          flush_partials(pb, a.lev_b, a.unit_b, ncv, valid, row0, c0, n - nn, o.dB, o.dB_part,
                         a.bs, a.channels, o.accumulate, ct, tid, threads);
        if (want_c)
          flush_partials(pc, a.lev_c, a.unit_c, ncv, valid, row0, c0, n - nn, o.dC, o.dC_part,
                         a.cs, a.channels, o.accumulate, ct, tid, threads);
        __syncthreads();  // before the partials are rewritten (or S1, S4, C.h take their place)
      }
    }
    // du, d(delta) and dz of the lane's tokens (in the registers of S1, S4 and C.h), staged
    // lane-major for coalesced stores.
#pragma unroll
    for (int i = 0; i < kL; ++i) {
      const int r = own + i * ct;
      const bool ok = cvalid && kL * p + i < valid;
      const float u = to_float(raw[l.u + r]);
      const float draw = fmaf(u, s1[i], s4[i] * (1.f / kLog2e)) *
                         fast_sigmoid(to_float(raw[l.dl + r]) + bias);  // d(delta)
      if (ok) dD_sum = fmaf(dy[i], u, dD_sum), dbias_sum += draw;
      s1[i] = fmaf(d_skip, dy[i], dt[i] * s1[i]);  // du
      s4[i] = draw;
      if (need_dz) {  // dz = dout (C.h + D u) silu'(z)
        const float zz = to_float(raw[l.z + r]), sz = fast_sigmoid(zz);
        yss[i] = to_float(raw[l.g + r]) * fmaf(d_skip, u, yss[i]) * sz * (1.f + zz * (1.f - sz));
      }
    }
    store_lane(fdu, cl, p, ct, s1);
    store_lane(fdd, cl, p, ct, s4);
    store_lane(fdz, cl, p, ct, yss);
    __syncthreads();  // du, d(delta), dz
    for (int i = tid; i < kT * ct; i += threads) {
      const int t = i / ct, j = i % ct;
      if (t >= valid || j >= ncv) continue;
      const int e = lane_index(t & (kL - 1), j, t / kL, ct);
      const int64_t row = row0 + t, cc = c0 + j;
      if (o.du != nullptr) store_or_add(o.du + row * a.us + cc, fdu[e], o.accumulate);
      if (o.ddelta != nullptr) store_or_add(o.ddelta + row * a.ds + cc, fdd[e], o.accumulate);
      if (need_dz) store_or_add(o.dz + row * a.zs + cc, fdz[e], o.accumulate);
    }
  }
  if (o.params == nullptr) return;  // uniform
  // dA_log = a sum(dt G t1); dD and ddelta_bias summed over the channel's lanes by a butterfly.
#pragma unroll
  for (int d = 1; d < kP; d *= 2) {
    dD_sum += __shfl_xor_sync(kFull, dD_sum, d, kP);
    dbias_sum += __shfl_xor_sync(kFull, dbias_sum, d, kP);
  }
  __syncwarp();  // lane 0's last dA sums
  if (!cvalid) return;
  float* prm = o.params + (b * a.channels + c) * kParams;
  for (int n = 2 * p; n < 2 * p + 2; ++n) prm[n] = dAs[n] * sa2[cl * (kN + 1) + n] * (1.f / kLog2e);
  if (p == 0) prm[kN] = dD_sum, prm[kN + 1] = a.bias_scale * dbias_sum;
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
    store_or_add(dst + row * stride + k, v, accumulate);
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
  store_or_add(dst, v, accumulate);
}

namespace scan_detail {

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

// Shuffle levels of the backward's dB / dC sums: the warp's channels cl with equal cl >> lev are
// in one unit of `unit` channels.
inline int shuffle_levels(int unit) { return unit % 4 == 0 ? 2 : unit % 2 == 0 ? 1 : 0; }

// Picks the tile (16 channels, or 8 when the tiles' B / C rows would not fit) and its layout.
template <class T>
Layout choose_tile(Args<T>& a, bool backward) {
  for (int ct : {16, 8}) {
    a.ct = ct;
    a.nbg = groups_per_tile(a.channels, a.gb, ct);
    a.ncg = groups_per_tile(a.channels, a.gc, ct);
    a.unit_b = int(std::gcd<int64_t>(ct, a.gb)), a.unit_c = int(std::gcd<int64_t>(ct, a.gc));
    a.lev_b = shuffle_levels(a.unit_b), a.lev_c = shuffle_levels(a.unit_c);
    const Layout l = layout(a, backward);
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

// Calls f(std::integral_constant<int, ct>) for the tile width the kernels are instantiated for.
template <class F>
void with_tile_width(int ct, F&& f) {
  if (ct == 16) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 8>{});
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
  const unsigned threads = unsigned(a.ct * kP);
  const bool async = can_copy_async(a, chunk_states == nullptr, false);
  auto go = [&](auto kernel) {
    allow_smem(kernel, l.bytes);
    kernel<<<grid, threads, size_t(l.bytes), stream>>>(y, chunk_states, a, states.data,
                                                         states.slots, states.n_slots);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_forward_kernel");
  };
  with_tile_width(a.ct, [&](auto ct) {
    constexpr int CT = decltype(ct)::value;
    if (chunk_states != nullptr) {
      if (async) go(selective_scan_forward_kernel<T, CT, true, true>);
      else go(selective_scan_forward_kernel<T, CT, false, true>);
    } else {
      if (async) go(selective_scan_forward_kernel<T, CT, true, false>);
      else go(selective_scan_forward_kernel<T, CT, false, false>);
    }
  });
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
    const int64_t threads = s.batch * s.channels * kStepLanes;
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
  const int64_t chunks = (s.seq + kT - 1) / kT;
  auto chunk_states = Tensor<float, Cuda>::empty(Shape{s.batch * chunks * s.channels * kN});
  launch_forward<T>(nullptr, chunk_states.data(), a, SelectiveStates{}, stream);

  // 2. The backward walk.
  const Layout l = choose_tile(a, true);
  Grads<T> o{};
  o.du = gr.du, o.ddelta = gr.ddelta, o.dz = z != nullptr ? gr.dz : nullptr;
  o.dB = gr.dB, o.dC = gr.dC;
  o.accumulate = gr.accumulate_inputs;
  Tensor<float, Cuda> dB_part, dC_part, params;
  if (gr.dB && a.unit_b != a.gb) {
    dB_part = Tensor<float, Cuda>::empty(Shape{rows * (s.channels / a.unit_b) * kN});
    o.dB_part = dB_part.data();
  }
  if (gr.dC && a.unit_c != a.gc) {
    dC_part = Tensor<float, Cuda>::empty(Shape{rows * (s.channels / a.unit_c) * kN});
    o.dC_part = dC_part.data();
  }
  if (any_param) {
    params = Tensor<float, Cuda>::empty(Shape{s.batch * s.channels * kParams});
    o.params = params.data();
  }
  const dim3 grid(unsigned((a.channels + a.ct - 1) / a.ct), unsigned(a.batch));
  const unsigned threads = unsigned(a.ct * kP);
  auto go = [&](auto kernel) {
    allow_smem(kernel, l.bytes);
    kernel<<<grid, threads, size_t(l.bytes), stream>>>(o, chunk_states.data(), a);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_backward_kernel");
  };
  const bool async = can_copy_async(a, true, true);
  with_tile_width(a.ct, [&](auto ct) {
    constexpr int CT = decltype(ct)::value;
    if (async) go(selective_scan_backward_kernel<T, CT, true>);
    else go(selective_scan_backward_kernel<T, CT, false>);
  });

  // 3. Group sums of partials, parameter sums over the batch.
  if (o.dB_part != nullptr) {
    selective_scan_group_sum_kernel<T>
        <<<grid_stride_blocks(rows * s.b_groups * kN, 256), 256, 0, stream>>>(
            gr.dB, o.dB_part, rows, s.b_groups, a.gb / a.unit_b, s.bs(), gr.accumulate_inputs);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_group_sum_kernel (dB)");
  }
  if (o.dC_part != nullptr) {
    selective_scan_group_sum_kernel<T>
        <<<grid_stride_blocks(rows * s.c_groups * kN, 256), 256, 0, stream>>>(
            gr.dC, o.dC_part, rows, s.c_groups, a.gc / a.unit_c, s.cs(), gr.accumulate_inputs);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_group_sum_kernel (dC)");
  }
  if (any_param) {
    selective_scan_params_kernel<T>
        <<<grid_stride_blocks(s.channels * kParams, 256), 256, 0, stream>>>(
            gr.ddelta_bias, gr.dA_log, gr.dD, o.params, s.batch, s.channels, gr.accumulate_params);
    MIL_CUDA_CHECK_LAUNCH("selective_scan_params_kernel");
  }
}

}  // namespace mil::cuda
