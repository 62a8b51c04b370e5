#pragma once
// The fused decode products on the GPU (contracts and CPU references in fused_rows.hpp): one
// launch of matmul_skinny.cuh's kernel each, with the RMSNorm applied while the rows are staged
// and the next operation as its epilogue, which gets a warp's two columns at once:
//   SwiGLU:           columns j (gate) and ff + j (up) give out[j];
//   RoPE + KV cache:  q and k columns come as their rotation pairs (i, i + head_dim/2, or 2i and
//                     2i + 1 when interleaved), v columns as neighbours; the epilogue adds the
//                     bias, rotates, writes q, k, v to qkv and k, v to the cache row of the token.
// Each intermediate is rounded to T where the unfused operations store it, so the results are
// theirs up to the RMS sum's order. For rows <= 8 (decode and verification steps), float or bf16.
// The weights are inference weights: no kernel still in flight on the stream may write them (they
// are read before the wait for the previous kernel, matmul_skinny.cuh).
#include <cstdint>
#include <type_traits>

#include "../core/math.hpp"
#include "fused_rows.hpp"
#include "matmul_skinny.cuh"
#include "rope.cuh"

namespace mil::cuda {
namespace fused_detail {

template <class T>
MIL_DEVICE inline float round_to(float v) {
  return to_float(from_float<T>(v));
}

template <class T>
struct SwigluEpilogue {
  static constexpr int kCols = 2;
  T* out;
  int64_t ff;
  __device__ int64_t units() const { return ff; }
  __device__ void columns(int64_t u, int64_t (&j)[2]) const {
    j[0] = u;
    j[1] = ff + u;
  }
  __device__ void store(int r, int64_t u, const int64_t (&)[2], const float (&v)[2]) const {
    const float g = round_to<T>(v[0]), up = round_to<T>(v[1]);
    out[int64_t(r) * ff + u] = from_float<T>(g * sigmoid(g) * up);
  }
};

template <class T>
struct RopeCacheEpilogue {
  static constexpr int kCols = 2;
  T* qkv;
  const T* bias;  // or null
  T *k_cache, *v_cache;
  const int32_t *slots, *positions;
  int64_t max_seq;
  int heads, kv_heads, head_dim;
  bool interleaved;
  rope_detail::InvFreq inv_freq;

  __device__ int64_t width() const { return int64_t(heads + 2 * kv_heads) * head_dim; }
  __device__ int64_t rotated_pairs() const { return int64_t(heads + kv_heads) * (head_dim / 2); }
  __device__ int64_t units() const { return width() / 2; }
  __device__ void columns(int64_t u, int64_t (&j)[2]) const {
    if (u < rotated_pairs()) {
      const int64_t half = head_dim / 2, base = (u / half) * head_dim, i = u % half;
      j[0] = base + (interleaved ? 2 * i : i);
      j[1] = base + (interleaved ? 2 * i + 1 : i + half);
    } else {
      j[0] = 2 * u;  // the v columns, after all rotated pairs (2 * rotated_pairs() columns)
      j[1] = 2 * u + 1;
    }
  }
  __device__ void store(int r, int64_t u, const int64_t (&j)[2], const float (&v)[2]) const {
    float a = round_to<T>(v[0]), b = round_to<T>(v[1]);
    if (bias) {
      a = round_to<T>(a + to_float(bias[j[0]]));
      b = round_to<T>(b + to_float(bias[j[1]]));
    }
    if (u < rotated_pairs()) {
      const float angle = float(positions[r]) * inv_freq.v[u % (head_dim / 2)];
      float s, c;
      sincosf(angle, &s, &c);
      const float ra = a * c - b * s, rb = b * c + a * s;
      a = ra;
      b = rb;
    }
    const T ta = from_float<T>(a), tb = from_float<T>(b);
    T* row = qkv + int64_t(r) * width();
    row[j[0]] = ta;
    row[j[1]] = tb;
    const int64_t q_width = int64_t(heads) * head_dim, kv_width = int64_t(kv_heads) * head_dim;
    if (j[0] < q_width) return;
    T* cache = j[0] < q_width + kv_width ? k_cache : v_cache;
    const int64_t first = j[0] < q_width + kv_width ? q_width : q_width + kv_width;
    T* dst = cache + (int64_t(slots[r]) * max_seq + positions[r]) * kv_width - first;
    dst[j[0]] = ta;
    dst[j[1]] = tb;
  }
};

template <class T>
void check_rows(const char* op, const T* y, const T* x, const T* norm_w, const T* w, int64_t rows,
                int64_t k) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "fused rows: float or bf16");
  MIL_CHECK(skinny_detail::rows_fit<T>(rows, k) && y != nullptr, op, ": ", rows, " rows of ", k,
            " do not fit the fused decode kernel (at most ", skinny_detail::kMaxRows,
            " rows, k a multiple of ", kVec<T>, ")");
  MIL_CHECK(aligned16(x) && aligned16(norm_w) && aligned16(w), op,
            ": x, the norm weights and the weights must start on 16-byte boundaries");
}

}  // namespace fused_detail

// Whether the fused products take `rows` rows of k elements with these operands.
template <class T>
bool fused_rows_fit(int64_t rows, int64_t k, const T* x, const T* norm_w, const T* w) {
  return skinny_detail::rows_fit<T>(rows, k) && aligned16(x) && aligned16(norm_w) && aligned16(w);
}

template <class T>
void norm_linear_rows(T* y, const T* x, const T* norm_w, float eps, const T* w, int64_t rows,
                      int64_t n, int64_t k, cudaStream_t stream) {
  fused_detail::check_rows("norm_linear_rows", y, x, norm_w, w, rows, k);
  MIL_CHECK(n >= 1, "norm_linear_rows: ", n, " outputs");
  const skinny_detail::Operands<T> op{x, w, k, norm_w, eps, true};
  skinny_detail::dispatch_rows(rows, op, skinny_detail::ScaleEpilogue<T>{y, n, 1.f, 0.f}, n, stream);
}

template <class T>
void norm_swiglu_rows(T* out, const T* x, const T* norm_w, float eps, const T* w_gate_up,
                      int64_t rows, int64_t ff, int64_t k, cudaStream_t stream) {
  fused_detail::check_rows("norm_swiglu_rows", out, x, norm_w, w_gate_up, rows, k);
  MIL_CHECK(ff >= 1, "norm_swiglu_rows: hidden size ", ff);
  const skinny_detail::Operands<T> op{x, w_gate_up, k, norm_w, eps, true};
  skinny_detail::dispatch_rows(rows, op, fused_detail::SwigluEpilogue<T>{out, ff}, ff, stream);
}

// Slots and positions (on the device) are not validated: the caller checks them on the host
// where they come from, as for kv_cache_append.
template <class T>
void norm_qkv_rope_cache_rows(T* qkv, T* k_cache, T* v_cache, const T* x, const T* norm_w,
                              float eps, const T* w_qkv, const T* b_qkv, const int32_t* slots,
                              const int32_t* positions, int64_t rows, int64_t k,
                              const QkvCacheShape& s, cudaStream_t stream) {
  fused_detail::check_rows("norm_qkv_rope_cache_rows", qkv, x, norm_w, w_qkv, rows, k);
  check_qkv_cache_shape(s);
  MIL_CHECK(k_cache != nullptr && v_cache != nullptr && slots != nullptr && positions != nullptr,
            "norm_qkv_rope_cache_rows: null cache, slots or positions");
  fused_detail::RopeCacheEpilogue<T> epi{qkv,
                                         b_qkv,
                                         k_cache,
                                         v_cache,
                                         slots,
                                         positions,
                                         s.max_seq,
                                         int(s.heads),
                                         int(s.kv_heads),
                                         int(s.head_dim),
                                         s.rope.layout == RopeLayout::interleaved,
                                         rope_detail::inv_freq_table(s.rope)};
  const skinny_detail::Operands<T> op{x, w_qkv, k, norm_w, eps, true};
  skinny_detail::dispatch_rows(rows, op, epi, s.width() / 2, stream);
}

}  // namespace mil::cuda
