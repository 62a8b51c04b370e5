#pragma once
// Device-side element conversions and 16-byte vector helpers shared by the kernels (float or bf16
// storage, fp32 math).
//
// from_float / bf16_bits round with __float2bfloat16_rn: nearest even, and a NaN becomes the
// canonical NaN. The host's bf16(float) rounds the same but keeps NaN payloads, so kernels that
// must match a CPU reference bitwise on NaNs (add.cuh) convert with T(float) instead.
#include "config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/core/cuda_vec.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "dtype.hpp"

namespace mil::cuda {

// Elements of T in one 16-byte vector.
template <class T>
constexpr int kVec = 16 / int(sizeof(T));

// N elements loaded and stored at once: one 16-byte access for N = kVec<T>, one element for N = 1.
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

MIL_DEVICE inline float to_float(float x) { return x; }
MIL_DEVICE inline float to_float(bf16 x) { return __uint_as_float(uint32_t(x.bits) << 16); }
// The bf16 nearest to x, in the low 16 bits.
MIL_DEVICE inline uint32_t bf16_bits(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
template <class T>
MIL_DEVICE inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return bf16::from_bits(uint16_t(bf16_bits(x)));
}
// *dst = v, or *dst += v (in fp32, rounded once) when accumulating into a gradient.
template <class T>
__device__ __forceinline__ void store_or_add(T* dst, float v, bool accumulate) {
  *dst = from_float<T>(accumulate ? to_float(*dst) + v : v);
}

// 16 bytes <-> kVec<T> floats (little endian: element 2i of bf16 is the low half of word i).
template <class T>
MIL_DEVICE inline void unpack(const uint4& r, float* f) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      f[i] = __uint_as_float(w[i]);
    } else {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}
template <class T>
MIL_DEVICE inline uint4 pack(const float* f) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, float>) w[i] = __float_as_uint(f[i]);
    else w[i] = bf16_bits(f[2 * i]) | (bf16_bits(f[2 * i + 1]) << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Four consecutive elements at p (aligned to 4 elements: 16 bytes of fp32, 8 of bf16) <-> floats.
template <class T>
MIL_DEVICE inline void load4(const T* p, float* f) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
  } else {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    f[0] = __uint_as_float(w.x << 16), f[1] = __uint_as_float(w.x & 0xffff0000u);
    f[2] = __uint_as_float(w.y << 16), f[3] = __uint_as_float(w.y & 0xffff0000u);
  }
}
template <class T>
MIL_DEVICE inline void store4(T* p, const float* f) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  } else {
    *reinterpret_cast<uint2*>(p) = make_uint2(bf16_bits(f[0]) | (bf16_bits(f[1]) << 16),
                                              bf16_bits(f[2]) | (bf16_bits(f[3]) << 16));
  }
}

// n elements at p, split for 16-byte access: `head` elements before the first 16-byte boundary,
// `nvec` whole vectors, and the elements from `tail` on. The head and tail elements (fewer than
// 2 vectors' worth) are the "scalars", handled one per thread.
struct VecSplit {
  int64_t n, head, nvec, tail;
  int shift;  // position of p within its 16 bytes, in elements
  MIL_DEVICE int64_t scalars() const { return head + (n - tail); }
  MIL_DEVICE int64_t scalar_element(int64_t k) const { return k < head ? k : tail + (k - head); }
};
template <class T>
MIL_DEVICE inline VecSplit split16(const T* p, int64_t n) {
  VecSplit s;
  s.n = n;
  s.shift = int(reinterpret_cast<uintptr_t>(p) % 16 / sizeof(T));
  const int64_t to_boundary = s.shift ? kVec<T> - s.shift : 0;
  s.head = to_boundary < n ? to_boundary : n;
  s.nvec = (n - s.head) / kVec<T>;
  s.tail = s.head + s.nvec * kVec<T>;
  return s;
}

}  // namespace mil::cuda
