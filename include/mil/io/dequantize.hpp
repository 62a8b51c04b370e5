#pragma once
// ggml tensor types (the numbering of GGUF files), their block sizes, and CPU dequantisation to
// float of the types mil reads: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
// Block layouts follow ggml (ggml-common.h); all multi-byte fields are little-endian and read with
// memcpy, so source pointers need no alignment. The block decoders are host-device functions: the
// GPU dequantisation (dequantize.cuh) runs the same code.
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace mil::io {

static_assert(std::endian::native == std::endian::little, "GGUF reading assumes a little-endian host");

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

// Elements per block and bytes per block; a row of n elements takes n / block_size blocks.
struct GgmlTypeInfo {
  std::string_view name;
  int64_t block_size;
  int64_t block_bytes;
  bool can_dequantize;
};

// Every type GGUF files use, so that a file with a type mil cannot dequantise still parses and
// only dequantising that tensor fails. nullopt for numbers that are no ggml type.
inline std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type) {
  constexpr int64_t K = 256;
  switch (GgmlType(type)) {
    case GgmlType::F32: return GgmlTypeInfo{"F32", 1, 4, true};
    case GgmlType::F16: return GgmlTypeInfo{"F16", 1, 2, true};
    case GgmlType::Q4_0: return GgmlTypeInfo{"Q4_0", 32, 2 + 16, true};
    case GgmlType::Q4_1: return GgmlTypeInfo{"Q4_1", 32, 4 + 16, true};
    case GgmlType::Q5_0: return GgmlTypeInfo{"Q5_0", 32, 2 + 4 + 16, true};
    case GgmlType::Q5_1: return GgmlTypeInfo{"Q5_1", 32, 4 + 4 + 16, true};
    case GgmlType::Q8_0: return GgmlTypeInfo{"Q8_0", 32, 2 + 32, true};
    case GgmlType::Q8_1: return GgmlTypeInfo{"Q8_1", 32, 8 + 32, false};
    case GgmlType::Q2_K: return GgmlTypeInfo{"Q2_K", K, 4 + K / 16 + K / 4, false};
    case GgmlType::Q3_K: return GgmlTypeInfo{"Q3_K", K, 2 + K / 4 + K / 8 + 12, false};
    case GgmlType::Q4_K: return GgmlTypeInfo{"Q4_K", K, 4 + 12 + K / 2, true};
    case GgmlType::Q5_K: return GgmlTypeInfo{"Q5_K", K, 4 + 12 + K / 8 + K / 2, true};
    case GgmlType::Q6_K: return GgmlTypeInfo{"Q6_K", K, K / 2 + K / 4 + K / 16 + 2, true};
    case GgmlType::Q8_K: return GgmlTypeInfo{"Q8_K", K, 4 + K + K / 8, false};
    case GgmlType::IQ2_XXS: return GgmlTypeInfo{"IQ2_XXS", K, 2 + K / 4, false};
    case GgmlType::IQ2_XS: return GgmlTypeInfo{"IQ2_XS", K, 2 + K / 4 + K / 32, false};
    case GgmlType::IQ3_XXS: return GgmlTypeInfo{"IQ3_XXS", K, 2 + K / 4 + K / 8, false};
    case GgmlType::IQ1_S: return GgmlTypeInfo{"IQ1_S", K, 2 + K / 8 + K / 16, false};
    case GgmlType::IQ4_NL: return GgmlTypeInfo{"IQ4_NL", 32, 2 + 16, false};
    case GgmlType::IQ3_S: return GgmlTypeInfo{"IQ3_S", K, 2 + K / 4 + K / 8 + K / 32 + 4, false};
    case GgmlType::IQ2_S: return GgmlTypeInfo{"IQ2_S", K, 2 + K / 4 + K / 16, false};
    case GgmlType::IQ4_XS: return GgmlTypeInfo{"IQ4_XS", K, 4 + K / 2 + K / 64, false};
    case GgmlType::I8: return GgmlTypeInfo{"I8", 1, 1, false};
    case GgmlType::I16: return GgmlTypeInfo{"I16", 1, 2, false};
    case GgmlType::I32: return GgmlTypeInfo{"I32", 1, 4, false};
    case GgmlType::I64: return GgmlTypeInfo{"I64", 1, 8, false};
    case GgmlType::F64: return GgmlTypeInfo{"F64", 1, 8, false};
    case GgmlType::IQ1_M: return GgmlTypeInfo{"IQ1_M", K, K / 8 + K / 16 + K / 32, false};
    case GgmlType::BF16: return GgmlTypeInfo{"BF16", 1, 2, true};
    case GgmlType::TQ1_0: return GgmlTypeInfo{"TQ1_0", K, 2 + 4 * 13, false};
    case GgmlType::TQ2_0: return GgmlTypeInfo{"TQ2_0", K, 2 + 64, false};
    case GgmlType::MXFP4: return GgmlTypeInfo{"MXFP4", 32, 1 + 16, false};
  }
  return std::nullopt;
}

inline GgmlTypeInfo ggml_type_info_or_throw(GgmlType type) {
  auto info = ggml_type_info(uint32_t(type));
  MIL_CHECK(info, "unknown ggml tensor type ", uint32_t(type));
  return *info;
}

// Bytes of a row of n elements (n a multiple of the block size), overflow-checked.
inline int64_t ggml_row_bytes(GgmlType type, int64_t n) {
  auto info = ggml_type_info_or_throw(type);
  MIL_CHECK(n >= 0 && n % info.block_size == 0, "a row of ", n, " elements is not a whole number of ",
            info.name, " blocks of ", info.block_size);
  return checked_mul(n / info.block_size, info.block_bytes);
}

namespace detail {

MIL_HOST_DEVICE inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16::to_float(h);
}
MIL_HOST_DEVICE inline float load_bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return bits_float(uint32_t(h) << 16);
}

// Q4_0 / Q4_1: element j of a block is the low nibble of qs[j], element j + 16 the high nibble.
MIL_HOST_DEVICE inline void dequant_q4(const uint8_t* b, float* y, bool has_min) {
  float d = load_f16(b), m = has_min ? load_f16(b + 2) : 0.f;
  const uint8_t* qs = b + (has_min ? 4 : 2);
  float offset = has_min ? 0.f : -8.f;  // Q4_0 codes are centred at 8
  for (int j = 0; j < 16; ++j) {
    y[j] = (float(qs[j] & 0xF) + offset) * d + m;
    y[j + 16] = (float(qs[j] >> 4) + offset) * d + m;
  }
}

// Q5_0 / Q5_1: as Q4 plus a fifth bit per element in a 32-bit mask qh (bit j for element j).
MIL_HOST_DEVICE inline void dequant_q5(const uint8_t* b, float* y, bool has_min) {
  float d = load_f16(b), m = has_min ? load_f16(b + 2) : 0.f;
  const uint8_t* p = b + (has_min ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  float offset = has_min ? 0.f : -16.f;
  for (int j = 0; j < 16; ++j) {
    uint32_t lo = (qs[j] & 0xF) | (((qh >> j) & 1u) << 4);
    uint32_t hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
    y[j] = (float(lo) + offset) * d + m;
    y[j + 16] = (float(hi) + offset) * d + m;
  }
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block, packed in 12 bytes:
// sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 in the
// nibbles of bytes 8-11 with their top 2 bits in the high bits of bytes 0-7.
MIL_HOST_DEVICE inline void k_scale_min(int j, const uint8_t* s, float& scale, float& min) {
  if (j < 4) {
    scale = float(s[j] & 63);
    min = float(s[j + 4] & 63);
  } else {
    scale = float((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    min = float((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Q4_K (with_high_bit false) and Q5_K: d, dmin, 12 bytes of scales, [Q5_K: 32 bytes qh], 128
// bytes qs. Each 64 elements share 32 qs bytes: low nibbles are sub-block 2c, high nibbles 2c+1;
// Q5_K's fifth bit of element l of sub-block s is bit s of qh[l].
MIL_HOST_DEVICE inline void dequant_q45_k(const uint8_t* b, float* y, bool with_high_bit) {
  float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 16 + (with_high_bit ? 32 : 0);
  for (int chunk = 0; chunk < 4; ++chunk) {
    for (int half = 0; half < 2; ++half) {
      int sub = 2 * chunk + half;
      float sc, mn;
      k_scale_min(sub, scales, sc, mn);
      float scale = d * sc, min = dmin * mn;
      for (int l = 0; l < 32; ++l) {
        uint32_t q = half == 0 ? (qs[32 * chunk + l] & 0xF) : (qs[32 * chunk + l] >> 4);
        if (with_high_bit) q |= ((qh[l] >> sub) & 1u) << 4;
        y[32 * sub + l] = scale * float(q) - min;
      }
    }
  }
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16] (one per 16 elements), d.
// Each half of 128 elements uses 64 ql bytes and 32 qh bytes: element 32*k + l (k = 0..3) takes
// nibble k/2 of ql[l + 32*(k%2)] and bits 2k..2k+1 of qh[l].
MIL_HOST_DEVICE inline void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = load_f16(b + 208);
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        uint8_t low = ql[64 * h + l + 32 * (k % 2)];
        int q = (k < 2 ? (low & 0xF) : (low >> 4)) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
        int e = 32 * k + l;  // element within this half
        y[128 * h + e] = d * float(sc[8 * h + e / 16]) * float(q - 32);
      }
    }
  }
}

// One block of a block-quantised type (Q8_0 .. Q6_K) into its block_size floats; other types
// write nothing (dequantize_row checks the type first).
MIL_HOST_DEVICE inline void dequantize_block(GgmlType type, const uint8_t* b, float* y) {
  switch (type) {
    case GgmlType::Q8_0: {
      const float d = load_f16(b);
      for (int j = 0; j < 32; ++j) y[j] = d * float(int8_t(b[2 + j]));
      break;
    }
    case GgmlType::Q4_0: dequant_q4(b, y, false); break;
    case GgmlType::Q4_1: dequant_q4(b, y, true); break;
    case GgmlType::Q5_0: dequant_q5(b, y, false); break;
    case GgmlType::Q5_1: dequant_q5(b, y, true); break;
    case GgmlType::Q4_K: dequant_q45_k(b, y, false); break;
    case GgmlType::Q5_K: dequant_q45_k(b, y, true); break;
    case GgmlType::Q6_K: dequant_q6_k(b, y); break;
    default: break;
  }
}

}  // namespace detail

// dst[0..n) = the n elements stored at src in `type`; n must be a whole number of blocks.
// The type's layout, after checking that mil dequantises it and that n elements are whole blocks.
inline GgmlTypeInfo check_dequantize(GgmlType type, int64_t n) {
  auto info = ggml_type_info_or_throw(type);
  MIL_CHECK(info.can_dequantize, "dequantize: ggml type ", info.name,
            " is not supported by mil (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
            "Q4_K, Q5_K, Q6_K): convert the model with another quantisation");
  MIL_CHECK(n >= 0 && n % info.block_size == 0, "dequantize: ", n,
            " elements are not a whole number of ", info.name, " blocks of ", info.block_size);
  return info;
}

inline void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const auto info = check_dequantize(type, n);
  const int64_t blocks = n / info.block_size, bs = info.block_size, bb = info.block_bytes;
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = detail::load_f16(src + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = detail::load_bf16(src + 2 * i);
      return;
    default: break;
  }
  for (int64_t blk = 0; blk < blocks; ++blk)
    detail::dequantize_block(type, src + blk * bb, dst + blk * bs);
}

}  // namespace mil::io
