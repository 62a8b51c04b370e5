#pragma once
// Storage element types. bf16 and fp16 are 16-bit host/device types with round-to-nearest-even
// conversion; on the GPU they are layout-compatible with __nv_bfloat16 and __half.
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "config.hpp"

namespace mil {

MIL_HOST_DEVICE inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
MIL_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  MIL_HOST_DEVICE explicit bf16(float f) : bits(from_float(f)) {}
  MIL_HOST_DEVICE explicit operator float() const { return bits_float(uint32_t(bits) << 16); }
  MIL_HOST_DEVICE static bf16 from_bits(uint16_t b) { bf16 r; r.bits = b; return r; }
  MIL_HOST_DEVICE static uint16_t from_float(float f) {
    uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                          // nearest even
    return uint16_t(u >> 16);
  }
};

struct fp16 {
  uint16_t bits = 0;
  fp16() = default;
  MIL_HOST_DEVICE explicit fp16(float f) : bits(from_float(f)) {}
  MIL_HOST_DEVICE explicit operator float() const { return to_float(bits); }
  MIL_HOST_DEVICE static fp16 from_bits(uint16_t b) { fp16 r; r.bits = b; return r; }
  MIL_HOST_DEVICE static uint16_t from_float(float f) {
    uint32_t u = float_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);             // NaN
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);            // overflow -> inf
    if (a < 0x38800000u) {                                            // subnormal or zero
      float mag = bits_float(a) * 16777216.0f;                        // 2^24: scale to ulp units
      uint32_t m = uint32_t(mag);
      float rem = mag - float(m);
      if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
      return uint16_t(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u;         // rebias 127 -> 15, round
    return uint16_t(sign | (r >> 13));
  }
  MIL_HOST_DEVICE static float to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return bits_float(sign | float_bits(float(m) * 5.9604644775390625e-8f));  // 2^-24
    if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
    return bits_float(sign | ((e + 112u) << 23) | (m << 13));
  }
};

enum class DType : uint8_t { f32, f64, bf16, f16, i32 };

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<fp16> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };

template <class T>
concept Element = requires { dtype_of<T>::value; };

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
  }
  return "?";
}

// Accumulator type of an element type: double stays double (gradient checks), all else float.
template <class T> using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
template <class T> MIL_HOST_DEVICE inline acc_t<T> to_acc(T x) { return acc_t<T>(x); }
template <class T> MIL_HOST_DEVICE inline T from_acc(acc_t<T> a) { return T(a); }

}  // namespace mil
