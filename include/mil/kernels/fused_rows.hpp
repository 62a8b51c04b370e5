#pragma once
// The fused products of a decode step: a layer's RMSNorm, its input product and the operation
// after it as one call, for the few rows of a decode or verification step. The GPU runs each as
// one kernel (fused_rows.cuh, on matmul_skinny.cuh's kernel); these CPU forms are their
// references, written as the unfused operations they replace, in the order nn/blocks.hpp runs
// them, with the same roundings to T between them:
//
//   norm_linear_rows:         y = rmsnorm(x) W^T                             (Mamba in_proj, LM head)
//   norm_swiglu_rows:         out = swiglu(rmsnorm(x) [Wgate; Wup]^T)         (MLP gate and up)
//   norm_qkv_rope_cache_rows: qkv = rope(rmsnorm(x) Wqkv^T + b), k and v appended to the cache
//
// x: [rows, k]; weights row-major [outputs, k]; rmsnorm(x) is rounded to T as rmsnorm_forward
// stores it, each product is accumulated in fp32 and rounded to T once.
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "bias.hpp"
#include "kv_attention.hpp"
#include "matmul.hpp"
#include "rmsnorm.hpp"
#include "rope.hpp"
#include "swiglu.hpp"

namespace mil {

// The [q | k | v] columns of an attention layer's product and where k and v are cached.
struct QkvCacheShape {
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  RopeConfig rope{0};
  int64_t n_slots = 0, max_seq = 0;  // cache [n_slots, max_seq, kv_heads * head_dim]
  int64_t width() const { return (heads + 2 * kv_heads) * head_dim; }
  int64_t kv_width() const { return kv_heads * head_dim; }
};

inline void check_qkv_cache_shape(const QkvCacheShape& s) {
  MIL_CHECK(s.heads >= 1 && s.kv_heads >= 1 && s.heads % s.kv_heads == 0 && s.head_dim >= 2 &&
                s.head_dim % 2 == 0 && s.rope.head_dim == s.head_dim && s.n_slots >= 1 &&
                s.max_seq >= 1,
            "norm_qkv_rope_cache_rows: heads ", s.heads, ", kv_heads ", s.kv_heads, ", head_dim ",
            s.head_dim, " (RoPE ", s.rope.head_dim, "), cache ", s.n_slots, " x ", s.max_seq);
}

namespace cpu {
namespace fused_detail {

// h = T(rmsnorm(x)), then y = T(h W^T) with fp32 sums.
template <class T>
void norm_product(T* y, const T* x, const T* norm_w, float eps, const T* w, int64_t rows,
                  int64_t n, int64_t k) {
  MIL_CHECK(rows >= 0 && n >= 1 && k >= 1, "fused rows: rows ", rows, ", outputs ", n, ", k ", k);
  std::vector<T> h(size_t(rows * k));
  rmsnorm_forward(h.data(), nullptr, x, norm_w, rows, k, eps);
  std::vector<float> hf(h.size()), wf(size_t(n * k)), yf(size_t(rows * n));
  for (size_t i = 0; i < h.size(); ++i) hf[i] = float(to_acc(h[i]));
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = float(to_acc(w[i]));
  matmul(GemmShape{rows, n, k, false, true}, yf.data(), hf.data(), wf.data());
  for (size_t i = 0; i < yf.size(); ++i) y[i] = T(yf[i]);
}

}  // namespace fused_detail

template <class T>
void norm_linear_rows(T* y, const T* x, const T* norm_w, float eps, const T* w, int64_t rows,
                      int64_t n, int64_t k) {
  fused_detail::norm_product(y, x, norm_w, eps, w, rows, n, k);
}

// w_gate_up: [2 ff, k], the gate's rows first; out: [rows, ff].
template <class T>
void norm_swiglu_rows(T* out, const T* x, const T* norm_w, float eps, const T* w_gate_up,
                      int64_t rows, int64_t ff, int64_t k) {
  std::vector<T> gu(size_t(rows * 2 * ff));
  fused_detail::norm_product(gu.data(), x, norm_w, eps, w_gate_up, rows, 2 * ff, k);
  swiglu_forward(out, gu.data(), gu.data() + ff, rows, ff, 2 * ff);
}

// qkv: [rows, s.width()]; b_qkv: [s.width()] or null; row r is the token at positions[r] of
// sequence slots[r], whose k and v go to that cache row.
template <class T>
void norm_qkv_rope_cache_rows(T* qkv, T* k_cache, T* v_cache, const T* x, const T* norm_w,
                              float eps, const T* w_qkv, const T* b_qkv, const int32_t* slots,
                              const int32_t* positions, int64_t rows, int64_t k,
                              const QkvCacheShape& s) {
  check_qkv_cache_shape(s);
  const int64_t width = s.width(), hd = s.head_dim;
  fused_detail::norm_product(qkv, x, norm_w, eps, w_qkv, rows, width, k);
  if (b_qkv) bias_add(qkv, b_qkv, rows, width);
  rope_apply(qkv, qkv, positions, rows, s.heads + s.kv_heads, width, s.rope, false);
  kv_cache_append(k_cache, v_cache, qkv + s.heads * hd, qkv + (s.heads + s.kv_heads) * hd, width,
                  slots, positions, rows, s.kv_width(), s.n_slots, s.max_seq);
}

}  // namespace cpu
}  // namespace mil
