#pragma once
// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011): element i of a stream
// (seed, offset) is a pure function of (seed, offset, i), so the CPU and the GPU produce the same
// numbers in any order and a run can resume at any point without replaying a generator.
#include <cmath>
#include <cstdint>

#include "config.hpp"
#include "device.hpp"
#include "tensor.hpp"

namespace mil::rng {

struct U32x4 {
  uint32_t v[4];
};

MIL_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// Philox-4x32 with 10 rounds over counter c and key k.
MIL_HOST_DEVICE inline U32x4 philox4x32(U32x4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(M0, c.v[0], hi0, lo0);
    mulhilo(M1, c.v[2], hi1, lo1);
    c = U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

// Four random words for block `block` of stream (seed, offset).
MIL_HOST_DEVICE inline U32x4 random_block(uint64_t seed, uint64_t offset, uint64_t block) {
  U32x4 c{{uint32_t(block), uint32_t(block >> 32), uint32_t(offset), uint32_t(offset >> 32)}};
  return philox4x32(c, uint32_t(seed), uint32_t(seed >> 32));
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float).
MIL_HOST_DEVICE inline float to_unit_float(uint32_t x) { return float(x >> 8) * (1.0f / 16777216.0f); }

// Element i of the uniform [lo, hi) stream (seed, offset).
MIL_HOST_DEVICE inline float uniform(uint64_t seed, uint64_t offset, uint64_t i, float lo, float hi) {
  U32x4 r = random_block(seed, offset, i / 4);
  float u = to_unit_float(r.v[i % 4]);
  // One explicit FMA (one rounding) on both sides: left to the compilers, lo + span * u is
  // contracted into an FMA or not depending on the target flags, and CPU and GPU would differ.
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(hi - lo, u, lo);
#else
  return std::fma(hi - lo, u, lo);
#endif
}

// Element i of the standard normal stream (seed, offset): Box-Muller on one Philox block per pair.
// Uniforms are bitwise equal on CPU and GPU; normals agree up to the rounding of log and cos.
MIL_HOST_DEVICE inline float normal(uint64_t seed, uint64_t offset, uint64_t i) {
  U32x4 r = random_block(seed, offset, i / 2);
  int j = int(i % 2) * 2;
  float u1 = (float(r.v[j] >> 8) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]: log is finite
  float u2 = to_unit_float(r.v[j + 1]);
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
#else
  return float(std::sqrt(-2.0 * std::log(double(u1))) * std::cos(6.283185307179586 * u2));
#endif
}

// Fills a CPU tensor with uniform [lo, hi) values of stream (seed, offset).
template <Element T>
void fill_uniform(Tensor<T, Cpu>& t, float lo, float hi, uint64_t seed, uint64_t offset = 0) {
  T* p = t.data();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = T(uniform(seed, offset, uint64_t(i), lo, hi));
}
template <Element T>
void fill_normal(Tensor<T, Cpu>& t, float mean, float std, uint64_t seed, uint64_t offset = 0) {
  T* p = t.data();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = T(mean + std * normal(seed, offset, uint64_t(i)));
}

}  // namespace mil::rng
