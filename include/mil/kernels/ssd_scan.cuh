#pragma once
// The Mamba-2 SSD scan on the GPU (contract and CPU reference in ssd_scan.hpp). T = float or bf16
// at the interface; the products run on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation),
// states, decays and every sum are fp32. float inputs are rounded to bf16 for the products (the
// float path has bf16 accuracy, ~1e-2 normalised error, not fp32 accuracy).
// Supported (head_dim, d_state): (16,16), (32,32), (64,64), (128,128); others throw.
//
// Chunked algorithm (chunks of Q = 64 tokens; L_t = cumulative sum of dt_s a within the chunk,
// S0 = the state at the chunk start):
//   y_t   = sum_{s<=t} e^(L_t - L_s) dt_s (C_t.B_s) x_s + e^(L_t) S0 C_t + D x_t
//   S_end = e^(L_last) S0 + sum_s e^(L_last - L_s) dt_s x_s B_s^T
// Forward: one block per (head, sequence) walks the chunks in order with the state (head_dim x
// d_state) in registers as mma accumulators, so states never go to global memory; the next
// chunk's x, B and C are copied into shared memory (cp.async) while the current one computes.
// Per chunk: M = mask(e^(L_t-L_s) dt_s C B^T) into shared memory, y = e^L (C S0^T) + M X + D x,
// then S = e^(L_last) S + X^T (w B) with w_s = e^(L_last - L_s) dt_s.
// Chunk-parallel forward (mamba_ssm's chunk state / state passing / chunk scan), taken when the
// sequential one's batch * heads blocks are at most half the SMs and there are two chunks or more
// (a batch-1 prefill: 9 heads would use 9 of 132 SMs), or when asked (SsdForwardPath); the same
// kernel in two one-chunk passes (Pass below), grid (chunks, heads, batch), and a pass between:
//   1. each chunk's end state from a zero start, X^T (w B), and its decay e^(L_last), fp32 into a
//      workspace [batch, heads, chunks, P, N] (+ [batch, heads, chunks]);
//   2. one thread per state entry walks the chunks: S_start[c] = e^(L_last[c-1]) S_start[c-1] +
//      S_local[c-1] (in place), from the slot's state or zero; the final state goes to the slot;
//   3. each chunk's y as in the sequential kernel, from its start state, without the update.
// The workspace comes from the caching allocator (stream-ordered); the automatic choice keeps the
// sequential path while the stream is being captured and past kMaxChunkWorkBytes.
// Decode (seq = 1 with states): one thread per 4 state entries, a row's threads reduce y.
// Backward (no states): a forward pass of the same kernel stores the chunk-start states (bf16);
// then one block per (head, sequence) walks the chunks backwards with H = dLoss/dS_end in
// registers (H_prev = e^(L_last) H + dY^T diag(e^L) C) and computes, with Z = mask(e^(L_t-L_s)
// dt_s dY X^T) and M2 = mask(e^(L_t-L_s) C B^T):
//   U  = M2^T dY + diag(e^(L_last-L)) B H^T,  dx = D dy + dt U,  d(dt)_direct = x.U
//   dB = Z^T C + diag(dt e^(L_last-L)) X H,   dC = diag(e^L) dY S0 + Z B
//   dLoss/dL_t (then a reverse cumulative sum gives dLoss/d(dt_s a)) from the row and column sums
//   of T = Z o (C B^T), e^(L_t) dy_t.(S0 C_t), the S_end terms and x.(H B) terms.
// dx and dB of GQA groups with several heads go through fp32 per-head buffers summed in a fixed
// order; parameter gradients are per-(sequence, head) partials summed in a fixed order: results
// are bitwise reproducible run to run.
//
// Inputs are read with cp.async (16 bytes): bf16 x, B, C and dy whose base is 16-byte aligned and
// whose token stride is a multiple of 8 elements are read in place; otherwise (and always for
// float) they are first packed into bf16 temporaries. States and slots live on the device; slots
// are not validated against n_slots on the host (the caller checks them where they come from); a
// row whose slot is out of range starts from a zero state and stores none.
#include "../core/config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/kernels/ssd_scan.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_launch.hpp"
#include "../core/cuda_ptx.cuh"
#include "../core/cuda_vec.cuh"
#include "../core/cuda_warp.cuh"
#include "../core/dtype.hpp"
#include "../core/math.hpp"
#include "../core/tensor.hpp"
#include "ssd_scan.hpp"

namespace mil::cuda {

// Which algorithm ssd_scan_forward runs (a decode step, seq = 1 with states, always takes the
// decode kernel).
enum class SsdForwardPath {
  automatic,   // chunk-parallel where the sequential one leaves most SMs idle (use_chunk_parallel)
  sequential,  // one block per (sequence, head) walks the chunks in order
  chunked,     // chunk-parallel: blocks per (chunk, head, sequence), a pass over the chunks between
};

namespace ssd_detail {

constexpr int kQ = 64;  // chunk length
// Shared-memory row stride in elements: 16 bytes of padding make the 8 rows of an ldmatrix phase
// fall into different bank quads.
template <int D> constexpr int kLd = D + 8;
// Column splits of a [Q x P] output over the warps: head_dim 128 uses 8 warps (each owns 16 rows
// of the 128-row state), smaller heads 4 (each of the 4 row groups of a chunk).
template <int P> constexpr int kSplit = P >= 128 ? 2 : 1;
template <int P> constexpr int kWarps = 4 * kSplit<P>;
template <int P> constexpr int kThreads = 32 * kWarps<P>;

// NBUF: chunk tiles of x, B, C, L and dt per block (2: double-buffered across chunks).
template <int P, int N, int NBUF = 2> constexpr size_t forward_smem_bytes() {
  return size_t(NBUF * kQ * kLd<P> + 2 * NBUF * kQ * kLd<N> + kQ * kLd<N> + P * kLd<N> +
                kQ * kLd<kQ>) * 2 +
         size_t(2 * NBUF * kQ) * 4;
}
// The sm_90 limit of dynamic shared memory per block (227 KiB).
constexpr size_t kMaxSmem = 232448;
static_assert(forward_smem_bytes<128, 128>() <= kMaxSmem, "forward tiles exceed shared memory");

template <int P, int N> constexpr size_t backward_smem_bytes() {
  return size_t(2 * kQ * kLd<P> + 3 * kQ * kLd<N> + 2 * P * kLd<N> + 2 * kQ * kLd<kQ>) * 2 +
         size_t(17 * kQ + 32) * 4;
}

static_assert(backward_smem_bytes<128, 128>() <= kMaxSmem, "backward tiles exceed shared memory");

// ---- Tile helpers ----

__device__ __forceinline__ void put2(bf16* tile, int ld, int row, int col, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(tile + row * ld + col) = pack_bf16x2(lo, hi);
}
__device__ __forceinline__ float sm(const bf16* tile, int ld, int row, int col) {
  return to_float(tile[row * ld + col]);
}

template <int NT>
__device__ __forceinline__ void zero(float (&c)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
}

// c (16 rows from m0, 8 NT columns from n0) += A B over k in [k_begin, k_end) (multiples of 16).
// A_KM: A is stored [k][m] (transposed by ldmatrix), else [m][k]. B_NK: B is stored [n][k], else
// [k][n] (transposed by ldmatrix).
template <bool A_KM, bool B_NK, int NT>
__device__ __forceinline__ void mma_tile(float (&c)[NT][4], const bf16* a, int lda, int m0,
                                         const bf16* b, int ldb, int n0, int k_begin, int k_end,
                                         int lane) {
  static_assert(NT % 2 == 0, "mma_tile: pairs of 8-column tiles");
  const int mi = lane >> 3, r = lane & 7;  // this lane addresses row r of 8x8 matrix mi
  for (int k0 = k_begin; k0 < k_end; k0 += 16) {
    uint32_t af[4];
    if constexpr (A_KM)
      ldmatrix_x4_trans(af, a + (k0 + (mi >> 1) * 8 + r) * lda + m0 + (mi & 1) * 8);
    else ldmatrix_x4(af, a + (m0 + (mi & 1) * 8 + r) * lda + k0 + (mi >> 1) * 8);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      const int n = n0 + np * 16;
      uint32_t bf[4];  // n-tile n: bf[0], bf[1]; n-tile n + 8: bf[2], bf[3]
      if constexpr (B_NK) ldmatrix_x4(bf, b + (n + (mi >> 1) * 8 + r) * ldb + k0 + (mi & 1) * 8);
      else ldmatrix_x4_trans(bf, b + (k0 + (mi & 1) * 8 + r) * ldb + n + (mi >> 1) * 8);
      mma_bf16_m16n8k16(c[2 * np], af, bf[0], bf[1]);
      mma_bf16_m16n8k16(c[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// ROWS rows of COLS bf16 (row r at base + r * stride) into a padded tile; rows >= valid are zeros.
template <int COLS, int ROWS, int THREADS>
__device__ __forceinline__ void load_rows(bf16* tile, const bf16* base, int64_t stride,
                                          int valid) {
  constexpr int kPieces = COLS / 8;
  for (int i = int(threadIdx.x); i < ROWS * kPieces; i += THREADS) {
    const int r = i / kPieces, c = i % kPieces;
    const bool ok = r < valid;
    cp_async_16(tile + r * kLd<COLS> + c * 8, ok ? base + int64_t(r) * stride + c * 8 : base, ok);
  }
}

// Inclusive prefix sum over the lanes.
__device__ __forceinline__ float warp_prefix(float v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}
// Inclusive suffix sum over the lanes.
__device__ __forceinline__ float warp_suffix(float v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_down_sync(0xffffffffu, v, o);
    if (lane + o < 32) v += u;
  }
  return v;
}

// Matrix inputs (bf16, possibly packed copies) with their token strides.
struct Inputs {
  const bf16 *x, *B, *C, *dy;
  int64_t xs, bs, cs, dys;
};

// SsdShape with its strides resolved (its accessors are host-only).
struct Geo {
  int64_t batch, seq, heads, groups, xs, bs, cs, dts, ys;
};
inline Geo geo_of(const SsdShape& s) {
  return {s.batch, s.seq, s.heads, s.groups, s.xs(), s.bs(), s.cs(), s.dts(), s.ys()};
}

template <class T>
struct Params {
  const T *dt, *dt_bias, *A_log, *D;
  int64_t dts;
};

// Warp 0: softplus(dt + bias) and the inclusive cumsum of dt a over the 64 rows of a chunk, rows
// lane and lane + 32; rows >= valid get dt = 0 (no input, no decay).
__device__ __forceinline__ void chunk_decays(float* Lc, float* dtc, float* sig, float raw0,
                                             float raw1, int valid, float a, int lane) {
  const bool ok0 = lane < valid, ok1 = lane + 32 < valid;
  const float d0 = ok0 ? softplus(raw0) : 0.f, d1 = ok1 ? softplus(raw1) : 0.f;
  const float l0 = warp_prefix(d0 * a, lane);
  const float l1 = warp_prefix(d1 * a, lane) + __shfl_sync(0xffffffffu, l0, 31);
  Lc[lane] = l0, Lc[lane + 32] = l1;
  dtc[lane] = d0, dtc[lane + 32] = d1;
  if (sig != nullptr) {
    sig[lane] = 1.f / (1.f + expf(-raw0));
    sig[lane + 32] = 1.f / (1.f + expf(-raw1));
  }
}

// ---- forward ----

// What a forward block does.
//   scan:         grid (heads, batch); every chunk of the sequence in order: y, the state from and
//                 to the slot (when states are given).
//   store_chunks: grid (heads, batch); every chunk in order, no y: the state at the start of every
//                 chunk (bf16) to chunk_states[((b * heads + h) * n_chunks + c) * P * N] (the
//                 backward's recomputation).
//   chunk_state:  grid (chunks, heads, batch); chunk c only, from a zero state, no y: its end state
//                 (fp32) to work[((b * heads + h) * n_chunks + c) * P * N] and its decay
//                 e^(L_last) to decay[(b * heads + h) * n_chunks + c].
//   chunk_output: grid (chunks, heads, batch); chunk c only, from the start state in work (fp32,
//                 same index): y only, no state update.
// The two chunk passes keep one chunk's tiles (no double buffer): forward_smem_bytes<P, N, 1>().
enum class Pass { scan, store_chunks, chunk_state, chunk_output };
template <Pass PASS> constexpr bool kOneChunk = PASS == Pass::chunk_state || PASS == Pass::chunk_output;
template <Pass PASS> constexpr int kBuffers = kOneChunk<PASS> ? 1 : 2;

// kThreads<P> threads, forward_smem_bytes<P, N, kBuffers<PASS>>() shared bytes; grid per Pass.
// The one-chunk passes ask for two blocks per SM (head_dim 128: at most 128 registers).
template <class T, int P, int N, Pass PASS>
__global__ void __launch_bounds__(kThreads<P>, kOneChunk<PASS> ? 2 : 0)
    ssd_forward_kernel(T* __restrict__ y, bf16* __restrict__ chunk_states,
                       float* __restrict__ work, float* __restrict__ decay, const Inputs in,
                       const Params<T> pr, const Geo s, float* __restrict__ states,
                       const int32_t* __restrict__ slots, int64_t n_slots) {
  constexpr int CH = kSplit<P>, THREADS = kThreads<P>, NBUF = kBuffers<PASS>;
  constexpr bool ONE = kOneChunk<PASS>;
  constexpr bool WRITES_Y = PASS == Pass::scan || PASS == Pass::chunk_output;
  constexpr bool UPDATES = PASS != Pass::chunk_output;  // S = e^(L_last) S + X^T (w B)
  constexpr int LP = kLd<P>, LN = kLd<N>, LQ = kLd<kQ>;
  constexpr int NTS = N / 8;              // state columns per warp (all of d_state)
  constexpr int NTY = P / CH / 8;         // y columns per warp
  constexpr int NTM = kQ / CH / 8;        // M columns per warp
  extern __shared__ __align__(16) unsigned char ssd_fwd_smem[];
  bf16* xs = reinterpret_cast<bf16*>(ssd_fwd_smem);  // [NBUF][Q][LP]
  bf16* bsm = xs + NBUF * kQ * LP;                   // [NBUF][Q][LN]
  bf16* csm = bsm + NBUF * kQ * LN;                  // [NBUF][Q][LN]
  bf16* bw = csm + NBUF * kQ * LN;                   // [Q][LN]: w_s B_s
  bf16* ss = bw + kQ * LN;                           // [P][LN]: chunk-start state
  bf16* ms = ss + P * LN;                            // [Q][LQ]: M
  float* Lf = reinterpret_cast<float*>(ms + kQ * LQ);  // [NBUF][Q]
  float* dtf = Lf + NBUF * kQ;                         // [NBUF][Q]

  const int h = int(ONE ? blockIdx.y : blockIdx.x), b = int(ONE ? blockIdx.z : blockIdx.y);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int rg = warp % 4, ch = warp / 4;  // row group (16 rows of a chunk), column split
  const bool owns = warp < P / 16;         // owns state rows 16 warp .. 16 warp + 15
  const int64_t seq = s.seq, grp = h / (s.heads / s.groups);
  const int n_chunks = int((seq + kQ - 1) / kQ);
  // The chunks this block walks: all of them, or chunk blockIdx.x.
  const int c_begin = ONE ? int(blockIdx.x) : 0, c_end = ONE ? c_begin + 1 : n_chunks;
  const int64_t row0 = int64_t(b) * seq;
  const float a = -expf(to_float(pr.A_log[h]));
  const float bias = to_float(pr.dt_bias[h]);
  const float dskip = pr.D != nullptr ? to_float(pr.D[h]) : 0.f;
  const bf16* xg = in.x + row0 * in.xs + grp * P;
  const bf16* bg = in.B + row0 * in.bs + grp * N;
  const bf16* cg = in.C + row0 * in.cs + int64_t(h) * N;

  // The fp32 state this block starts from (null: zero) and the one it leaves its state in (null:
  // none).
  const float* state_in = nullptr;
  float* state_out = nullptr;
  if constexpr (PASS == Pass::scan) {
    if (states != nullptr) {
      const int64_t slot = slots[b];
      if (slot >= 0 && slot < n_slots) state_out = states + (slot * s.heads + h) * P * N;
      state_in = state_out;
    }
  } else if constexpr (ONE) {
    float* w = work + ((int64_t(b) * s.heads + h) * n_chunks + c_begin) * P * N;
    if constexpr (PASS == Pass::chunk_state) state_out = w;
    else state_in = w;
  }
  float st[NTS][4];  // state rows 16 warp + g (+8), columns 8j + 2 t4 (+1)
  zero(st);
  if (state_in != nullptr && owns)
#pragma unroll
    for (int j = 0; j < NTS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        st[j][e] = state_in[(16 * warp + g + 8 * (e >> 1)) * N + 8 * j + 2 * t4 + (e & 1)];

  auto issue = [&](int c) {
    const int buf = c & (NBUF - 1);
    const int valid = int(std::min<int64_t>(kQ, seq - int64_t(c) * kQ));
    const int64_t t0 = int64_t(c) * kQ;
    load_rows<P, kQ, THREADS>(xs + buf * kQ * LP, xg + t0 * in.xs, in.xs, valid);
    load_rows<N, kQ, THREADS>(bsm + buf * kQ * LN, bg + t0 * in.bs, in.bs, valid);
    if (WRITES_Y)
      load_rows<N, kQ, THREADS>(csm + buf * kQ * LN, cg + t0 * in.cs, in.cs, valid);
    cp_async_commit();
  };
  // Warp 0 keeps the raw step sizes of the next chunk in registers (their latency hides behind
  // the current chunk).
  float raw0 = 0.f, raw1 = 0.f;
  auto fetch_dt = [&](int c) {
    const int64_t t = int64_t(c) * kQ + lane;
    raw0 = t < seq ? to_float(pr.dt[(row0 + t) * pr.dts + h]) + bias : 0.f;
    raw1 = t + 32 < seq ? to_float(pr.dt[(row0 + t + 32) * pr.dts + h]) + bias : 0.f;
  };
  if (c_begin < c_end) issue(c_begin);
  if (warp == 0) fetch_dt(c_begin);

  for (int c = c_begin; c < c_end; ++c) {
    const int buf = c & (NBUF - 1);
    const int64_t t0 = int64_t(c) * kQ;
    const int valid = int(std::min<int64_t>(kQ, seq - t0));
    float* Lc = Lf + buf * kQ;
    float* dtc = dtf + buf * kQ;
    if (warp == 0) {
      chunk_decays(Lc, dtc, nullptr, raw0, raw1, valid, a, lane);
      if (c + 1 < c_end) fetch_dt(c + 1);
    }
    cp_async_wait_all();
    __syncthreads();  // chunk c in shared memory; every warp is done with chunk c - 1
    if (c + 1 < c_end) issue(c + 1);

    const bf16* xc = xs + buf * kQ * LP;
    const bf16* bc = bsm + buf * kQ * LN;
    const bf16* cc = csm + buf * kQ * LN;
    const float l_last = Lc[kQ - 1];
    if (UPDATES) {  // w_s B_s for the state update
      for (int i = int(threadIdx.x); i < kQ * N / 2; i += THREADS) {
        const int r = i / (N / 2), col = 2 * (i % (N / 2));
        const float w = __expf(l_last - Lc[r]) * dtc[r];
        put2(bw, LN, r, col, w * sm(bc, LN, r, col), w * sm(bc, LN, r, col + 1));
      }
    }
    if (owns) {
      if (PASS == Pass::store_chunks) {
        bf16* dst = chunk_states + ((int64_t(b) * s.heads + h) * n_chunks + c) * P * N;
#pragma unroll
        for (int j = 0; j < NTS; ++j)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf)
            *reinterpret_cast<uint32_t*>(dst + (16 * warp + g + 8 * hf) * N + 8 * j + 2 * t4) =
                pack_bf16x2(st[j][2 * hf], st[j][2 * hf + 1]);
      } else if (WRITES_Y) {
#pragma unroll
        for (int j = 0; j < NTS; ++j)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf)
            put2(ss, LN, 16 * warp + g + 8 * hf, 8 * j + 2 * t4, st[j][2 * hf], st[j][2 * hf + 1]);
      }
    }
    if (WRITES_Y) {
      // M = mask(e^(L_t - L_s) dt_s C B^T): rows 16 rg.., columns ch * Q / CH..
      float cb[NTM][4];
      zero(cb);
      const int s0 = ch * (kQ / CH);
      if (s0 <= 16 * rg + 15) mma_tile<false, true>(cb, cc, LN, 16 * rg, bc, LN, s0, 0, N, lane);
#pragma unroll
      for (int j = 0; j < NTM; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int t = 16 * rg + g + 8 * hf, sc = s0 + 8 * j + 2 * t4;
          float v[2];
#pragma unroll
          for (int e = 0; e < 2; ++e)
            v[e] = sc + e <= t ? cb[j][2 * hf + e] * __expf(Lc[t] - Lc[sc + e]) * dtc[sc + e] : 0.f;
          put2(ms, LQ, t, sc, v[0], v[1]);
        }
    }
    __syncthreads();  // bw, ss, ms written

    if (WRITES_Y) {
      // y = e^(L_t) C S0^T + M X + D x: rows 16 rg.., columns p0..
      const int p0 = ch * (P / CH);
      float acc[NTY][4];
      zero(acc);
      mma_tile<false, true>(acc, cc, LN, 16 * rg, ss, LN, p0, 0, N, lane);
      const int ta = 16 * rg + g, tb = ta + 8;
      const float ea = __expf(Lc[ta]), eb = __expf(Lc[tb]);
#pragma unroll
      for (int j = 0; j < NTY; ++j) {
        acc[j][0] *= ea, acc[j][1] *= ea, acc[j][2] *= eb, acc[j][3] *= eb;
      }
      mma_tile<false, false>(acc, ms, LQ, 16 * rg, xc, LP, p0, 0, 16 * (rg + 1), lane);
#pragma unroll
      for (int j = 0; j < NTY; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int t = hf ? tb : ta, p = p0 + 8 * j + 2 * t4;
          if (t < valid) {
            T* yr = y + (row0 + t0 + t) * s.ys + int64_t(h) * P + p;
            yr[0] = from_float<T>(acc[j][2 * hf] + dskip * sm(xc, LP, t, p));
            yr[1] = from_float<T>(acc[j][2 * hf + 1] + dskip * sm(xc, LP, t, p + 1));
          }
        }
    }
    if (UPDATES && owns) {  // S = e^(L_last) S + X^T (w B)
      const float dl = __expf(l_last);
      if (PASS == Pass::chunk_state && threadIdx.x == 0)
        decay[(int64_t(b) * s.heads + h) * n_chunks + c] = dl;
#pragma unroll
      for (int j = 0; j < NTS; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[j][e] *= dl;
      mma_tile<true, false>(st, xc, LP, 16 * warp, bw, LN, 0, 0, kQ, lane);
    }
  }
  if (state_out != nullptr && owns)
#pragma unroll
    for (int j = 0; j < NTS; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        state_out[(16 * warp + g + 8 * (e >> 1)) * N + 8 * j + 2 * t4 + (e & 1)] = st[j][e];
}

// The chunk-parallel forward's pass over the chunks, one thread per state entry of a (sequence,
// head): work[c] holds chunk c's end state from a zero start (Pass::chunk_state) and receives its
// start state, S_start[c] = decay[c - 1] S_start[c - 1] + work[c - 1], from the slot's state when
// states are given (else zero); the final state goes back to the slot. Each thread reads its
// chunks' entries kAhead at a time before writing any (work is read and written in place). A
// template, as every kernel in a header: one definition however many translation units use it.
template <int = 0>
__global__ void __launch_bounds__(256)
    ssd_state_pass_kernel(float* __restrict__ work, const float* __restrict__ decay, int64_t pairs,
                          int64_t heads, int64_t state_size, int n_chunks,
                          float* __restrict__ states, const int32_t* __restrict__ slots,
                          int64_t n_slots) {
  constexpr int kAhead = 4;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pairs * state_size) return;
  const int64_t bh = i / state_size, e = i % state_size;  // bh = b * heads + h
  float* slot_state = nullptr;
  if (states != nullptr) {
    const int64_t slot = slots[bh / heads];
    if (slot >= 0 && slot < n_slots) slot_state = states + (slot * heads + bh % heads) * state_size + e;
  }
  float S = slot_state != nullptr ? *slot_state : 0.f;
  float* w = work + bh * n_chunks * state_size + e;
  const float* d = decay + bh * n_chunks;
  for (int c0 = 0; c0 < n_chunks; c0 += kAhead) {
    float v[kAhead] = {}, dl[kAhead] = {};
#pragma unroll
    for (int k = 0; k < kAhead; ++k)
      if (c0 + k < n_chunks) v[k] = w[int64_t(c0 + k) * state_size], dl[k] = d[c0 + k];
#pragma unroll
    for (int k = 0; k < kAhead; ++k)
      if (c0 + k < n_chunks) {
        w[int64_t(c0 + k) * state_size] = S;
        S = dl[k] * S + v[k];
      }
  }
  if (slot_state != nullptr) *slot_state = S;
}

// One decode step (seq = 1, states): 4 state entries per thread, N / 4 threads per state row
// (a power of two <= 32, so a row's threads are consecutive lanes of one warp).
template <class T, int P, int N>
__global__ void __launch_bounds__(256)
    ssd_decode_kernel(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ B,
                      const T* __restrict__ C, const Params<T> pr, const Geo s,
                      float* __restrict__ states, const int32_t* __restrict__ slots,
                      int64_t n_slots) {
  constexpr int kLanes = N / 4;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = i / kLanes;  // (b * heads + h) * P + p
  const int q = int(i % kLanes);
  const bool in_range = row < s.batch * s.heads * P;
  const int64_t rr = in_range ? row : 0;
  const int64_t p = rr % P, h = rr / P % s.heads, b = rr / P / s.heads;
  const int64_t grp = h / (s.heads / s.groups);
  const int64_t slot = slots[b];
  const bool ok = in_range && slot >= 0 && slot < n_slots;
  const float a = -expf(to_float(pr.A_log[h]));
  const float d = softplus(to_float(pr.dt[b * pr.dts + h]) + to_float(pr.dt_bias[h]));
  const float decay = __expf(d * a);
  const float xp = to_float(x[b * s.xs + grp * P + p]);
  const T* bb = B + b * s.bs + grp * N + 4 * q;
  const T* cc = C + b * s.cs + h * N + 4 * q;
  float4* sp = reinterpret_cast<float4*>(states + ((ok ? slot : 0) * s.heads + h) * P * N +
                                         p * N + 4 * q);
  float4 v = ok ? *sp : make_float4(0.f, 0.f, 0.f, 0.f);
  const float dx = d * xp;
  v.x = decay * v.x + dx * to_float(bb[0]);
  v.y = decay * v.y + dx * to_float(bb[1]);
  v.z = decay * v.z + dx * to_float(bb[2]);
  v.w = decay * v.w + dx * to_float(bb[3]);
  float acc = v.x * to_float(cc[0]) + v.y * to_float(cc[1]) + v.z * to_float(cc[2]) +
              v.w * to_float(cc[3]);
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (!in_range) return;  // after the shuffles
  if (ok) *sp = v;
  if (q == 0) {
    const float dskip = pr.D != nullptr ? to_float(pr.D[h]) : 0.f;
    y[b * s.ys + h * P + p] = from_float<T>(acc + dskip * xp);
  }
}

// ---- backward ----

struct BackwardOut {
  void *dx, *dB, *dC, *ddt;  // T*, written with the strides of x, B, C and dt
  float *dx_heads, *dB_heads;  // [rows, heads, P] / [rows, heads, N] when a group has several heads
  float* params;               // [batch, heads, 3]: sums of ddt_raw, dt dA, dy.x
  int64_t xs, bs, cs, dts;
  bool accumulate;
};

// grid (heads, batch), kThreads<P> threads, backward_smem_bytes<P, N>() shared bytes.
template <class T, int P, int N>
__global__ void __launch_bounds__(kThreads<P>)
    ssd_backward_kernel(const BackwardOut o, const bf16* __restrict__ chunk_states, const Inputs in,
                        const Params<T> pr, const Geo s) {
  constexpr int W = kWarps<P>, CH = kSplit<P>, THREADS = kThreads<P>;
  constexpr int LP = kLd<P>, LN = kLd<N>, LQ = kLd<kQ>;
  constexpr int NTS = N / 8, NTQ = kQ / CH / 8, NTP = P / CH / 8, NTN = N / CH / 8;
  extern __shared__ __align__(16) unsigned char ssd_bwd_smem[];
  bf16* xs = reinterpret_cast<bf16*>(ssd_bwd_smem);  // [Q][LP]
  bf16* dys = xs + kQ * LP;                          // [Q][LP]
  bf16* bsm = dys + kQ * LP;                         // [Q][LN]
  bf16* csm = bsm + kQ * LN;                         // [Q][LN]
  bf16* ce = csm + kQ * LN;                          // [Q][LN]: e^(L_t) C_t
  bf16* s0 = ce + kQ * LN;                           // [P][LN]: chunk-start state
  bf16* hs = s0 + P * LN;                            // [P][LN]: H
  bf16* m2 = hs + P * LN;                            // [Q][LQ]
  bf16* zs = m2 + kQ * LQ;                           // [Q][LQ]
  float* Lc = reinterpret_cast<float*>(zs + kQ * LQ);  // [Q]
  float* dtc = Lc + kQ;                                // [Q]
  float* sig = dtc + kQ;                               // [Q]
  float* rowT = sig + kQ;    // [2][Q]: row sums of T per column split
  float* colT = rowT + 2 * kQ;  // [4][Q]: column sums of T per row group
  float* vpart = colT + 4 * kQ;  // [2][Q]: x_s.(e^(L_last-L_s) H B_s)
  float* p1 = vpart + 2 * kQ;    // [2][Q]: x_s.U_s
  float* sy = p1 + 2 * kQ;       // [2][Q]: e^(L_t) dy_t.(S0 C_t)
  float* hs0 = sy + 2 * kQ;      // [8]: <H, S0> per warp
  float* red = hs0 + 8;          // [9]: dD per warp, then their sum

  const int h = int(blockIdx.x), b = int(blockIdx.y);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int rg = warp % 4, ch = warp / 4;
  const bool owns = warp < P / 16;
  const int64_t seq = s.seq, r_heads = s.heads / s.groups, grp = h / r_heads;
  const int n_chunks = int((seq + kQ - 1) / kQ);
  const int64_t row0 = int64_t(b) * seq;
  const float a = -expf(to_float(pr.A_log[h]));
  const float bias = to_float(pr.dt_bias[h]);
  const float dskip = pr.D != nullptr ? to_float(pr.D[h]) : 0.f;
  const bf16* xg = in.x + row0 * in.xs + grp * P;
  const bf16* bg = in.B + row0 * in.bs + grp * N;
  const bf16* cg = in.C + row0 * in.cs + int64_t(h) * N;
  const bf16* dyg = in.dy + row0 * in.dys + int64_t(h) * P;
  const bf16* states_bh = chunk_states + (int64_t(b) * s.heads + h) * n_chunks * P * N;

  float hf[NTS][4];  // H rows 16 warp + g (+8), columns 8j + 2 t4 (+1)
  zero(hf);
  float acc_bias = 0.f, acc_da = 0.f, acc_dd = 0.f;  // this thread's parameter sums
  float raw0 = 0.f, raw1 = 0.f;
  auto fetch_dt = [&](int c) {
    const int64_t t = int64_t(c) * kQ + lane;
    raw0 = t < seq ? to_float(pr.dt[(row0 + t) * pr.dts + h]) + bias : 0.f;
    raw1 = t + 32 < seq ? to_float(pr.dt[(row0 + t + 32) * pr.dts + h]) + bias : 0.f;
  };
  if (warp == 0 && n_chunks > 0) fetch_dt(n_chunks - 1);

  for (int c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = int64_t(c) * kQ;
    const int valid = int(std::min<int64_t>(kQ, seq - t0));
    load_rows<P, kQ, THREADS>(xs, xg + t0 * in.xs, in.xs, valid);
    load_rows<P, kQ, THREADS>(dys, dyg + t0 * in.dys, in.dys, valid);
    load_rows<N, kQ, THREADS>(bsm, bg + t0 * in.bs, in.bs, valid);
    load_rows<N, kQ, THREADS>(csm, cg + t0 * in.cs, in.cs, valid);
    load_rows<N, P, THREADS>(s0, states_bh + int64_t(c) * P * N, N, P);
    cp_async_commit();
    if (warp == 0) {
      chunk_decays(Lc, dtc, sig, raw0, raw1, valid, a, lane);
      if (c > 0) fetch_dt(c - 1);
    }
    if (owns)
#pragma unroll
      for (int j = 0; j < NTS; ++j)
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2)
          put2(hs, LN, 16 * warp + g + 8 * e2, 8 * j + 2 * t4, hf[j][2 * e2], hf[j][2 * e2 + 1]);
    cp_async_wait_all();
    __syncthreads();  // tiles, decays and H in shared memory

    const float l_last = Lc[kQ - 1];
    for (int i = int(threadIdx.x); i < kQ * N / 2; i += THREADS) {
      const int r = i / (N / 2), col = 2 * (i % (N / 2));
      const float e = __expf(Lc[r]);
      put2(ce, LN, r, col, e * sm(csm, LN, r, col), e * sm(csm, LN, r, col + 1));
    }
    for (int i = int(threadIdx.x); i < kQ * P; i += THREADS)  // dD: sum of dy.x
      acc_dd += sm(dys, LP, i / P, i % P) * sm(xs, LP, i / P, i % P);
    {  // <H, S0>
      float v = 0.f;
      if (owns)
#pragma unroll
        for (int j = 0; j < NTS; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            v += hf[j][e] * sm(s0, LN, 16 * warp + g + 8 * (e >> 1), 8 * j + 2 * t4 + (e & 1));
      v = warp_sum(v);
      if (lane == 0) hs0[warp] = v;
    }
    {  // C B^T and dY X^T: rows 16 rg.., columns q0..; M2, Z and the sums of T
      const int q0 = ch * (kQ / CH);
      float cb[NTQ][4], yx[NTQ][4];
      zero(cb);
      zero(yx);
      if (q0 <= 16 * rg + 15) {
        mma_tile<false, true>(cb, csm, LN, 16 * rg, bsm, LN, q0, 0, N, lane);
        mma_tile<false, true>(yx, dys, LP, 16 * rg, xs, LP, q0, 0, P, lane);
      }
      float rs[2] = {0.f, 0.f}, cs[NTQ][2];
#pragma unroll
      for (int j = 0; j < NTQ; ++j) {
        cs[j][0] = cs[j][1] = 0.f;
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const int t = 16 * rg + g + 8 * e2, sc = q0 + 8 * j + 2 * t4;
          float mv[2], zv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const bool causal = sc + e <= t;
            const float dec = causal ? __expf(Lc[t] - Lc[sc + e]) : 0.f;
            mv[e] = dec * cb[j][2 * e2 + e];
            zv[e] = dec * dtc[sc + e] * yx[j][2 * e2 + e];
            const float tv = zv[e] * cb[j][2 * e2 + e];
            rs[e2] += tv;
            cs[j][e] += tv;
          }
          put2(m2, LQ, t, sc, mv[0], mv[1]);
          put2(zs, LQ, t, sc, zv[0], zv[1]);
        }
      }
#pragma unroll
      for (int e2 = 0; e2 < 2; ++e2) {
        rs[e2] += __shfl_xor_sync(0xffffffffu, rs[e2], 1);
        rs[e2] += __shfl_xor_sync(0xffffffffu, rs[e2], 2);
      }
      if (t4 == 0) {
        rowT[ch * kQ + 16 * rg + g] = rs[0];
        rowT[ch * kQ + 16 * rg + g + 8] = rs[1];
      }
#pragma unroll
      for (int j = 0; j < NTQ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = cs[j][e];
          v += __shfl_xor_sync(0xffffffffu, v, 4);
          v += __shfl_xor_sync(0xffffffffu, v, 8);
          v += __shfl_xor_sync(0xffffffffu, v, 16);
          if (g == 0) colT[rg * kQ + q0 + 8 * j + 2 * t4 + e] = v;
        }
    }
    __syncthreads();  // ce, M2, Z

    const int ta = 16 * rg + g, tb = ta + 8;  // this thread's rows of [Q x *] tiles
    {  // U = diag(e^(L_last - L)) B H^T + M2^T dY; dx = D dy + dt U
      const int p0 = ch * (P / CH);
      float u[NTP][4];
      zero(u);
      mma_tile<false, true>(u, bsm, LN, 16 * rg, hs, LN, p0, 0, N, lane);
      const float ea = __expf(l_last - Lc[ta]), eb = __expf(l_last - Lc[tb]);
      float va = 0.f, vb = 0.f;
#pragma unroll
      for (int j = 0; j < NTP; ++j) {
        const int p = p0 + 8 * j + 2 * t4;
        u[j][0] *= ea, u[j][1] *= ea, u[j][2] *= eb, u[j][3] *= eb;
        va += u[j][0] * sm(xs, LP, ta, p) + u[j][1] * sm(xs, LP, ta, p + 1);
        vb += u[j][2] * sm(xs, LP, tb, p) + u[j][3] * sm(xs, LP, tb, p + 1);
      }
      mma_tile<true, false>(u, m2, LQ, 16 * rg, dys, LP, p0, 16 * rg, kQ, lane);
      float wa = 0.f, wb = 0.f;
#pragma unroll
      for (int j = 0; j < NTP; ++j) {
        const int p = p0 + 8 * j + 2 * t4;
        wa += u[j][0] * sm(xs, LP, ta, p) + u[j][1] * sm(xs, LP, ta, p + 1);
        wb += u[j][2] * sm(xs, LP, tb, p) + u[j][3] * sm(xs, LP, tb, p + 1);
      }
      va += __shfl_xor_sync(0xffffffffu, va, 1), va += __shfl_xor_sync(0xffffffffu, va, 2);
      vb += __shfl_xor_sync(0xffffffffu, vb, 1), vb += __shfl_xor_sync(0xffffffffu, vb, 2);
      wa += __shfl_xor_sync(0xffffffffu, wa, 1), wa += __shfl_xor_sync(0xffffffffu, wa, 2);
      wb += __shfl_xor_sync(0xffffffffu, wb, 1), wb += __shfl_xor_sync(0xffffffffu, wb, 2);
      if (t4 == 0) {
        vpart[ch * kQ + ta] = va, vpart[ch * kQ + tb] = vb;
        p1[ch * kQ + ta] = wa, p1[ch * kQ + tb] = wb;
      }
      if (o.dx != nullptr || o.dx_heads != nullptr)
#pragma unroll
        for (int j = 0; j < NTP; ++j)
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int t = e2 ? tb : ta, p = p0 + 8 * j + 2 * t4;
            if (t >= valid) continue;
            const int64_t row = row0 + t0 + t;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float v = dskip * sm(dys, LP, t, p + e) + dtc[t] * u[j][2 * e2 + e];
              if (o.dx_heads != nullptr)
                o.dx_heads[(row * s.heads + h) * P + p + e] = v;
              else
                store_or_add(static_cast<T*>(o.dx) + row * o.xs + grp * P + p + e, v, o.accumulate);
            }
          }
    }
    if (o.dB != nullptr || o.dB_heads != nullptr) {  // dB = diag(dt e^(L_last-L)) X H + Z^T C
      const int n0 = ch * (N / CH);
      float d[NTN][4];
      zero(d);
      mma_tile<false, false>(d, xs, LP, 16 * rg, hs, LN, n0, 0, P, lane);
      const float ea = dtc[ta] * __expf(l_last - Lc[ta]), eb = dtc[tb] * __expf(l_last - Lc[tb]);
#pragma unroll
      for (int j = 0; j < NTN; ++j) {
        d[j][0] *= ea, d[j][1] *= ea, d[j][2] *= eb, d[j][3] *= eb;
      }
      mma_tile<true, false>(d, zs, LQ, 16 * rg, csm, LN, n0, 16 * rg, kQ, lane);
#pragma unroll
      for (int j = 0; j < NTN; ++j)
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const int t = e2 ? tb : ta, n = n0 + 8 * j + 2 * t4;
          if (t >= valid) continue;
          const int64_t row = row0 + t0 + t;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (o.dB_heads != nullptr)
              o.dB_heads[(row * s.heads + h) * N + n + e] = d[j][2 * e2 + e];
            else
              store_or_add(static_cast<T*>(o.dB) + row * o.bs + grp * N + n + e, d[j][2 * e2 + e],
                  o.accumulate);
          }
        }
    }
    {  // dC = diag(e^L) dY S0 + Z B
      const int n0 = ch * (N / CH);
      float d[NTN][4];
      zero(d);
      mma_tile<false, false>(d, dys, LP, 16 * rg, s0, LN, n0, 0, P, lane);
      const float ea = __expf(Lc[ta]), eb = __expf(Lc[tb]);
      float ya = 0.f, yb = 0.f;
#pragma unroll
      for (int j = 0; j < NTN; ++j) {
        const int n = n0 + 8 * j + 2 * t4;
        d[j][0] *= ea, d[j][1] *= ea, d[j][2] *= eb, d[j][3] *= eb;
        ya += d[j][0] * sm(csm, LN, ta, n) + d[j][1] * sm(csm, LN, ta, n + 1);
        yb += d[j][2] * sm(csm, LN, tb, n) + d[j][3] * sm(csm, LN, tb, n + 1);
      }
      ya += __shfl_xor_sync(0xffffffffu, ya, 1), ya += __shfl_xor_sync(0xffffffffu, ya, 2);
      yb += __shfl_xor_sync(0xffffffffu, yb, 1), yb += __shfl_xor_sync(0xffffffffu, yb, 2);
      if (t4 == 0) sy[ch * kQ + ta] = ya, sy[ch * kQ + tb] = yb;
      if (o.dC != nullptr) {
        mma_tile<false, false>(d, zs, LQ, 16 * rg, bsm, LN, n0, 0, 16 * (rg + 1), lane);
#pragma unroll
        for (int j = 0; j < NTN; ++j)
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int t = e2 ? tb : ta, n = n0 + 8 * j + 2 * t4;
            if (t >= valid) continue;
            T* dst = static_cast<T*>(o.dC) + (row0 + t0 + t) * o.cs + int64_t(h) * N + n;
            store_or_add(dst, d[j][2 * e2], o.accumulate);
            store_or_add(dst + 1, d[j][2 * e2 + 1], o.accumulate);
          }
      }
    }
    if (owns) {  // H of the previous chunk's end: e^(L_last) H + dY^T diag(e^L) C
      const float dl = __expf(l_last);
#pragma unroll
      for (int j = 0; j < NTS; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) hf[j][e] *= dl;
      mma_tile<true, false>(hf, dys, LP, 16 * warp, ce, LN, 0, 0, kQ, lane);
    }
    __syncthreads();  // the row partials; every warp is done with this chunk's tiles

    if (warp == 0) {  // per-row gradients of dt
      auto sum2 = [&](const float* v, int t) { return CH == 2 ? v[t] + v[kQ + t] : v[t]; };
      float dl[2], vs[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = lane + 32 * e;
        vs[e] = dtc[t] * sum2(vpart, t);  // V_t
        dl[e] = sum2(rowT, t) - (colT[t] + colT[kQ + t] + colT[2 * kQ + t] + colT[3 * kQ + t]) +
                sum2(sy, t) - vs[e];
      }
      const float v_total = warp_sum(vs[0] + vs[1]);
      if (lane == 31) {  // row Q - 1 carries L_last
        float hsum = 0.f;
        for (int w = 0; w < W; ++w) hsum += hs0[w];
        dl[1] += __expf(l_last) * hsum + v_total;
      }
      // dLoss/d(dt_s a) = sum over t >= s of dLoss/dL_t
      const float hi = warp_suffix(dl[1], lane);
      const float lo = warp_suffix(dl[0], lane) + __shfl_sync(0xffffffffu, hi, 0);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = lane + 32 * e;
        if (t >= valid) continue;
        const float da = e ? hi : lo;
        const float ddt = (sum2(p1, t) + a * da) * sig[t];
        acc_bias += ddt;
        acc_da += dtc[t] * da;
        if (o.ddt != nullptr)
          store_or_add(static_cast<T*>(o.ddt) + (row0 + t0 + t) * o.dts + h, ddt, o.accumulate);
      }
    }
  }
  // Parameter partials of this (sequence, head), summed in a fixed order.
  acc_dd = warp_sum(acc_dd);
  if (lane == 0) red[warp] = acc_dd;
  __syncthreads();
  if (threadIdx.x == 0) {
    float dd = 0.f;
    for (int w = 0; w < W; ++w) dd += red[w];
    red[W] = dd;
  }
  if (warp == 0) {
    acc_bias = warp_sum(acc_bias);
    acc_da = warp_sum(acc_da);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float* dst = o.params + (int64_t(b) * s.heads + h) * 3;
    dst[0] = acc_bias, dst[1] = acc_da, dst[2] = red[W];
  }
}

// dst[row, grp * width + i] (=|+=) sum over the heads j of group grp of src[row, grp * r + j, i].
template <class T>
__global__ void ssd_group_sum_kernel(T* __restrict__ dst, const float* __restrict__ src,
                                     int64_t rows, int64_t groups, int64_t r, int64_t width,
                                     int64_t stride, bool accumulate) {
  const int64_t n = rows * groups * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / (groups * width), k = i % (groups * width);
    const int64_t grp = k / width, col = k % width;
    const float* p = src + (row * groups * r + grp * r) * width + col;
    float v = 0.f;
    for (int64_t j = 0; j < r; ++j) v += p[j * width];
    store_or_add(dst + row * stride + k, v, accumulate);
  }
}

// Parameter gradients from the [batch, heads, 3] partials, summed over the batch in order.
template <class T>
__global__ void ssd_params_kernel(T* __restrict__ ddt_bias, T* __restrict__ dA_log,
                                  T* __restrict__ dD, const float* __restrict__ part,
                                  const T* __restrict__ A_log, int64_t batch, int64_t heads,
                                  bool accumulate) {
  const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= heads) return;
  float v[3] = {0.f, 0.f, 0.f};
  for (int64_t b = 0; b < batch; ++b)
    for (int k = 0; k < 3; ++k) v[k] += part[(b * heads + h) * 3 + k];
  const float a = -expf(to_float(A_log[h]));
  if (ddt_bias != nullptr) store_or_add(ddt_bias + h, v[0], accumulate);
  if (dA_log != nullptr) store_or_add(dA_log + h, v[1] * a, accumulate);
  if (dD != nullptr) store_or_add(dD + h, v[2], accumulate);
}

// Packs `cols` columns of `rows` token rows (stride apart) into a bf16 [rows, cols] buffer.
template <class T>
__global__ void ssd_pack_kernel(bf16* __restrict__ dst, const T* __restrict__ src, int64_t rows,
                                int64_t cols, int64_t stride) {
  const int64_t n = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_float<bf16>(to_float(src[i / cols * stride + i % cols]));
}

// A bf16 view of `cols` columns of src with a token stride that cp.async can read: src itself
// when it already is one, else a packed copy (kept alive in `keep`).
template <class T>
const bf16* as_bf16(const T* src, int64_t rows, int64_t cols, int64_t stride, int64_t& out_stride,
                    Tensor<bf16, Cuda>& keep, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (aligned16(src) && stride % 8 == 0) {
      out_stride = stride;
      return src;
    }
  }
  keep = Tensor<bf16, Cuda>::empty(Shape{std::max<int64_t>(rows * cols, 1)});
  ssd_pack_kernel<T><<<grid_stride_blocks(rows * cols, 256), 256, 0, stream>>>(keep.data(), src,
                                                                              rows, cols, stride);
  MIL_CUDA_CHECK_LAUNCH("ssd_pack_kernel");
  out_stride = cols;
  return keep.data();
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  MIL_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// Calls f(std::integral_constant<int, P>{}) for the supported head_dim = d_state.
template <class F>
void dispatch_size(const char* op, const SsdShape& s, F&& f) {
  const int64_t p = s.head_dim;
  if (p == s.d_state) {
    if (p == 64) return f(std::integral_constant<int, 64>{});
    if (p == 128) return f(std::integral_constant<int, 128>{});
    if (p == 32) return f(std::integral_constant<int, 32>{});
    if (p == 16) return f(std::integral_constant<int, 16>{});
  }
  MIL_FAIL(op, " (CUDA): head_dim=", s.head_dim, " d_state=", s.d_state,
           " is not supported; supported (head_dim, d_state): (16,16), (32,32), (64,64), "
           "(128,128)");
}

inline void check_grid(const char* op, const SsdShape& s) {
  MIL_CHECK(s.batch <= 65535 && s.heads <= int64_t(INT32_MAX), op,
            " (CUDA): batch must be <= 65535, got ", s.batch);
  MIL_CHECK(s.seq <= (int64_t(1) << 30), op, " (CUDA): seq too long: ", s.seq);
}

// The chunk-parallel forward's workspace (fp32 chunk states and decays) is at most this; past it
// the automatic choice keeps the sequential path, so that long sequences of large heads do not
// park gigabytes in the caching allocator (S at batch 1: 144 KiB per chunk, 116k tokens; L:
// 2 MiB per chunk, 8k tokens).
constexpr int64_t kMaxChunkWorkBytes = int64_t(256) << 20;

inline int64_t chunk_work_floats(const SsdShape& s) {
  return s.batch * s.heads * ceil_div(s.seq, kQ) * (s.head_dim * s.d_state + 1);
}

// Whether `stream` is being captured into a CUDA graph (a failed query counts as yes).
inline bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

// Whether ssd_scan_forward takes the chunk-parallel path (seq > 1 or no states): as asked, or
// (automatic) when the sequential path would leave most SMs idle (its batch * heads blocks are at
// most half the SMs) and the sequences have two chunks or more, within the workspace cap, and not
// while `stream` is being captured (the workspace is a temporary, which a graph must not keep; the
// decoder captures only steps of at most 16 tokens per row, which are one chunk anyway).
// Training shapes (S: 16 x 9 = 144 blocks; L: 4 x 32 = 128) keep the sequential path.
inline bool use_chunk_parallel(const SsdShape& s, SsdForwardPath path, cudaStream_t stream) {
  if (path != SsdForwardPath::automatic) return path == SsdForwardPath::chunked;
  return s.seq > kQ && 2 * s.batch * s.heads <= sm_count() && s.heads <= 65535 &&
         chunk_work_floats(s) * int64_t(sizeof(float)) <= kMaxChunkWorkBytes &&
         !capturing(stream);
}

// The chunk-parallel forward (see the top of this file) from the bf16 inputs `in`; temporaries on
// the caller's StreamScope.
template <class T, int P, int N>
void forward_chunk_parallel(T* y, const Inputs& in, const Params<T>& pr, const SsdShape& s,
                            const SsdStates& states, cudaStream_t stream) {
  MIL_CHECK(s.heads <= 65535, "ssd_scan_forward (CUDA): the chunk-parallel path takes at most "
            "65535 heads, got ", s.heads);
  const int64_t n_chunks = ceil_div(s.seq, kQ), pairs = s.batch * s.heads;
  auto work = Tensor<float, Cuda>::empty(Shape{chunk_work_floats(s)});
  float* decay = work.data() + pairs * n_chunks * P * N;
  const Geo g = geo_of(s);
  const dim3 grid(unsigned(n_chunks), unsigned(s.heads), unsigned(s.batch));
  constexpr size_t smem = forward_smem_bytes<P, N, 1>();
  {
    auto kernel = ssd_forward_kernel<T, P, N, Pass::chunk_state>;
    allow_smem(kernel, smem);
    kernel<<<grid, kThreads<P>, smem, stream>>>(nullptr, nullptr, work.data(), decay, in, pr, g,
                                                nullptr, nullptr, 0);
    MIL_CUDA_CHECK_LAUNCH("ssd_forward_kernel (chunk end states)");
  }
  ssd_state_pass_kernel<><<<unsigned(ceil_div(pairs * P * N, 256)), 256, 0, stream>>>(
      work.data(), decay, pairs, s.heads, P * N, int(n_chunks), states.data, states.slots,
      states.n_slots);
  MIL_CUDA_CHECK_LAUNCH("ssd_state_pass_kernel");
  {
    auto kernel = ssd_forward_kernel<T, P, N, Pass::chunk_output>;
    allow_smem(kernel, smem);
    kernel<<<grid, kThreads<P>, smem, stream>>>(y, nullptr, work.data(), nullptr, in, pr, g,
                                                nullptr, nullptr, 0);
    MIL_CUDA_CHECK_LAUNCH("ssd_forward_kernel (chunk outputs)");
  }
}

}  // namespace ssd_detail

// y = SSD(x, B, C, dt) (see ssd_scan.hpp). All pointers on the device, states.slots included.
// `path` picks the algorithm (tests run both; the default chooses by shape).
template <class T>
void ssd_scan_forward(T* y, const T* x, const T* B, const T* C, const T* dt, const T* dt_bias,
                      const T* A_log, const T* D, const SsdShape& s, const SsdStates& states,
                      cudaStream_t stream, SsdForwardPath path = SsdForwardPath::automatic) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "ssd_scan_forward on the GPU supports float and bf16");
  using namespace ssd_detail;
  ssd_check("ssd_scan_forward", s, states);
  check_grid("ssd_scan_forward", s);
  dispatch_size("ssd_scan_forward", s, [&](auto size) {
    constexpr int P = decltype(size)::value, N = P;
    if (s.batch == 0 || s.seq == 0) return;
    const Params<T> pr{dt, dt_bias, A_log, D, s.dts()};
    if (s.seq == 1 && states.active()) {
      MIL_CHECK(aligned16(states.data), "ssd_scan_forward (CUDA): states must be 16-byte aligned");
      const int64_t threads = s.batch * s.heads * P * (N / 4);
      ssd_decode_kernel<T, P, N><<<unsigned((threads + 255) / 256), 256, 0, stream>>>(
          y, x, B, C, pr, geo_of(s), states.data, states.slots, states.n_slots);
      MIL_CUDA_CHECK_LAUNCH("ssd_decode_kernel");
      return;
    }
    const int64_t rows = s.batch * s.seq;
    StreamScope scope(stream);
    Tensor<bf16, Cuda> kx, kb, kc;
    Inputs in{};
    in.x = as_bf16(x, rows, s.groups * P, s.xs(), in.xs, kx, stream);
    in.B = as_bf16(B, rows, s.groups * N, s.bs(), in.bs, kb, stream);
    in.C = as_bf16(C, rows, s.heads * N, s.cs(), in.cs, kc, stream);
    if (use_chunk_parallel(s, path, stream))
      return forward_chunk_parallel<T, P, N>(y, in, pr, s, states, stream);
    constexpr size_t smem = forward_smem_bytes<P, N>();
    auto kernel = ssd_forward_kernel<T, P, N, Pass::scan>;
    allow_smem(kernel, smem);
    kernel<<<dim3(unsigned(s.heads), unsigned(s.batch)), kThreads<P>, smem, stream>>>(
        y, nullptr, nullptr, nullptr, in, pr, geo_of(s), states.data, states.slots,
        states.n_slots);
    MIL_CUDA_CHECK_LAUNCH("ssd_forward_kernel");
  });
}

// Gradients of ssd_scan_forward without states (see ssd_scan.hpp for the write modes).
template <class T>
void ssd_scan_backward(const SsdGrads<T>& gr, const T* dy, const T* x, const T* B, const T* C,
                       const T* dt, const T* dt_bias, const T* A_log, const T* D,
                       const SsdShape& s, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "ssd_scan_backward on the GPU supports float and bf16");
  using namespace ssd_detail;
  ssd_check("ssd_scan_backward", s, SsdStates{});
  check_grid("ssd_scan_backward", s);
  dispatch_size("ssd_scan_backward", s, [&](auto size) {
    constexpr int P = decltype(size)::value, N = P;
    const int64_t rows = s.batch * s.seq, r = s.heads_per_group();
    const bool any_param = gr.ddt_bias || gr.dA_log || gr.dD;
    if (rows == 0) {  // no tokens: parameter gradients are zero sums
      const T* ps[3] = {gr.ddt_bias, gr.dA_log, gr.dD};
      for (const T* p : ps)
        if (p != nullptr && !gr.accumulate_params)
          MIL_CUDA_CHECK(cudaMemsetAsync(const_cast<T*>(p), 0, size_t(s.heads) * sizeof(T), stream));
      return;
    }
    StreamScope scope(stream);
    const Params<T> pr{dt, dt_bias, A_log, D, s.dts()};
    Tensor<bf16, Cuda> kx, kb, kc, kdy;
    Inputs in{};
    in.x = as_bf16(x, rows, s.groups * P, s.xs(), in.xs, kx, stream);
    in.B = as_bf16(B, rows, s.groups * N, s.bs(), in.bs, kb, stream);
    in.C = as_bf16(C, rows, s.heads * N, s.cs(), in.cs, kc, stream);
    in.dy = as_bf16(dy, rows, s.heads * P, s.ys(), in.dys, kdy, stream);

    // Chunk-start states, recomputed by the forward kernel.
    const int64_t n_chunks = (s.seq + kQ - 1) / kQ;
    auto chunk_states = Tensor<bf16, Cuda>::empty(Shape{s.batch * s.heads * n_chunks * P * N});
    const dim3 grid(unsigned(s.heads), unsigned(s.batch));
    {
      constexpr size_t smem = forward_smem_bytes<P, N>();
      auto kernel = ssd_forward_kernel<T, P, N, Pass::store_chunks>;
      allow_smem(kernel, smem);
      kernel<<<grid, kThreads<P>, smem, stream>>>(nullptr, chunk_states.data(), nullptr, nullptr,
                                                  in, pr, geo_of(s), nullptr, nullptr, 0);
      MIL_CUDA_CHECK_LAUNCH("ssd_forward_kernel (chunk states)");
    }
    Tensor<float, Cuda> dx_heads, dB_heads;
    if (r > 1 && gr.dx) dx_heads = Tensor<float, Cuda>::empty(Shape{rows * s.heads * P});
    if (r > 1 && gr.dB) dB_heads = Tensor<float, Cuda>::empty(Shape{rows * s.heads * N});
    auto params = Tensor<float, Cuda>::empty(Shape{s.batch * s.heads * 3});
    BackwardOut o{};
    o.dx = r == 1 ? static_cast<void*>(gr.dx) : nullptr;
    o.dB = r == 1 ? static_cast<void*>(gr.dB) : nullptr;
    o.dC = gr.dC;
    o.ddt = gr.ddt;
    o.dx_heads = r > 1 && gr.dx ? dx_heads.data() : nullptr;
    o.dB_heads = r > 1 && gr.dB ? dB_heads.data() : nullptr;
    o.params = params.data();
    o.xs = s.xs(), o.bs = s.bs(), o.cs = s.cs(), o.dts = s.dts();
    o.accumulate = gr.accumulate_inputs;
    {
      constexpr size_t smem = backward_smem_bytes<P, N>();
      auto kernel = ssd_backward_kernel<T, P, N>;
      allow_smem(kernel, smem);
      kernel<<<grid, kThreads<P>, smem, stream>>>(o, chunk_states.data(), in, pr, geo_of(s));
      MIL_CUDA_CHECK_LAUNCH("ssd_backward_kernel");
    }
    if (o.dx_heads != nullptr) {
      ssd_group_sum_kernel<T><<<grid_stride_blocks(rows * s.groups * P, 256), 256, 0, stream>>>(
          gr.dx, o.dx_heads, rows, s.groups, r, P, s.xs(), gr.accumulate_inputs);
      MIL_CUDA_CHECK_LAUNCH("ssd_group_sum_kernel (dx)");
    }
    if (o.dB_heads != nullptr) {
      ssd_group_sum_kernel<T><<<grid_stride_blocks(rows * s.groups * N, 256), 256, 0, stream>>>(
          gr.dB, o.dB_heads, rows, s.groups, r, N, s.bs(), gr.accumulate_inputs);
      MIL_CUDA_CHECK_LAUNCH("ssd_group_sum_kernel (dB)");
    }
    if (any_param) {
      ssd_params_kernel<T><<<unsigned((s.heads + 127) / 128), 128, 0, stream>>>(
          gr.ddt_bias, gr.dA_log, gr.dD, params.data(), A_log, s.batch, s.heads,
          gr.accumulate_params);
      MIL_CUDA_CHECK_LAUNCH("ssd_params_kernel");
    }
  });
}

}  // namespace mil::cuda
