#pragma once
// Causal self-attention with grouped-query heads (GQA): the shape shared by the CPU reference and
// the CUDA kernels (attention.cuh), and the plain-loop CPU reference in mil::cpu.
//
// Layouts (element offsets):
//   q[(b*seq + t)*q_stride  + h*head_dim + d]      query head h
//   k[(b*seq + t)*kv_stride + g*head_dim + d]      key/value head g = h / (heads / kv_heads)
//   out, dout: contiguous [batch, seq, heads, head_dim]
//   lse: [batch, heads, seq], log-sum-exp of the scaled scores of each query row
// The token strides let q, k and v point into one fused QKV buffer laid out per token as
// [q (heads*hd) | k (kv_heads*hd) | v (kv_heads*hd)]; dq, dk and dv use the same strides, so they
// can point into a fused dQKV buffer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <mil/core/dtype.hpp>
#include <mil/core/error.hpp>

namespace mil {

struct AttentionShape {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t q_stride = 0;   // elements between consecutive tokens of q (and dq)
  int64_t kv_stride = 0;  // elements between consecutive tokens of k and v (and dk, dv)
  float scale = 1.f;      // applied to q.k before the softmax, usually 1/sqrt(head_dim)
};

// Throws mil::Error naming the first inconsistent field.
inline void check(const AttentionShape& s) {
  MIL_CHECK(s.batch >= 0 && s.seq >= 0, "attention: batch (", s.batch, ") and seq (", s.seq,
            ") must be >= 0");
  MIL_CHECK(s.heads >= 1 && s.kv_heads >= 1 && s.head_dim >= 1, "attention: heads (", s.heads,
            "), kv_heads (", s.kv_heads, ") and head_dim (", s.head_dim, ") must be >= 1");
  MIL_CHECK(s.heads % s.kv_heads == 0, "attention: heads (", s.heads,
            ") must be a multiple of kv_heads (", s.kv_heads, ")");
  MIL_CHECK(s.q_stride >= checked_mul(s.heads, s.head_dim), "attention: q_stride ", s.q_stride,
            " is smaller than heads * head_dim = ", s.heads * s.head_dim);
  MIL_CHECK(s.kv_stride >= checked_mul(s.kv_heads, s.head_dim), "attention: kv_stride ",
            s.kv_stride, " is smaller than kv_heads * head_dim = ", s.kv_heads * s.head_dim);
  MIL_CHECK(std::isfinite(s.scale), "attention: scale must be finite, got ", s.scale);
  // Every element offset, and the [batch, seq, heads, head_dim] output, must fit in int64_t.
  int64_t tokens = checked_mul(s.batch, s.seq);
  (void)checked_mul(tokens, std::max(s.q_stride, s.kv_stride));
  (void)checked_mul(checked_mul(tokens, s.heads), s.head_dim);
}

// The shape of q, k, v pointing into one fused [tokens, (heads + 2*kv_heads) * head_dim] buffer:
// q = qkv, k = qkv + heads*head_dim, v = qkv + (heads + kv_heads)*head_dim; scale 1/sqrt(hd).
inline AttentionShape attention_shape_fused(int64_t batch, int64_t seq, int64_t heads,
                                            int64_t kv_heads, int64_t head_dim) {
  MIL_CHECK(head_dim >= 1 && heads >= 1 && kv_heads >= 1, "attention_shape_fused: heads (", heads,
            "), kv_heads (", kv_heads, ") and head_dim (", head_dim, ") must be >= 1");
  int64_t stride = checked_mul(checked_add(heads, checked_mul(2, kv_heads)), head_dim);
  AttentionShape s{batch, seq, heads, kv_heads, head_dim, stride, stride,
                   float(1.0 / std::sqrt(double(head_dim)))};
  check(s);
  return s;
}

namespace cpu {

namespace attention_detail {
template <class T>
acc_t<T> dot(const T* a, const T* b, int64_t n) {
  acc_t<T> s = 0;
  for (int64_t i = 0; i < n; ++i) s += to_acc(a[i]) * to_acc(b[i]);
  return s;
}
// dst = value (overwrite) or dst + value (accumulate).
template <class T>
void store(T& dst, acc_t<T> value, bool accumulate) {
  dst = from_acc<T>(accumulate ? to_acc(dst) + value : value);
}
}  // namespace attention_detail

// out = softmax(scale * q k^T, causal) v per head; lse (may be null) gets each row's
// log-sum-exp. One O(seq) score buffer per query row, no seq x seq matrix.
template <class T>
void attention_forward(T* out, acc_t<T>* lse, const T* q, const T* k, const T* v,
                       const AttentionShape& s) {
  using A = acc_t<T>;
  using attention_detail::dot;
  check(s);
  const int64_t H = s.heads, hd = s.head_dim, seq = s.seq, group = s.heads / s.kv_heads;
  const A scale = A(s.scale);
  std::vector<A> p(static_cast<size_t>(seq)), acc(static_cast<size_t>(hd));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kv_off = (h / group) * hd;
      for (int64_t i = 0; i < seq; ++i) {
        const T* qi = q + (b * seq + i) * s.q_stride + h * hd;
        A m = -std::numeric_limits<A>::infinity();
        for (int64_t j = 0; j <= i; ++j) {  // causal: keys 0..i
          p[j] = scale * dot(qi, k + (b * seq + j) * s.kv_stride + kv_off, hd);
          m = std::max(m, p[j]);
        }
        A l = 0;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] = std::exp(p[j] - m);
          l += p[j];
        }
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t j = 0; j <= i; ++j) {
          const T* vj = v + (b * seq + j) * s.kv_stride + kv_off;
          for (int64_t d = 0; d < hd; ++d) acc[d] += p[j] * to_acc(vj[d]);
        }
        T* oi = out + ((b * seq + i) * H + h) * hd;
        for (int64_t d = 0; d < hd; ++d) oi[d] = from_acc<T>(acc[d] / l);
        if (lse) lse[(b * H + h) * seq + i] = m + std::log(l);
      }
    }
}

// Gradients of attention_forward (FlashAttention-2 formulation): with P = exp(scale q k^T - lse)
// recomputed from lse, D_i = rowsum(dout_i * out_i), dP = dout v^T and dS = P * (dP - D):
// dv = P^T dout, dq = scale dS k, dk = scale dS^T q. accumulate=false overwrites the elements of
// dq, dk, dv (never the gaps between them in a strided buffer); true adds to them.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const acc_t<T>* lse, const AttentionShape& s,
                        bool accumulate) {
  using A = acc_t<T>;
  using attention_detail::dot;
  using attention_detail::store;
  check(s);
  const int64_t H = s.heads, hd = s.head_dim, seq = s.seq, group = s.heads / s.kv_heads;
  const A scale = A(s.scale);
  std::vector<A> p(static_cast<size_t>(seq)), dq_row(static_cast<size_t>(hd));
  // dK and dV of one kv head, summed over the query heads of its group.
  std::vector<A> dk_acc(static_cast<size_t>(seq * hd)), dv_acc(static_cast<size_t>(seq * hd));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t g = 0; g < s.kv_heads; ++g) {
      const int64_t kv_off = g * hd;
      std::fill(dk_acc.begin(), dk_acc.end(), A(0));
      std::fill(dv_acc.begin(), dv_acc.end(), A(0));
      for (int64_t h = g * group; h < (g + 1) * group; ++h)  // the query heads sharing head g
        for (int64_t i = 0; i < seq; ++i) {
          const T* qi = q + (b * seq + i) * s.q_stride + h * hd;
          const T* doi = dout + ((b * seq + i) * H + h) * hd;
          const A D = dot(doi, out + ((b * seq + i) * H + h) * hd, hd);
          const A lse_i = lse[(b * H + h) * seq + i];
          for (int64_t j = 0; j <= i; ++j)
            p[j] = std::exp(scale * dot(qi, k + (b * seq + j) * s.kv_stride + kv_off, hd) - lse_i);
          std::fill(dq_row.begin(), dq_row.end(), A(0));
          for (int64_t j = 0; j <= i; ++j) {
            const T* kj = k + (b * seq + j) * s.kv_stride + kv_off;
            const T* vj = v + (b * seq + j) * s.kv_stride + kv_off;
            const A ds = p[j] * (dot(doi, vj, hd) - D);
            for (int64_t d = 0; d < hd; ++d) {
              dv_acc[j * hd + d] += p[j] * to_acc(doi[d]);
              dk_acc[j * hd + d] += ds * to_acc(qi[d]);
              dq_row[d] += ds * to_acc(kj[d]);
            }
          }
          T* dqi = dq + (b * seq + i) * s.q_stride + h * hd;
          for (int64_t d = 0; d < hd; ++d) store(dqi[d], scale * dq_row[d], accumulate);
        }
      for (int64_t j = 0; j < seq; ++j) {
        T* dkj = dk + (b * seq + j) * s.kv_stride + kv_off;
        T* dvj = dv + (b * seq + j) * s.kv_stride + kv_off;
        for (int64_t d = 0; d < hd; ++d) {
          store(dkj[d], scale * dk_acc[j * hd + d], accumulate);
          store(dvj[d], dv_acc[j * hd + d], accumulate);
        }
      }
    }
}

}  // namespace cpu
}  // namespace mil
