#pragma once
// Attention against a key/value cache, for inference: prefill continuing a conversation and
// incremental decode of a batch of sequences that are each at their own length. The shape shared
// with the CUDA kernels (kv_attention.cuh), the CPU kernel and its plain-loop reference.
//
// Layouts (element offsets):
//   cache  k[(slot*max_seq + pos)*kv_width + g*head_dim + d], v likewise; kv_width = kv_heads*hd
//   q      q[r*q_stride + h*head_dim + d]              query row r, head h (g = h / group)
//   out    out[r*heads*head_dim + h*head_dim + d]      contiguous
//   slots, positions: one per query row. Row r attends to cache rows [0, positions[r]] of slot
//   slots[r]; its own key and value must already be there (kv_cache_append first).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <mil/core/dtype.hpp>
#include <mil/core/error.hpp>
#include <mil/core/threads.hpp>
#include <mil/kernels/cpu_simd.hpp>

namespace mil {

// Scratch of the GPU's split-key attention (kv_attention.cuh), allocated once by the caller so
// that a captured step allocates nothing: the splits' partial results, and one counter per (row,
// KV head) that must be zero before the first call (each call leaves them zero). The CPU needs none.
struct KvWorkspace {
  float* partials = nullptr;
  int32_t* counters = nullptr;
};

struct KvAttentionShape {
  int64_t rows = 0;                          // query rows (tokens) of this call
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t q_stride = 0;                      // elements between query rows
  int64_t slots = 0, max_seq = 0;            // cache: sequences and rows per sequence
  float scale = 1.f;                         // applied to q.k, usually 1/sqrt(head_dim)
  int64_t kv_width() const { return kv_heads * head_dim; }
};

inline void check(const KvAttentionShape& s) {
  MIL_CHECK(s.rows >= 0 && s.slots >= 1 && s.max_seq >= 1, "kv attention: rows (", s.rows,
            ") must be >= 0, slots (", s.slots, ") and max_seq (", s.max_seq, ") >= 1");
  MIL_CHECK(s.heads >= 1 && s.kv_heads >= 1 && s.head_dim >= 1 && s.heads % s.kv_heads == 0,
            "kv attention: heads (", s.heads, ") must be a positive multiple of kv_heads (",
            s.kv_heads, "), head_dim (", s.head_dim, ") >= 1");
  MIL_CHECK(s.q_stride >= checked_mul(s.heads, s.head_dim), "kv attention: q_stride ", s.q_stride,
            " is smaller than heads * head_dim = ", s.heads * s.head_dim);
  MIL_CHECK(std::isfinite(s.scale), "kv attention: scale must be finite, got ", s.scale);
  (void)checked_mul(checked_mul(s.slots, s.max_seq), s.kv_width());
  (void)checked_mul(s.rows, s.q_stride);
}

// Throws naming the first row whose slot or position is outside the cache.
inline void check_slots_positions(const int32_t* slots, const int32_t* positions, int64_t rows,
                                  int64_t n_slots, int64_t max_seq) {
  for (int64_t r = 0; r < rows; ++r) {
    MIL_CHECK(slots[r] >= 0 && slots[r] < n_slots, "kv cache: row ", r, " names slot ", slots[r],
              " of ", n_slots);
    MIL_CHECK(positions[r] >= 0 && positions[r] < max_seq, "kv cache: row ", r, " is at position ",
              positions[r], ", the cache holds ", max_seq, " per sequence");
  }
}

namespace cpu {

// k_cache/v_cache row (slots[r], positions[r]) = k/v row r (rows of kv_width at src_stride).
template <class T>
void kv_cache_append(T* k_cache, T* v_cache, const T* k, const T* v, int64_t src_stride,
                     const int32_t* slots, const int32_t* positions, int64_t rows,
                     int64_t kv_width, int64_t n_slots, int64_t max_seq) {
  MIL_CHECK(rows >= 0 && kv_width >= 1 && src_stride >= kv_width, "kv_cache_append: rows ", rows,
            ", kv_width ", kv_width, ", src_stride ", src_stride);
  check_slots_positions(slots, positions, rows, n_slots, max_seq);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t dst = (int64_t(slots[r]) * max_seq + positions[r]) * kv_width;
    std::copy_n(k + r * src_stride, kv_width, k_cache + dst);
    std::copy_n(v + r * src_stride, kv_width, v_cache + dst);
  }
}

// out = softmax(scale q k^T) v over each row's cache prefix, in acc_t<T> with a two-pass softmax:
// the plain loops the fast path and the GPU kernels are tested against.
template <class T>
void attention_kv_cache_reference(T* out, const T* q, const T* k_cache, const T* v_cache,
                                  const int32_t* slots, const int32_t* positions,
                                  const KvAttentionShape& s) {
  using A = acc_t<T>;
  check(s);
  check_slots_positions(slots, positions, s.rows, s.slots, s.max_seq);
  const int64_t hd = s.head_dim, group = s.heads / s.kv_heads, kvw = s.kv_width();
  std::vector<A> p(static_cast<size_t>(s.max_seq)), acc(static_cast<size_t>(hd));
  for (int64_t r = 0; r < s.rows; ++r) {
    const int64_t n = int64_t(positions[r]) + 1;
    const T* kc = k_cache + int64_t(slots[r]) * s.max_seq * kvw;
    const T* vc = v_cache + int64_t(slots[r]) * s.max_seq * kvw;
    for (int64_t h = 0; h < s.heads; ++h) {
      const T* qh = q + r * s.q_stride + h * hd;
      const int64_t g = h / group;
      A mx = -std::numeric_limits<A>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        A dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += to_acc(qh[d]) * to_acc(kc[j * kvw + g * hd + d]);
        p[j] = dot * A(s.scale);
        mx = std::max(mx, p[j]);
      }
      A sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < hd; ++d) acc[d] += p[j] * to_acc(vc[j * kvw + g * hd + d]);
      T* o = out + (r * s.heads + h) * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = T(acc[d] / sum);
    }
  }
}

namespace kv_attention_detail {

inline constexpr int kLanes = 16;

// a . b over n floats in one order whatever the caller: lane l sums the elements d = l (mod 16)
// in increasing d, then the lanes add in the tree l + 8, l + 4, l + 2, l + 1. Fixed trip counts,
// so the compiler vectorises the lanes at any optimisation level that vectorises.
inline float dot(const float* a, const float* b, int64_t n) {
  float lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[d + l] * b[d + l];
  for (int l = 0; d + l < n; ++l) lanes[l] += a[d + l] * b[d + l];
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

// acc[0, n) += p * v[0, n), in chunks of 16 (vectorised) and a tail.
inline void add_scaled(float* acc, float p, const float* v, int64_t n) {
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[d + l] += p * v[d + l];
  for (; d < n; ++d) acc[d] += p * v[d];
}

// The softmax of n scores, unnormalised: p[j] = exp(p[j] - max p), summed in increasing j;
// returns 1 / that sum, which the caller applies to the weighted sum of values (one rounding per
// output, not one per weight).
inline float softmax_weights(float* p, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, p[j]);
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
  return 1.f / sum;
}

// One query head against n cached keys and values (rows kv_width apart): scores, softmax, the
// weighted sum of values. p holds n floats, acc head_dim.
inline void attend(float* o, const float* q, const float* k, const float* v, int64_t n,
                   int64_t kvw, int64_t hd, float scale, float* p, float* acc) {
  for (int64_t j = 0; j < n; ++j) p[j] = dot(q, k + j * kvw, hd) * scale;
  const float inv = softmax_weights(p, n);
  std::fill(acc, acc + hd, 0.f);
  for (int64_t j = 0; j < n; ++j) add_scaled(acc, p[j], v + j * kvw, hd);
  for (int64_t d = 0; d < hd; ++d) o[d] = acc[d] * inv;
}

#if MIL_CPU_SIMD
// attend for head_dim HD (64 or 128) with AVX2: the same order as the portable loops (lanes of 16
// per dot product, value sums in increasing key order), unrolled, with the value sums in
// registers, 64 columns at a time. The same bits as attend where its loops are contracted to FMAs.
template <int HD>
MIL_TARGET_AVX2 void attend_avx2(float* o, const float* q, const float* k, const float* v,
                                 int64_t n, int64_t kvw, float scale, float* p) {
  static_assert(HD % 64 == 0);
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = k + j * kvw;
    __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(kj));
    __m256 hi = _mm256_mul_ps(_mm256_loadu_ps(q + 8), _mm256_loadu_ps(kj + 8));
    for (int d = kLanes; d < HD; d += kLanes) {
      lo = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kj + d), lo);
      hi = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), _mm256_loadu_ps(kj + d + 8), hi);
    }
    p[j] = avx2_sum_lanes(lo, hi) * scale;
  }
  const __m256 inv = _mm256_set1_ps(softmax_weights(p, n));
  for (int c0 = 0; c0 < HD; c0 += 64) {
    __m256 acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* vj = v + j * kvw + c0;
      for (int c = 0; c < 8; ++c) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * c), acc[c]);
    }
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(o + c0 + 8 * c, _mm256_mul_ps(acc[c], inv));
  }
}
#endif

}  // namespace kv_attention_detail

// attention_kv_cache_reference's result. For float, the fast path: (head, row) pairs split over
// the threads (heads outermost, so neighbouring tasks read the same keys), the dot products and
// the value sums vectorised in a fixed order (AVX2 for head_dim 64 and 128 where the CPU has it,
// portable loops elsewhere; the two may differ in the last bits where the build does not contract
// the portable loops to FMAs). Each (row, head) is computed alone, in an order set
// by its own length only, so a row's bits depend neither on the other rows of the call nor on
// the thread count (speculative verification equals decoding). The workspace is the GPU kernel's;
// the CPU ignores it.
template <class T>
void attention_kv_cache(T* out, const T* q, const T* k_cache, const T* v_cache,
                        const int32_t* slots, const int32_t* positions, const KvAttentionShape& s,
                        KvWorkspace /*workspace*/ = {}) {
  if constexpr (!std::is_same_v<T, float>) {
    attention_kv_cache_reference(out, q, k_cache, v_cache, slots, positions, s);
  } else {
    check(s);
    check_slots_positions(slots, positions, s.rows, s.slots, s.max_seq);
    const int64_t hd = s.head_dim, group = s.heads / s.kv_heads, kvw = s.kv_width();
    const int64_t tasks = s.rows * s.heads;
    // The AVX2 form for the usual head sizes where the CPU has it (0: the portable loops).
    [[maybe_unused]] const int64_t simd = cpu_has_avx2() && (hd == 64 || hd == 128) ? hd : 0;
    int64_t longest = 0, work = 0;
    for (int64_t r = 0; r < s.rows; ++r) {
      longest = std::max<int64_t>(longest, int64_t(positions[r]) + 1);
      work += (int64_t(positions[r]) + 1) * s.heads * hd;
    }
    // Threads pay off past ~64k multiply-adds; the `if` changes who computes, not the result.
    [[maybe_unused]] const bool parallel = work > (int64_t(1) << 16);
    // Each thread's scores and value sums, allocated here: nothing in the parallel region throws.
    const int64_t per_thread = longest + hd;
    std::vector<float> buffers(static_cast<size_t>(checked_mul(int64_t(threads()), per_thread)));
#if defined(_OPENMP)
#pragma omp parallel if (parallel)
#endif
    {
#if defined(_OPENMP)
      float* p = buffers.data() + int64_t(omp_get_thread_num()) * per_thread;
#else
      float* p = buffers.data();
#endif
      float* acc = p + longest;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 4)
#endif
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t h = t / s.rows, r = t % s.rows, g = h / group;
        const int64_t base = int64_t(slots[r]) * s.max_seq * kvw + g * hd;
        float* o = out + (r * s.heads + h) * hd;
        const float* qh = q + r * s.q_stride + h * hd;
        const int64_t n = int64_t(positions[r]) + 1;
#if MIL_CPU_SIMD
        if (simd == 64) {
          kv_attention_detail::attend_avx2<64>(o, qh, k_cache + base, v_cache + base, n, kvw,
                                               s.scale, p);
          continue;
        }
        if (simd == 128) {
          kv_attention_detail::attend_avx2<128>(o, qh, k_cache + base, v_cache + base, n, kvw,
                                                s.scale, p);
          continue;
        }
#endif
        kv_attention_detail::attend(o, qh, k_cache + base, v_cache + base, n, kvw, hd, s.scale,
                                    p, acc);
      }
    }
  }
}

}  // namespace cpu
}  // namespace mil
