#pragma once
// Attention against a key/value cache on the GPU (shape, layouts and CPU reference in
// kv_attention.hpp), for float and bf16 with head_dim 64 or 128.
//
// Decode reads every cached key and value once: one block per (query row, KV head) serves the
// whole group of query heads that shares that KV head (GQA), so K and V come from memory once per
// group. A batch-1 decode has only kv_heads such blocks, so the keys are also split across
// `splits` blocks (flash-decoding): each writes its partial (max, sum, output) to a workspace and
// counts itself done on a per-(row, KV head) counter; the last one merges the partials, in split
// order whichever block it is, and resets the counter (one launch per step, no merge kernel).
// Steps of at most 8 rows split every row as a single row would be split, so a row's result does
// not depend on the other rows of its step (verification equals decoding, as on the CPU).
// Within a block, the 8 warps take every 8th key of the block's range; a
// lane holds head_dim/32 dimensions of q and of the output of each head, a warp reduction gives
// each score, and an online softmax keeps the running max and sum per warp; the warps are merged
// in shared memory. Slots and positions are read on the device (so is the split of the keys), so
// a captured CUDA graph can replay the same launches while the sequences grow.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../core/cuda_check.hpp"
#include "../core/cuda_pdl.cuh"
#include "../core/cuda_vec.cuh"
#include "../core/cuda_warp.cuh"
#include "kv_attention.hpp"

namespace mil::cuda {
namespace kv_detail {

constexpr int kWarps = 8;
constexpr int kMaxGroup = 8;  // query heads per KV head held in registers

template <class T>
__global__ void kv_cache_append_kernel(T* k_cache, T* v_cache, const T* k, const T* v,
                                       int64_t src_stride, const int32_t* slots,
                                       const int32_t* positions, int64_t kv_width,
                                       int64_t max_seq) {
  const int64_t r = blockIdx.x;
  const int64_t dst = (int64_t(slots[r]) * max_seq + positions[r]) * kv_width;
  for (int64_t c = threadIdx.x; c < kv_width; c += blockDim.x) {
    k_cache[dst + c] = k[r * src_stride + c];
    v_cache[dst + c] = v[r * src_stride + c];
  }
}

// Element d of output head `head` from its splits' partials: sum_z o_z 2^(m_z - M) / sum_z l_z
// 2^(m_z - M), in split order. The partials come from other blocks: read past L1.
template <class T, int HD>
__device__ void merge_splits(T* out, const float* part_m, const float* part_l, const float* part_o,
                             int64_t head, int d, int splits) {
  const float* pm = part_m + head * splits;
  float mx = -INFINITY;
  for (int z = 0; z < splits; ++z) mx = fmaxf(mx, __ldcg(pm + z));
  float sum = 0.f, o = 0.f;
  for (int z = 0; z < splits; ++z) {
    const float mz = __ldcg(pm + z);
    const float c = mz == -INFINITY ? 0.f : exp2f(mz - mx);
    sum += __ldcg(part_l + head * splits + z) * c;
    o += __ldcg(part_o + (head * splits + z) * HD + d) * c;
  }
  out[head * HD + d] = from_float<T>(o / sum);
}

// Split z of the keys of row r, KV head g. With one split the block writes out; otherwise it
// writes its merged (max, sum, unnormalised output) per head to part_*, and the last split of
// (r, g) to finish merges them.
template <class T, int HD>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kv_cache_kernel(T* out, float* part_m, float* part_l, float* part_o,
                              int32_t* counters, const T* q, const T* k_cache, const T* v_cache,
                              const int32_t* slots, const int32_t* positions, int64_t q_stride,
                              int heads, int kv_heads, int64_t max_seq, float scale_log2) {
  constexpr int E = HD / 32;  // dimensions per lane
  grid_dependency_wait();  // q, the cache and the positions come from earlier work
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t r = blockIdx.x;
  const int g = blockIdx.y, group = heads / kv_heads, splits = gridDim.z;
  const int n = positions[r] + 1;
  const int chunk = (n + splits - 1) / splits;
  const int begin = int(blockIdx.z) * chunk, end = min(n, begin + chunk);
  const int64_t kvw = int64_t(kv_heads) * HD;
  const T* kc = k_cache + int64_t(slots[r]) * max_seq * kvw + g * HD + lane * E;
  const T* vc = v_cache + int64_t(slots[r]) * max_seq * kvw + g * HD + lane * E;

  float qr[kMaxGroup][E], acc[kMaxGroup][E], m[kMaxGroup], l[kMaxGroup];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      // Scores are kept in base 2: q is pre-scaled by scale * log2(e).
      qr[h][e] = h < group
                     ? to_float(q[r * q_stride + int64_t(g * group + h) * HD + lane * E + e]) *
                           scale_log2
                     : 0.f;
      acc[h][e] = 0.f;
    }
  }
  for (int j = begin + warp; j < end; j += kWarps) {
    float kr[E], vr[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      kr[e] = to_float(kc[int64_t(j) * kvw + e]);
      vr[e] = to_float(vc[int64_t(j) * kvw + e]);
    }
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h >= group) break;
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) s = fmaf(qr[h][e], kr[e], s);
      s = warp_sum(s);
      const float m_new = fmaxf(m[h], s);
      const float corr = exp2f(m[h] - m_new), p = exp2f(s - m_new);
      l[h] = l[h] * corr + p;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[h][e] = fmaf(acc[h][e], corr, p * vr[e]);
      m[h] = m_new;
    }
  }

  // Merge the warps: each warp publishes (m, l, acc) per head, then thread t finishes output
  // elements t, t + 256, ... of the group.
  __shared__ float sm[kWarps][kMaxGroup], sl[kWarps][kMaxGroup];
  __shared__ float sacc[kWarps][kMaxGroup * HD];
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h >= group) break;
    if (lane == 0) {
      sm[warp][h] = m[h];
      sl[warp][h] = l[h];
    }
#pragma unroll
    for (int e = 0; e < E; ++e) sacc[warp][h * HD + lane * E + e] = acc[h][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * HD; i += kWarps * 32) {
    const int h = i / HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm[w][h]);
    float sum = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float c = sm[w][h] == -INFINITY ? 0.f : exp2f(sm[w][h] - mx);
      sum += sl[w][h] * c;
      o += sacc[w][i] * c;
    }
    const int64_t head = r * heads + int64_t(g) * group + h;  // output head index
    if (splits == 1) {
      out[head * HD + i % HD] = from_float<T>(o / sum);
    } else {
      const int64_t at = head * splits + blockIdx.z;
      part_o[at * HD + i % HD] = o;
      if (i % HD == 0) {
        part_m[at] = mx;
        part_l[at] = sum;
      }
    }
  }
  launch_dependents();
  if (splits == 1) return;
  // Publish the partials, then count this split done; the last of (r, g) merges.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  int32_t* counter = counters + r * kv_heads + g;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < group * HD; i += kWarps * 32)
    merge_splits<T, HD>(out, part_m, part_l, part_o, r * heads + int64_t(g) * group + i / HD,
                        i % HD, splits);
  if (threadIdx.x == 0) *counter = 0;  // ready for the next call
}

}  // namespace kv_detail

// Same contract as cpu::kv_cache_append, except that slots and positions (on the device) are not
// validated: the caller checks them on the host where they come from.
template <class T>
void kv_cache_append(T* k_cache, T* v_cache, const T* k, const T* v, int64_t src_stride,
                     const int32_t* slots, const int32_t* positions, int64_t rows,
                     int64_t kv_width, int64_t n_slots, int64_t max_seq, cudaStream_t stream) {
  MIL_CHECK(rows >= 0 && kv_width >= 1 && src_stride >= kv_width && n_slots >= 1 && max_seq >= 1,
            "kv_cache_append: rows ", rows, ", kv_width ", kv_width, ", src_stride ", src_stride);
  MIL_CHECK(rows <= INT32_MAX, "kv_cache_append: too many rows: ", rows);
  if (rows == 0) return;
  const int threads = int(std::min<int64_t>(256, (kv_width + 31) / 32 * 32));
  kv_detail::kv_cache_append_kernel<T><<<unsigned(rows), threads, 0, stream>>>(
      k_cache, v_cache, k, v, src_stride, slots, positions, kv_width, max_seq);
  MIL_CUDA_CHECK_LAUNCH("kv_cache_append_kernel");
}

// Rows up to which a step's rows are split as one row would be (decode, verification).
inline constexpr int64_t kKvRowInvariantRows = 8;

// Blocks per (row, KV head) along the keys: enough blocks to fill the GPU (~2 waves of 132 SMs)
// with one row, at most 32, and none for keys a sequence cannot have. Up to
// kKvRowInvariantRows rows, each row splits as a single row does.
inline int64_t kv_attention_splits(const KvAttentionShape& s) {
  const int64_t rows = s.rows <= kKvRowInvariantRows ? 1 : s.rows;
  const int64_t blocks = std::max<int64_t>(1, rows * s.kv_heads);
  return std::clamp<int64_t>((264 + blocks - 1) / blocks, 1, std::min<int64_t>(32, s.max_seq));
}
// Floats of partials attention_kv_cache needs for shape s (0: none).
inline int64_t kv_attention_workspace(const KvAttentionShape& s) {
  const int64_t splits = kv_attention_splits(s);
  return splits == 1 ? 0 : s.rows * s.heads * splits * (s.head_dim + 2);
}
// Counters attention_kv_cache needs for shape s (zero before the first call; 0: none).
inline int64_t kv_attention_counters(const KvAttentionShape& s) {
  return kv_attention_splits(s) == 1 ? 0 : s.rows * s.kv_heads;
}

// Same contract as cpu::attention_kv_cache (slots and positions not validated, as above), plus a
// workspace of kv_attention_workspace(s) floats and kv_attention_counters(s) zeroed counters,
// allocated once by the caller so that a captured step allocates nothing.
template <class T>
void attention_kv_cache(T* out, const T* q, const T* k_cache, const T* v_cache,
                        const int32_t* slots, const int32_t* positions, const KvAttentionShape& s,
                        KvWorkspace workspace, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "attention_kv_cache on the GPU supports float and bf16");
  check(s);
  MIL_CHECK(s.head_dim == 64 || s.head_dim == 128, "attention_kv_cache: head_dim ", s.head_dim,
            " is not supported on the GPU (64 or 128)");
  MIL_CHECK(s.heads / s.kv_heads <= kv_detail::kMaxGroup, "attention_kv_cache: ",
            s.heads / s.kv_heads, " query heads per KV head, the GPU kernel takes at most ",
            kv_detail::kMaxGroup);
  MIL_CHECK(s.rows <= INT32_MAX && s.kv_heads <= 65535 && s.rows * s.heads <= INT32_MAX,
            "attention_kv_cache: too many rows (", s.rows, ") or heads (", s.heads, ")");
  if (s.rows == 0) return;
  const int64_t splits = kv_attention_splits(s);
  MIL_CHECK(splits == 1 || (workspace.partials != nullptr && workspace.counters != nullptr),
            "attention_kv_cache: needs a workspace of ", kv_attention_workspace(s),
            " floats and ", kv_attention_counters(s), " counters");
  float* part_m = workspace.partials;
  float* part_l = splits == 1 ? nullptr : part_m + s.rows * s.heads * splits;
  float* part_o = splits == 1 ? nullptr : part_l + s.rows * s.heads * splits;
  const dim3 grid(unsigned(s.rows), unsigned(s.kv_heads), unsigned(splits));
  const float scale_log2 = s.scale * 1.4426950408889634f;
  auto kernel = s.head_dim == 64 ? kv_detail::attention_kv_cache_kernel<T, 64>
                                 : kv_detail::attention_kv_cache_kernel<T, 128>;
  launch_dependent(kernel, grid, dim3(kv_detail::kWarps * 32), 0, stream, out, part_m, part_l,
                   part_o, workspace.counters, q, k_cache, v_cache, slots, positions, s.q_stride,
                   int(s.heads), int(s.kv_heads), s.max_seq, scale_log2);
}

}  // namespace mil::cuda
