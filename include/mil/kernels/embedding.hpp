#pragma once
// Token embedding: out[i, :] = table[ids[i], :]; its backward scatters dout rows into the table's
// gradient (rows of repeated ids add up). CPU reference; the CUDA version is in embedding.cuh.
#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

// Throws naming the first id outside [0, vocab) and its position; nothing is written then.
inline void check_token_ids(const int32_t* ids, int64_t n, int64_t vocab) {
  MIL_CHECK(n >= 0 && vocab >= 0, "embedding: negative size n=", n, " vocab=", vocab);
  MIL_CHECK(n == 0 || ids != nullptr, "embedding: null ids");
  for (int64_t i = 0; i < n; ++i)
    MIL_CHECK(ids[i] >= 0 && ids[i] < vocab, "embedding: token id ", ids[i], " at position ", i,
              " is outside the vocabulary [0, ", vocab, ")");
}

// out (n, dim) = rows ids of table (vocab, dim).
template <class T>
void embedding_forward(T* out, const T* table, const int32_t* ids, int64_t n, int64_t dim,
                       int64_t vocab) {
  MIL_CHECK(dim >= 0, "embedding: negative dim ", dim);
  check_token_ids(ids, n, vocab);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < dim; ++c) out[i * dim + c] = table[int64_t(ids[i]) * dim + c];
}

// dtable (vocab, dim) (+)= sum over positions i with ids[i] == row of dout[i, :], in position
// order. accumulate = false overwrites all of dtable: rows no token hits become 0.
template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t dim,
                        int64_t vocab, bool accumulate) {
  MIL_CHECK(dim >= 0, "embedding: negative dim ", dim);
  check_token_ids(ids, n, vocab);
  if (!accumulate) {
    const int64_t size = checked_mul(vocab, dim);
    for (int64_t i = 0; i < size; ++i) dtable[i] = T(0);
  }
  for (int64_t i = 0; i < n; ++i) {
    T* row = dtable + int64_t(ids[i]) * dim;
    for (int64_t c = 0; c < dim; ++c)
      row[c] = from_acc<T>(to_acc(row[c]) + to_acc(dout[i * dim + c]));
  }
}

}  // namespace mil::cpu
