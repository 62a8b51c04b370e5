#pragma once
// Causal GQA self-attention on the GPU: the FlashAttention-2 algorithm with bf16 tensor-core MMA
// (mma.sync m16n8k16, fp32 accumulation) on tiles in shared memory; no seq x seq matrix in
// global memory. Layouts as in attention.hpp. Head dims 64 and 128.
//
// Forward: one block of 4 warps per (64-query tile, head, batch); each warp owns 16 query rows and
// streams over the 64-key tiles up to the diagonal (causal tile skipping) with an online softmax.
// Backward (deterministic, no atomics):
//   1. dsum kernel:  D = rowsum(dout * out) per query row;
//   2. dK/dV kernel: one block per (64-key tile, kv head, batch); each warp owns 16 keys and loops
//      over the query heads of the GQA group and the query tiles at or after the key tile,
//      recomputing P^T from lse and accumulating dK and dV in registers;
//   3. dQ kernel:    one block per (64-query tile, head, batch) loops over the key tiles up to the
//      diagonal and accumulates dQ in registers.
// Fragment layouts of mma.m16n8k16: see core/cuda_ptx.cuh.
// A C fragment of two adjacent 8-column n-tiles is, packed to bf16 pairs, the A fragment of the
// next product (P feeds P V without going through shared memory).
#include <cstdint>
#include <initializer_list>

#include <mil/core/allocator.hpp>
#include <mil/core/cuda_check.hpp>
#include <mil/core/dtype.hpp>
#include <mil/core/math.hpp>

#include "attention.hpp"

#if MIL_CUDA_ENABLED
#include <mil/core/cuda_ptx.cuh>

namespace mil::cuda {
namespace attention_detail {

constexpr int kThreads = 128;  // 4 warps, 16 rows each
constexpr int kTile = 64;      // queries per forward / dQ block; keys per tile everywhere
// Shared-memory row stride in elements: 16 bytes of padding per row make the 8 rows read by one
// ldmatrix phase start in different bank quads (no bank conflicts), keeping rows 16-byte aligned.
template <int HD> constexpr int kLd = HD + 8;
// Queries per step of the dK/dV kernel: fewer for head dim 128, whose dK and dV accumulators
// already take 128 registers per thread.
template <int HD> constexpr int kDkdvQueries = HD == 128 ? 32 : 64;

template <int HD> constexpr size_t forward_smem_bytes() {
  return size_t(kTile + 4 * kTile) * kLd<HD> * 2;  // Q, and two buffers each of K and V
}
template <int HD> constexpr size_t dkdv_smem_bytes() {
  constexpr int bq = kDkdvQueries<HD>;
  // K, V; two buffers each of Q and dO; two buffers each of lse and D
  return size_t(2 * kTile + 4 * bq) * kLd<HD> * 2 + size_t(4 * bq) * 4;
}
template <int HD> constexpr size_t dq_smem_bytes() {
  // Q, dO; two buffers each of K and V; lse and D
  return size_t(2 * kTile + 4 * kTile) * kLd<HD> * 2 + size_t(2 * kTile) * 4;
}

// ---- Tile helpers ----

__device__ __forceinline__ float shfl_xor(float x, int mask) {
  return __shfl_xor_sync(0xffffffffu, x, mask);
}
__device__ __forceinline__ float bf16_lo(uint32_t pair) { return bits_float(pair << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t pair) { return bits_float(pair & 0xffff0000u); }

// Rows row0 .. row0+ROWS-1 (HD elements each, `stride` elements apart, starting at base) into a
// padded shared tile; rows at or past seq are filled with zeros. 16-byte chunks, consecutive
// threads on consecutive chunks of a row (coalesced).
template <int HD, int ROWS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* base, int64_t stride,
                                                int row0, int seq) {
  constexpr int kChunks = HD / 8;
  for (int i = int(threadIdx.x); i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = row0 + r < seq;
    const bf16* src = valid ? base + int64_t(row0 + r) * stride + c * 8 : base;
    cp_async_16(tile + r * kLd<HD> + c * 8, src, valid);
  }
}
// Entries row0 .. row0+ROWS-1 of a per-row float vector (lse or D); zeros past seq.
template <int ROWS>
__device__ __forceinline__ void load_rows_async(float* dst, const float* src, int row0, int seq) {
  for (int i = int(threadIdx.x); i < ROWS; i += kThreads) {
    const bool valid = row0 + i < seq;
    cp_async_4(dst + i, valid ? src + row0 + i : src, valid);
  }
}

// Fragment loads from a shared tile with row stride ld (elements); lane in 0..31.
// A fragment of the 16x16 block at (r0, c0) of a row-major tile.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* tile, int ld, int r0, int c0,
                                       int lane) {
  const int m = lane >> 3, r = lane & 7;  // this lane addresses row r of matrix m
  // matrices (rows, cols): 0 = (r0.., c0..), 1 = (r0+8.., c0..), 2 = (r0.., c0+8..),
  // 3 = (r0+8.., c0+8..)
  ldmatrix_x4(a, tile + (r0 + (m & 1) * 8 + r) * ld + c0 + (m >> 1) * 8);
}
// B fragments of the n-tiles n0..n0+7 (b[0], b[1]) and n0+8..n0+15 (b[2], b[3]) over k0..k0+15,
// from a tile stored [n][k] (k contiguous: K for S = Q K^T).
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16* tile, int ld, int n0,
                                          int k0, int lane) {
  const int m = lane >> 3, r = lane & 7;
  // matrices: 0 = (n0.., k0..), 1 = (n0.., k0+8..), 2 = (n0+8.., k0..), 3 = (n0+8.., k0+8..)
  ldmatrix_x4(b, tile + (n0 + (m >> 1) * 8 + r) * ld + k0 + (m & 1) * 8);
}
// The same fragments from a tile stored [k][n] (n contiguous: V for O = P V), transposed by
// ldmatrix.trans.
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16* tile, int ld, int k0,
                                          int n0, int lane) {
  const int m = lane >> 3, r = lane & 7;
  // matrices (rows k, cols n): 0 = (k0.., n0..), 1 = (k0+8.., n0..), 2 = (k0.., n0+8..),
  // 3 = (k0+8.., n0+8..)
  ldmatrix_x4_trans(b, tile + (k0 + (m & 1) * 8 + r) * ld + n0 + (m >> 1) * 8);
}

// The A fragment (16 rows x 16 columns kk*16..) of a product whose left operand is held as C
// fragments x[n-tile][4] (fp32, 8 columns per n-tile), rounded to bf16.
template <int N>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&x)[N][4], int kk) {
  a[0] = pack_bf16x2(x[2 * kk][0], x[2 * kk][1]);          // row g,   cols 16kk + 2t
  a[1] = pack_bf16x2(x[2 * kk][2], x[2 * kk][3]);          // row g+8, cols 16kk + 2t
  a[2] = pack_bf16x2(x[2 * kk + 1][0], x[2 * kk + 1][1]);  // row g,   cols 16kk + 8 + 2t
  a[3] = pack_bf16x2(x[2 * kk + 1][2], x[2 * kk + 1][3]);  // row g+8, cols 16kk + 8 + 2t
}

// Fragment products shared by the kernels; c holds C fragments (8 columns per n-tile) and is
// added to. Each thread's share of the 16 rows is that of mma_bf16.
template <int N>
__device__ __forceinline__ void zero_fragments(float (&c)[N][4]) {
  for (int n = 0; n < N; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
}
// c (16 x 8N) += A B^T over k < 16 KS: A is rows a_row.. of tile a ([m][k]), B tile b ([n][k]).
template <int KS, int N>
__device__ __forceinline__ void mma_a_bt(float (&c)[N][4], const bf16* a, const bf16* b, int ld,
                                         int a_row, int lane) {
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t af[4];
    load_a(af, a, ld, a_row, ks * 16, lane);
    for (int np = 0; np < N / 2; ++np) {
      uint32_t bf[4];
      load_b_nk(bf, b, ld, np * 16, ks * 16, lane);
      mma_bf16_m16n8k16(c[2 * np], af, bf[0], bf[1]);
      mma_bf16_m16n8k16(c[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}
// c (16 x 8D) += X B over k < 8K: X held as C fragments x (rounded to bf16 by c_to_a), B the
// first 8K rows of tile b ([k][n]) via ldmatrix.trans.
template <int D, int K>
__device__ __forceinline__ void mma_c_b(float (&c)[D][4], const float (&x)[K][4], const bf16* b,
                                        int ld, int lane) {
  for (int kk = 0; kk < K / 2; ++kk) {
    uint32_t af[4];
    c_to_a(af, x, kk);
    for (int dp = 0; dp < D / 2; ++dp) {
      uint32_t bf[4];
      load_b_kn(bf, b, ld, kk * 16, dp * 16, lane);
      mma_bf16_m16n8k16(c[2 * dp], af, bf[0], bf[1]);
      mma_bf16_m16n8k16(c[2 * dp + 1], af, bf[2], bf[3]);
    }
  }
}

// Writes the pair (x0, x1) to p[0], p[1] as bf16, adding what is there when accumulating.
__device__ __forceinline__ void store_pair(bf16* p, float x0, float x1, bool accumulate) {
  uint32_t* dst = reinterpret_cast<uint32_t*>(p);
  if (accumulate) {
    const uint32_t old = *dst;
    x0 += bf16_lo(old);
    x1 += bf16_hi(old);
  }
  *dst = pack_bf16x2(x0, x1);
}

// ---- Kernels ----

// grid (query tiles, heads, batch), kThreads threads, forward_smem_bytes<HD>() shared bytes.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                             const bf16* __restrict__ q, const bf16* __restrict__ k,
                             const bf16* __restrict__ v, const AttentionShape s) {
  constexpr int LD = kLd<HD>, KS = HD / 16, NT = kTile / 8, DT = HD / 8;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  bf16* q_s = reinterpret_cast<bf16*>(attention_smem);  // [kTile][LD]
  bf16* k_s = q_s + kTile * LD;                          // [2][kTile][LD]
  bf16* v_s = k_s + 2 * kTile * LD;                      // [2][kTile][LD]

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int seq = int(s.seq);
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);  // longest (last) query tiles first
  const int h = int(blockIdx.y), b = int(blockIdx.z);
  const int kvh = h / int(s.heads / s.kv_heads);
  const int q0 = tile * kTile;
  const bf16* q_base = q + int64_t(b) * seq * s.q_stride + int64_t(h) * HD;
  const bf16* k_base = k + int64_t(b) * seq * s.kv_stride + int64_t(kvh) * HD;
  const bf16* v_base = v + int64_t(b) * seq * s.kv_stride + int64_t(kvh) * HD;
  const float scale_log2 = s.scale * kLog2e;

  load_tile_async<HD, kTile>(q_s, q_base, s.q_stride, q0, seq);
  load_tile_async<HD, kTile>(k_s, k_base, s.kv_stride, 0, seq);
  load_tile_async<HD, kTile>(v_s, v_base, s.kv_stride, 0, seq);
  cp_async_commit();

  uint32_t qf[KS][4];  // this warp's 16 query rows as A fragments, loaded once
  float o[DT][4];      // output accumulator: rows g, g+8; columns dt*8 + 2t, +1
  zero_fragments(o);
  // Online softmax state of rows g and g+8 in log2 units: running max (equal across the 4 lanes
  // of a row), and this lane's partial sum of exp2(score - max) (reduced at the end).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  const int n_tiles = tile + 1;  // keys 0 .. q0 + 63: key tiles 0 .. tile
  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // key tile j is in buffer j&1 for all threads; buffer (j+1)&1 is free
    if (j == 0)
      for (int ks = 0; ks < KS; ++ks) load_a(qf[ks], q_s, LD, warp * 16, ks * 16, lane);
    if (j + 1 < n_tiles) {  // prefetch key tile j+1 while computing on tile j
      const int nb = (j + 1) & 1;
      load_tile_async<HD, kTile>(k_s + nb * kTile * LD, k_base, s.kv_stride, (j + 1) * kTile, seq);
      load_tile_async<HD, kTile>(v_s + nb * kTile * LD, v_base, s.kv_stride, (j + 1) * kTile, seq);
      cp_async_commit();
    }
    const bf16* kt = k_s + (j & 1) * kTile * LD;
    const bf16* vt = v_s + (j & 1) * kTile * LD;

    // S = Q K^T for 16 rows x 64 keys: sc[nt] holds keys nt*8 + 2t, +1 of rows g, g+8.
    float sc[NT][4];
    zero_fragments(sc);
    for (int ks = 0; ks < KS; ++ks)
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t kb[4];
        load_b_nk(kb, kt, LD, np * 16, ks * 16, lane);
        mma_bf16_m16n8k16(sc[2 * np], qf[ks], kb[0], kb[1]);
        mma_bf16_m16n8k16(sc[2 * np + 1], qf[ks], kb[2], kb[3]);
      }
    // To log2 units; on the diagonal tile (q0 == j * kTile) mask keys after the query. Keys past
    // seq only occur on the diagonal tile and always lie after every valid query there.
    for (int nt = 0; nt < NT; ++nt)
      for (int c = 0; c < 4; ++c) {
        float x = sc[nt][c] * scale_log2;
        const int key = nt * 8 + 2 * t + (c & 1), row = warp * 16 + g + (c >> 1) * 8;
        if (j == tile && key > row) x = -INFINITY;
        sc[nt][c] = x;
      }
    // Online softmax: new max, rescale the accumulator and partial sum, P = exp2(S - max).
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(sc[nt][2 * r], sc[nt][2 * r + 1]));
      mx = fmaxf(mx, shfl_xor(mx, 1));
      mx = fmaxf(mx, shfl_xor(mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx;  // a fully masked row stays all zero
      const float corr = fast_exp2(row_max[r] - base);
      row_max[r] = mx;
      row_sum[r] *= corr;
      for (int dt = 0; dt < DT; ++dt) {
        o[dt][2 * r] *= corr;
        o[dt][2 * r + 1] *= corr;
      }
      for (int nt = 0; nt < NT; ++nt)
        for (int e = 0; e < 2; ++e) {
          const float p = fast_exp2(sc[nt][2 * r + e] - base);
          sc[nt][2 * r + e] = p;
          row_sum[r] += p;
        }
    }
    // O += P V: P (16 x 64 keys) from registers, V (64 keys x HD) via ldmatrix.trans.
    mma_c_b(o, sc, vt, LD, lane);
  }

  for (int r = 0; r < 2; ++r) {
    float l = row_sum[r];
    l += shfl_xor(l, 1);
    l += shfl_xor(l, 2);
    const int row = q0 + warp * 16 + g + r * 8;
    if (row < seq) {
      const float inv = l > 0.f ? 1.f / l : 0.f;
      bf16* dst = out + ((int64_t(b) * seq + row) * s.heads + h) * HD + 2 * t;
      for (int dt = 0; dt < DT; ++dt)
        store_pair(dst + dt * 8, o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv, false);
      // lse = ln(sum_j exp(s_j)) = ln(2^max * l) = max * ln 2 + ln l
      if (lse && t == 0)
        lse[(int64_t(b) * s.heads + h) * seq + row] =
            l > 0.f ? row_max[r] * kLn2 + logf(l) : -INFINITY;
    }
  }
}

// D[b, h, t] = sum_d dout[b, t, h, d] * out[b, t, h, d]; one warp per (b, t, h) row.
template <int HD>
__global__ void attention_dsum_kernel(float* __restrict__ dsum, const bf16* __restrict__ dout,
                                      const bf16* __restrict__ out, const AttentionShape s) {
  const int64_t rows = s.batch * s.seq * s.heads;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int lane = int(threadIdx.x) % 32;
  if (row >= rows) return;  // the whole warp leaves together
  const uint32_t* o = reinterpret_cast<const uint32_t*>(out + row * HD);
  const uint32_t* d = reinterpret_cast<const uint32_t*>(dout + row * HD);
  float acc = 0.f;
  for (int i = lane; i < HD / 2; i += 32) {
    const uint32_t x = o[i], y = d[i];
    acc += bf16_lo(x) * bf16_lo(y) + bf16_hi(x) * bf16_hi(y);
  }
  for (int m = 16; m > 0; m /= 2) acc += shfl_xor(acc, m);
  if (lane == 0) {
    const int64_t h = row % s.heads, token = row / s.heads;  // token = b * seq + t
    const int64_t b = token / s.seq, t = token % s.seq;
    dsum[(b * s.heads + h) * s.seq + t] = acc;
  }
}

// grid (key tiles, kv heads, batch), kThreads threads, dkdv_smem_bytes<HD>() shared bytes.
// Works on the transposed problem: rows are keys (16 per warp), columns are queries.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv,
                          const bf16* __restrict__ dout, const bf16* __restrict__ q,
                          const bf16* __restrict__ k, const bf16* __restrict__ v,
                          const float* __restrict__ lse, const float* __restrict__ dsum,
                          const AttentionShape s, const bool accumulate) {
  constexpr int BQ = kDkdvQueries<HD>, LD = kLd<HD>, KS = HD / 16, NQ = BQ / 8, DT = HD / 8;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  bf16* k_s = reinterpret_cast<bf16*>(attention_smem);  // [kTile][LD]
  bf16* v_s = k_s + kTile * LD;                          // [kTile][LD]
  bf16* q_s = v_s + kTile * LD;                          // [2][BQ][LD]
  bf16* do_s = q_s + 2 * BQ * LD;                        // [2][BQ][LD]
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * BQ * LD);  // [2][BQ]
  float* d_s = lse_s + 2 * BQ;                                   // [2][BQ]

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int seq = int(s.seq), heads = int(s.heads);
  const int group = int(s.heads / s.kv_heads);
  const int kvh = int(blockIdx.y), b = int(blockIdx.z);
  const int k0 = int(blockIdx.x) * kTile;  // tile 0 (the most query tiles) is scheduled first
  const int q_tile_first = k0 / BQ;        // earlier queries see none of these keys
  const int q_tiles = (seq + BQ - 1) / BQ - q_tile_first;
  const int steps = group * q_tiles;  // (query head of the group, query tile) pairs
  const bf16* k_base = k + int64_t(b) * seq * s.kv_stride + int64_t(kvh) * HD;
  const bf16* v_base = v + int64_t(b) * seq * s.kv_stride + int64_t(kvh) * HD;
  const float scale_log2 = s.scale * kLog2e;

  // Loads Q, dO, lse and D of step i into buffer i&1.
  auto load_step = [&](int i) {
    const int buf = i & 1, h = kvh * group + i / q_tiles, qs = (q_tile_first + i % q_tiles) * BQ;
    const bf16* q_base = q + int64_t(b) * seq * s.q_stride + int64_t(h) * HD;
    const bf16* do_base = dout + (int64_t(b) * seq * heads + h) * HD;  // token stride heads*HD
    const int64_t row_base = (int64_t(b) * heads + h) * seq;
    load_tile_async<HD, BQ>(q_s + buf * BQ * LD, q_base, s.q_stride, qs, seq);
    load_tile_async<HD, BQ>(do_s + buf * BQ * LD, do_base, int64_t(heads) * HD, qs, seq);
    load_rows_async<BQ>(lse_s + buf * BQ, lse + row_base, qs, seq);
    load_rows_async<BQ>(d_s + buf * BQ, dsum + row_base, qs, seq);
  };
  load_tile_async<HD, kTile>(k_s, k_base, s.kv_stride, k0, seq);
  load_tile_async<HD, kTile>(v_s, v_base, s.kv_stride, k0, seq);
  load_step(0);
  cp_async_commit();

  float dk_acc[DT][4], dv_acc[DT][4];  // rows (keys) g, g+8 of this warp; columns dt*8 + 2t, +1
  for (int dt = 0; dt < DT; ++dt)
    for (int c = 0; c < 4; ++c) dk_acc[dt][c] = dv_acc[dt][c] = 0.f;

  for (int i = 0; i < steps; ++i) {
    cp_async_wait_all();
    __syncthreads();  // step i is in buffer i&1; everyone is done with buffer (i+1)&1
    if (i + 1 < steps) {
      load_step(i + 1);
      cp_async_commit();
    }
    const int buf = i & 1, qs = (q_tile_first + i % q_tiles) * BQ;
    const bf16* qt = q_s + buf * BQ * LD;
    const bf16* dot_s = do_s + buf * BQ * LD;
    const float* lse_t = lse_s + buf * BQ;
    const float* d_t = d_s + buf * BQ;

    // S^T = K Q^T: 16 keys x BQ queries; st[nt] holds queries nt*8 + 2t, +1 of keys g, g+8.
    float st[NQ][4];
    zero_fragments(st);
    mma_a_bt<KS>(st, k_s, qt, LD, warp * 16, lane);
    // P^T = exp(scale S^T - lse), zero where the key is after the query or the query is past seq.
    const bool masked = qs < k0 + kTile || qs + BQ > seq;
    for (int nt = 0; nt < NQ; ++nt)
      for (int c = 0; c < 4; ++c) {
        const int col = nt * 8 + 2 * t + (c & 1);
        const int query = qs + col, key = k0 + warp * 16 + g + (c >> 1) * 8;
        float p = fast_exp2(st[nt][c] * scale_log2 - lse_t[col] * kLog2e);
        if (masked && (key > query || query >= seq)) p = 0.f;
        st[nt][c] = p;
      }
    // dV += P^T dO: dO (BQ queries x HD) via ldmatrix.trans.
    mma_c_b(dv_acc, st, dot_s, LD, lane);
    // dP^T = V dO^T: 16 keys x BQ queries.
    float dpt[NQ][4];
    zero_fragments(dpt);
    mma_a_bt<KS>(dpt, v_s, dot_s, LD, warp * 16, lane);
    // dS^T = P^T * (dP^T - D): D belongs to the query (column).
    for (int nt = 0; nt < NQ; ++nt)
      for (int c = 0; c < 4; ++c) st[nt][c] *= dpt[nt][c] - d_t[nt * 8 + 2 * t + (c & 1)];
    // dK += dS^T Q (scaled at the end): Q (BQ queries x HD) via ldmatrix.trans.
    mma_c_b(dk_acc, st, qt, LD, lane);
  }

  for (int r = 0; r < 2; ++r) {
    const int key = k0 + warp * 16 + g + r * 8;
    if (key >= seq) continue;
    const int64_t off = (int64_t(b) * seq + key) * s.kv_stride + int64_t(kvh) * HD + 2 * t;
    for (int dt = 0; dt < DT; ++dt) {
      store_pair(dk + off + dt * 8, dk_acc[dt][2 * r] * s.scale, dk_acc[dt][2 * r + 1] * s.scale,
                 accumulate);
      store_pair(dv + off + dt * 8, dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1], accumulate);
    }
  }
}

// grid (query tiles, heads, batch), kThreads threads, dq_smem_bytes<HD>() shared bytes.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout,
                        const bf16* __restrict__ q, const bf16* __restrict__ k,
                        const bf16* __restrict__ v, const float* __restrict__ lse,
                        const float* __restrict__ dsum, const AttentionShape s,
                        const bool accumulate) {
  constexpr int LD = kLd<HD>, KS = HD / 16, NT = kTile / 8, DT = HD / 8;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  bf16* q_s = reinterpret_cast<bf16*>(attention_smem);  // [kTile][LD]
  bf16* do_s = q_s + kTile * LD;                         // [kTile][LD]
  bf16* k_s = do_s + kTile * LD;                         // [2][kTile][LD]
  bf16* v_s = k_s + 2 * kTile * LD;                      // [2][kTile][LD]
  float* lse_s = reinterpret_cast<float*>(v_s + 2 * kTile * LD);  // [kTile]
  float* d_s = lse_s + kTile;                                      // [kTile]

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int seq = int(s.seq), heads = int(s.heads);
  const int tile = int(gridDim.x) - 1 - int(blockIdx.x);  // longest (last) query tiles first
  const int h = int(blockIdx.y), b = int(blockIdx.z);
  const int kvh = h / int(s.heads / s.kv_heads);
  const int q0 = tile * kTile;
  const bf16* q_base = q + int64_t(b) * seq * s.q_stride + int64_t(h) * HD;
  const bf16* do_base = dout + (int64_t(b) * seq * heads + h) * HD;  // token stride heads*HD
  const bf16* k_base = k + int64_t(b) * seq * s.kv_stride + int64_t(kvh) * HD;
  const bf16* v_base = v + int64_t(b) * seq * s.kv_stride + int64_t(kvh) * HD;
  const int64_t row_base = (int64_t(b) * heads + h) * seq;
  const float scale_log2 = s.scale * kLog2e;

  load_tile_async<HD, kTile>(q_s, q_base, s.q_stride, q0, seq);
  load_tile_async<HD, kTile>(do_s, do_base, int64_t(heads) * HD, q0, seq);
  load_rows_async<kTile>(lse_s, lse + row_base, q0, seq);
  load_rows_async<kTile>(d_s, dsum + row_base, q0, seq);
  load_tile_async<HD, kTile>(k_s, k_base, s.kv_stride, 0, seq);
  load_tile_async<HD, kTile>(v_s, v_base, s.kv_stride, 0, seq);
  cp_async_commit();

  float dq_acc[DT][4];  // rows g, g+8 of this warp; columns dt*8 + 2t, +1
  zero_fragments(dq_acc);
  float lse_r[2] = {0.f, 0.f}, d_r[2] = {0.f, 0.f};  // of rows g and g+8 (lse in log2 units)

  const int n_tiles = tile + 1;
  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // key tile j is in buffer j&1 for all threads; buffer (j+1)&1 is free
    if (j == 0)
      for (int r = 0; r < 2; ++r) {
        lse_r[r] = lse_s[warp * 16 + g + r * 8] * kLog2e;
        d_r[r] = d_s[warp * 16 + g + r * 8];
      }
    if (j + 1 < n_tiles) {
      const int nb = (j + 1) & 1;
      load_tile_async<HD, kTile>(k_s + nb * kTile * LD, k_base, s.kv_stride, (j + 1) * kTile, seq);
      load_tile_async<HD, kTile>(v_s + nb * kTile * LD, v_base, s.kv_stride, (j + 1) * kTile, seq);
      cp_async_commit();
    }
    const bf16* kt = k_s + (j & 1) * kTile * LD;
    const bf16* vt = v_s + (j & 1) * kTile * LD;

    // S = Q K^T (16 rows x 64 keys), then P = exp(scale S - lse) with the causal mask.
    float sc[NT][4];
    zero_fragments(sc);
    mma_a_bt<KS>(sc, q_s, kt, LD, warp * 16, lane);
    for (int nt = 0; nt < NT; ++nt)
      for (int c = 0; c < 4; ++c) {
        const int key = nt * 8 + 2 * t + (c & 1), row = warp * 16 + g + (c >> 1) * 8;
        float p = fast_exp2(sc[nt][c] * scale_log2 - lse_r[c >> 1]);
        if (j == tile && key > row) p = 0.f;
        sc[nt][c] = p;
      }
    // dP = dO V^T (16 rows x 64 keys).
    float dp[NT][4];
    zero_fragments(dp);
    mma_a_bt<KS>(dp, do_s, vt, LD, warp * 16, lane);
    // dS = P * (dP - D), then dQ += dS K (scaled at the end): K (64 keys x HD) via ldmatrix.trans.
    for (int nt = 0; nt < NT; ++nt)
      for (int c = 0; c < 4; ++c) sc[nt][c] *= dp[nt][c] - d_r[c >> 1];
    mma_c_b(dq_acc, sc, kt, LD, lane);
  }

  for (int r = 0; r < 2; ++r) {
    const int row = q0 + warp * 16 + g + r * 8;
    if (row >= seq) continue;
    bf16* dst = dq + (int64_t(b) * seq + row) * s.q_stride + int64_t(h) * HD + 2 * t;
    for (int dt = 0; dt < DT; ++dt)
      store_pair(dst + dt * 8, dq_acc[dt][2 * r] * s.scale, dq_acc[dt][2 * r + 1] * s.scale,
                 accumulate);
  }
}

}  // namespace attention_detail

// ---- Launchers ----

namespace attention_detail {

// The CUDA kernels' requirements beyond check(): a supported head dim, 16-byte aligned rows of
// the bf16 tensors (cp.async / ldmatrix move 16 bytes), and sizes that fit the grid and int
// indices.
inline void check_cuda_shape(const AttentionShape& s, std::initializer_list<const void*> pointers) {
  check(s);
  MIL_CHECK(s.head_dim == 64 || s.head_dim == 128, "attention (CUDA): head_dim ", s.head_dim,
            " is not supported; supported head dims: 64, 128");
  MIL_CHECK(s.q_stride % 8 == 0 && s.kv_stride % 8 == 0, "attention (CUDA): q_stride (",
            s.q_stride, ") and kv_stride (", s.kv_stride,
            ") must be multiples of 8 elements (16-byte aligned rows)");
  for (const void* p : pointers)
    MIL_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0,
              "attention (CUDA): every bf16 tensor must start 16-byte aligned, got ", p);
  MIL_CHECK(s.batch <= 65535 && s.heads <= 65535, "attention (CUDA): batch (", s.batch,
            ") and heads (", s.heads, ") must be <= 65535 (grid limits)");
  MIL_CHECK(s.seq <= (int64_t(1) << 30) && s.batch * s.seq * s.heads < (int64_t(1) << 32),
            "attention (CUDA): batch * seq * heads = ", s.batch * s.seq * s.heads,
            " is too large for one launch");
}

template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  MIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(bytes)));
}

inline unsigned tiles(int64_t n) { return unsigned((n + kTile - 1) / kTile); }

template <int HD>
void launch_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                    const AttentionShape& s, cudaStream_t stream) {
  constexpr size_t smem = forward_smem_bytes<HD>();
  allow_smem(attention_forward_kernel<HD>, smem);
  dim3 grid(tiles(s.seq), unsigned(s.heads), unsigned(s.batch));
  attention_forward_kernel<HD><<<grid, kThreads, smem, stream>>>(out, lse, q, k, v, s);
  MIL_CUDA_CHECK_LAUNCH("attention_forward_kernel");
}

template <int HD>
void launch_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                     const bf16* k, const bf16* v, const bf16* out, const float* lse,
                     float* dsum, const AttentionShape& s, bool accumulate, cudaStream_t stream) {
  const int64_t rows = s.batch * s.seq * s.heads;
  const unsigned dsum_blocks = unsigned((rows + kThreads / 32 - 1) / (kThreads / 32));
  attention_dsum_kernel<HD><<<dsum_blocks, kThreads, 0, stream>>>(dsum, dout, out, s);
  MIL_CUDA_CHECK_LAUNCH("attention_dsum_kernel");

  constexpr size_t dkdv_smem = dkdv_smem_bytes<HD>();
  allow_smem(attention_dkdv_kernel<HD>, dkdv_smem);
  dim3 dkdv_grid(tiles(s.seq), unsigned(s.kv_heads), unsigned(s.batch));
  attention_dkdv_kernel<HD><<<dkdv_grid, kThreads, dkdv_smem, stream>>>(
      dk, dv, dout, q, k, v, lse, dsum, s, accumulate);
  MIL_CUDA_CHECK_LAUNCH("attention_dkdv_kernel");

  constexpr size_t dq_smem = dq_smem_bytes<HD>();
  allow_smem(attention_dq_kernel<HD>, dq_smem);
  dim3 dq_grid(tiles(s.seq), unsigned(s.heads), unsigned(s.batch));
  attention_dq_kernel<HD><<<dq_grid, kThreads, dq_smem, stream>>>(dq, dout, q, k, v, lse, dsum, s,
                                                                   accumulate);
  MIL_CUDA_CHECK_LAUNCH("attention_dq_kernel");
}

}  // namespace attention_detail

// out = softmax(scale q k^T, causal) v in bf16 (fp32 accumulation); lse (fp32, may be null)
// saved for the backward pass. Layouts as in attention.hpp; head_dim 64 or 128.
inline void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                              const AttentionShape& s, cudaStream_t stream) {
  attention_detail::check_cuda_shape(s, {out, q, k, v});
  if (s.batch == 0 || s.seq == 0) return;
  if (s.head_dim == 64) attention_detail::launch_forward<64>(out, lse, q, k, v, s, stream);
  else attention_detail::launch_forward<128>(out, lse, q, k, v, s, stream);
}

// Gradients of attention_forward given out and lse from it: dq with q's layout, dk and dv with
// k's (they may point into one fused dQKV buffer; gaps between them are never written).
// accumulate=false overwrites, true adds (bf16 read-modify-write). Deterministic: every gradient
// element is written by one thread in a fixed order. Outputs must not alias inputs.
inline void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
                               const bf16* k, const bf16* v, const bf16* out, const float* lse,
                               const AttentionShape& s, bool accumulate, cudaStream_t stream) {
  attention_detail::check_cuda_shape(s, {dq, dk, dv, dout, q, k, v, out});
  MIL_CHECK(lse != nullptr, "attention_backward (CUDA): lse is required");
  if (s.batch == 0 || s.seq == 0) return;
  // D = rowsum(dout * out), one float per query row; allocated on `stream` so the caching
  // allocator reuses it only after these kernels, in stream order.
  const size_t bytes = size_t(s.batch * s.heads * s.seq) * sizeof(float);
  struct Scratch {
    void* p;
    ~Scratch() { CachingAllocator::instance().deallocate(p); }
  } dsum{CachingAllocator::instance().allocate(bytes, stream)};
  float* d = static_cast<float*>(dsum.p);
  if (s.head_dim == 64)
    attention_detail::launch_backward<64>(dq, dk, dv, dout, q, k, v, out, lse, d, s, accumulate,
                                          stream);
  else
    attention_detail::launch_backward<128>(dq, dk, dv, dout, q, k, v, out, lse, d, s, accumulate,
                                           stream);
}

}  // namespace mil::cuda
#endif  // MIL_CUDA_ENABLED
