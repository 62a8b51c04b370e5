#pragma once
// Element-wise sum, and gradient accumulation into a buffer (the backward of every fan-out):
// CPU reference; the CUDA version is in add.cuh. Sums are taken in acc_t<T> and rounded once.
#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::cpu {

// out = a + b over n elements; out may alias a or b exactly.
template <class T>
void add(T* out, const T* a, const T* b, int64_t n) {
  MIL_CHECK(n >= 0, "add: negative size ", n);
  for (int64_t i = 0; i < n; ++i) out[i] = from_acc<T>(to_acc(a[i]) + to_acc(b[i]));
}

// dst = src (accumulate = false) or dst += src (accumulate = true); dst may alias src exactly.
template <class T>
void add_into(T* dst, const T* src, int64_t n, bool accumulate) {
  MIL_CHECK(n >= 0, "add_into: negative size ", n);
  if (accumulate)
    add(dst, dst, src, n);
  else if (dst != src)
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

}  // namespace mil::cpu
