#pragma once
// Scalar activations shared by the CPU references and the kernels: one definition of softplus,
// sigmoid and SiLU for both, templated on the accumulation type (float, or double in gradient
// checks). Under nvcc they are also device functions; std::exp of a float is expf there.
// The fast_ variants are device-only and use the __expf intrinsic (a few ulp, on the
// special-function unit) where a kernel trades that accuracy for speed.
#include <cmath>

#include "config.hpp"

namespace mil {

inline constexpr float kLog2e = 1.4426950408889634f;  // log2(e): e^x = 2^(x kLog2e)
inline constexpr float kLn2 = 0.6931471805599453f;    // ln(2)

// log(1 + e^v) without overflow; above PyTorch's threshold of 20 it is v to float precision.
template <class A>
MIL_HOST_DEVICE inline A softplus(A v) {
  return v > A(20) ? v : std::log1p(std::exp(v));
}
// exp overflow gives 1 / inf = 0: no NaN for large negative v.
template <class A>
MIL_HOST_DEVICE inline A sigmoid(A v) {
  return A(1) / (A(1) + std::exp(-v));
}
// v sigmoid(v), as one division.
template <class A>
MIL_HOST_DEVICE inline A silu(A v) {
  return v / (A(1) + std::exp(-v));
}

#if defined(__CUDACC__)
__device__ __forceinline__ float fast_softplus(float v) {
  return v > 20.f ? v : log1pf(__expf(v));
}
// __expf overflow gives 1 / inf = 0: no NaN.
__device__ __forceinline__ float fast_sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }
#endif

}  // namespace mil
