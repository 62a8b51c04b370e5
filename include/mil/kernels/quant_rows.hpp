#pragma once
// Inference product on quantised weights kept in their file's ggml block format:
//   y[r*out + o] (+)= sum_i x[r*in + i] * dequant(W[o, i]),  W row o at w + o * ggml_row_bytes(type, in).
// The weights are dequantised inside the dot product (in registers on the SIMD paths), so decoding
// reads 34 bytes per 32 weights (Q8_0), 20 (Q4_1) or 64 (F16, BF16) instead of 128 for the float
// copy: decode is bound by the weight read, and that read is 2-6.4x smaller. Activations stay
// float.
//
// Contract (as cpu::linear_rows): row r's result is bitwise the same whatever the number of rows in
// the call and the thread count, so verifying k tokens in one call equals k single decode steps:
//   - one summation order per output element, fixed by `in` and the type only: 16 lanes; for
//     each 32 consecutive weights (i0 = 0, 32, 64, ...) lane l first forms the pair
//     x[i0+l] w[i0+l] + x[i0+16+l] w[i0+16+l] (the second product fused: one rounding where the
//     ISA has FMA) and adds it to its sum, in increasing i0; the lanes are then added in a fixed
//     tree (l + 8, then l + 4, l + 2, l + 1), and y is added last when accumulating;
//   - each weight is dequantised by one formula per type and path, whatever the tile;
//   - threads split the output rows only (never `in`); row tiles (up to 8 rows share each weight
//     block read) do not touch the order.
// The pair step keeps each accumulator's dependency chain at one addition per 32 weights, so one
// decode row is not bound by FMA latency. Three paths, chosen at run time by what the CPU has:
// AVX-512 (the 16 lanes in one register), AVX2+FMA+F16C, and a portable one (any CPU; it
// multiply-adds with one rounding where the build's ISA has FMA and two elsewhere, like
// linear_rows). All follow this order and keep the contract; AVX-512 and AVX2 give the same bits,
// the portable path may differ from them in the last bits where its weight decoder rounds d q + m
// differently or the build has no FMA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../core/error.hpp"
#include "../io/dequantize.hpp"
#include "cpu_simd.hpp"
#include "row_tiles.hpp"

namespace mil::cpu {

// Which code computes the product: automatic takes AVX-512 where the CPU has it, else AVX2 where
// it has AVX2, FMA and F16C, else the portable path; tests and benchmarks force one path to check
// or time it.
enum class QuantRowsPath { automatic, portable, avx2, avx512 };

// Whether this CPU (and build) can run QuantRowsPath::avx2 (AVX2, FMA and F16C).
inline bool quant_rows_avx2_supported() { return cpu_has_avx2(); }

// Whether this CPU (and build) can run QuantRowsPath::avx512 (AVX-512F besides the AVX2 path's).
inline bool quant_rows_avx512_supported() { return cpu_has_avx512(); }

// The path a request runs: automatic becomes the widest this CPU has.
inline QuantRowsPath quant_rows_path_for(QuantRowsPath requested) {
  if (requested != QuantRowsPath::automatic) return requested;
  return quant_rows_avx512_supported() ? QuantRowsPath::avx512
         : quant_rows_avx2_supported() ? QuantRowsPath::avx2
                                       : QuantRowsPath::portable;
}

// The weight types quant_linear_rows reads.
inline bool quant_rows_supports(io::GgmlType type) {
  using T = io::GgmlType;
  return type == T::Q8_0 || type == T::Q4_0 || type == T::Q4_1 || type == T::Q4_K ||
         type == T::Q6_K || type == T::F16 || type == T::BF16;
}

// Elements per unit the product decodes at once: a block of the quantised types, and 32 values
// of F16 and BF16 (whose ggml blocks are single values): `in` must be a multiple of it.
inline int64_t quant_rows_block(io::GgmlType type) {
  using T = io::GgmlType;
  return type == T::F16 || type == T::BF16 ? 32 : io::ggml_type_info_or_throw(type).block_size;
}

// Whether quant_linear_rows takes weights of this type with rows of `in` values.
inline bool quant_rows_supports(io::GgmlType type, int64_t in) {
  return quant_rows_supports(type) && in % quant_rows_block(type) == 0;
}

namespace quant_rows_detail {

using io::GgmlType;

inline constexpr int kLanes = 16;
inline constexpr int kMaxTileRows = 8;
// Weight rows per thread task: 64 rows of 576 Q8_0 weights (39 KiB) stay in L2 while the row
// tiles of a long call pass over them.
inline constexpr int64_t kColumnBlock = 64;

// Rows [0, R) of x against weight rows [j0, j1) into y[r * ldy + j]: one signature for both paths
// and every type.
using TileFn = void (*)(GgmlType type, const uint8_t* w, int64_t row_bytes, int64_t in,
                        const float* x, float* y, int64_t ldy, int64_t j0, int64_t j1,
                        bool accumulate);

// Lane l += lane l + width for width 8, 4, 2, 1: the contract's tree (the AVX2 path's horizontal
// sum is the same tree).
inline float sum_lanes(float* lanes) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

// ---- Portable path -------------------------------------------------------------------------

// acc + x w with one rounding where the ISA has FMA, two elsewhere; explicit, because the
// compiler's contraction of a * b + c may differ between the tile instantiations.
inline float multiply_add(float x, float w, float acc) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(x, w, acc);
#else
  const float product = x * w;
  return acc + product;
#endif
}

// One block through io's decoder (the one definition of the layouts). Not inlined, so every tile
// runs the same compiled decode and no caller's contraction choices change a weight's bits.
[[gnu::noinline]] inline void decode_block(GgmlType type, const uint8_t* block, float* dst) {
  if (type == GgmlType::F16 || type == GgmlType::BF16)
    io::dequantize_row(type, block, dst, 32);  // exact conversions
  else
    io::detail::dequantize_block(type, block, dst);
}

template <int R>
void portable_tile(GgmlType type, const uint8_t* w, int64_t row_bytes, int64_t in, const float* x,
                   float* y, int64_t ldy, int64_t j0, int64_t j1, bool accumulate) {
  const int64_t bs = quant_rows_block(type), blocks = in / bs, bb = blocks > 0 ? row_bytes / blocks : 0;
  float weights[256];  // one decoded block, in L1
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = w + j * row_bytes;
    float lanes[R][kLanes] = {};
    for (int64_t b = 0; b < blocks; ++b) {
      decode_block(type, row + b * bb, weights);
      for (int r = 0; r < R; ++r) {
        const float* xb = x + r * in + b * bs;
        for (int64_t i = 0; i < bs; i += 2 * kLanes)
          for (int l = 0; l < kLanes; ++l) {
            const float first = xb[i + l] * weights[i + l];
            lanes[r][l] += multiply_add(xb[i + kLanes + l], weights[i + kLanes + l], first);
          }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float dot = sum_lanes(lanes[r]);
      float& yr = y[r * ldy + j];
      yr = accumulate ? yr + dot : dot;
    }
  }
}

// ---- AVX2 + FMA path -------------------------------------------------------------------------
#if MIL_CPU_SIMD

// The f16 at p (any alignment) as a float, by the F16C instruction: exact, as io::detail::load_f16,
// without its branches (two of these per Q4_1 block were a third of the block's time).
MIL_TARGET_AVX2 inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 8 bytes at p (any alignment) as the low half of a vector.
MIL_TARGET_AVX2 inline __m128i load8(const uint8_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return _mm_cvtsi64_si128(v);
}

// Group g (32 consecutive weights, elements 32g .. 32g + 31 of the block) of the block at b as
// four vectors of 8 floats, decoded in registers. Each formula is the one of io::detail's decoder
// for the type, so the weights equal dequantize_row's (up to its compiler's contraction of
// q * d + m, which these compute with one rounding).
template <GgmlType T>
MIL_TARGET_AVX2 inline void decode_group(const uint8_t* b, int g, __m256* wv) {
  if constexpr (T == GgmlType::F16) {
    for (int v = 0; v < 4; ++v)
      wv[v] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * v)));
  } else if constexpr (T == GgmlType::BF16) {  // a bf16 is the high half of a float
    for (int v = 0; v < 4; ++v)
      wv[v] = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * v))), 16));
  } else if constexpr (T == GgmlType::Q8_0) {
    const __m256 d = _mm256_set1_ps(f16_at(b));
    for (int v = 0; v < 4; ++v)
      wv[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8(b + 2 + 8 * v))), d);
  } else if constexpr (T == GgmlType::Q4_0 || T == GgmlType::Q4_1) {
    // Element j is the low nibble of qs[j], element j + 16 the high nibble.
    constexpr bool has_min = T == GgmlType::Q4_1;
    const uint8_t* qs = b + (has_min ? 4 : 2);
    const __m256i bytes0 = _mm256_cvtepu8_epi32(load8(qs)), bytes1 = _mm256_cvtepu8_epi32(load8(qs + 8));
    const __m256i nibble = _mm256_set1_epi32(0xF);
    const __m256i q[4] = {_mm256_and_si256(bytes0, nibble), _mm256_and_si256(bytes1, nibble),
                          _mm256_srli_epi32(bytes0, 4), _mm256_srli_epi32(bytes1, 4)};
    const __m256 d = _mm256_set1_ps(f16_at(b));
    if constexpr (has_min) {
      const __m256 m = _mm256_set1_ps(f16_at(b + 2));
      for (int v = 0; v < 4; ++v) wv[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[v]), d, m);
    } else {
      const __m256i eight = _mm256_set1_epi32(8);  // Q4_0 codes are centred at 8
      for (int v = 0; v < 4; ++v)
        wv[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[v], eight)), d);
    }
  } else if constexpr (T == GgmlType::Q4_K) {
    // Group g is sub-block g: nibble g % 2 of qs[32 (g / 2) + l], scale d sc - dmin mn.
    float sc, mn;
    io::detail::k_scale_min(g, b + 4, sc, mn);
    const float scale = f16_at(b) * sc, min = f16_at(b + 2) * mn;
    const __m256 s = _mm256_set1_ps(scale), neg_min = _mm256_set1_ps(-min);
    const uint8_t* qs = b + 16 + 32 * (g / 2);
    const int shift = 4 * (g % 2);
    for (int v = 0; v < 4; ++v) {
      const __m256i q = _mm256_and_si256(_mm256_srli_epi32(_mm256_cvtepu8_epi32(load8(qs + 8 * v)), shift),
                                         _mm256_set1_epi32(0xF));
      wv[v] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(q), neg_min);
    }
  } else if constexpr (T == GgmlType::Q6_K) {
    // Half h = g / 4, quarter k = g % 4: element l takes nibble k / 2 of ql[64h + 32(k % 2) + l]
    // and bits 2k, 2k + 1 of qh[32h + l]; one int8 scale per 16 elements.
    const int h = g / 4, k = g % 4;
    const uint8_t* ql = b + 64 * h + 32 * (k % 2);
    const uint8_t* qh = b + 128 + 32 * h;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = f16_at(b + 208);
    const __m256i low_mask = _mm256_set1_epi32(0xF), high_mask = _mm256_set1_epi32(3),
                  centre = _mm256_set1_epi32(32);
    for (int v = 0; v < 4; ++v) {
      const __m256i low = _mm256_and_si256(
          _mm256_srli_epi32(_mm256_cvtepu8_epi32(load8(ql + 8 * v)), 4 * (k / 2)), low_mask);
      const __m256i high = _mm256_and_si256(
          _mm256_srli_epi32(_mm256_cvtepu8_epi32(load8(qh + 8 * v)), 2 * k), high_mask);
      const __m256i q = _mm256_sub_epi32(_mm256_or_si256(low, _mm256_slli_epi32(high, 4)), centre);
      const __m256 ds = _mm256_set1_ps(d * float(scales[8 * h + 2 * k + v / 2]));
      wv[v] = _mm256_mul_ps(ds, _mm256_cvtepi32_ps(q));
    }
  }
}

// Rows [0, R) against weight rows [j0, j1), one weight row at a time (one sequential stream for
// the hardware prefetcher: tiles of 2-4 weight rows measured 1.5-3.5x slower on the LM head).
// Each decoded group serves all R rows. Per row and group, the pairs of vectors (0, 2) and (1, 3)
// are first summed apart from the accumulators (the contract's pair step), so each accumulator
// takes one addition per group: its latency chain is 1 add, not 2 FMAs, per 32 weights.
template <GgmlType T, int R>
MIL_TARGET_AVX2 void avx2_tile(GgmlType, const uint8_t* w, int64_t row_bytes, int64_t in,
                               const float* x, float* y, int64_t ldy, int64_t j0, int64_t j1,
                               bool accumulate) {
  constexpr int64_t bs = T == GgmlType::Q4_K || T == GgmlType::Q6_K ? 256 : 32;
  constexpr int groups = int(bs / 32);
  const int64_t blocks = in / bs, bb = blocks > 0 ? row_bytes / blocks : 0;
  for (int64_t j = j0; j < j1; ++j) {
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const uint8_t* row = w + j * row_bytes;
    for (int64_t b = 0; b < blocks; ++b)
      for (int g = 0; g < groups; ++g) {
        __m256 wv[4];
        decode_group<T>(row + b * bb, g, wv);
        for (int r = 0; r < R; ++r) {
          const float* xr = x + r * in + b * bs + 32 * g;
          const __m256 pair0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 16), wv[2],
                                               _mm256_mul_ps(_mm256_loadu_ps(xr), wv[0]));
          const __m256 pair1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 24), wv[3],
                                               _mm256_mul_ps(_mm256_loadu_ps(xr + 8), wv[1]));
          acc[r][0] = _mm256_add_ps(acc[r][0], pair0);
          acc[r][1] = _mm256_add_ps(acc[r][1], pair1);
        }
      }
    for (int r = 0; r < R; ++r) {
      const float dot = avx2_sum_lanes(acc[r][0], acc[r][1]);
      float& yr = y[r * ldy + j];
      yr = accumulate ? yr + dot : dot;
    }
  }
}

// The AVX2 path's tiles, for tile_for.
struct Avx2Tiles {
  template <GgmlType T, int R>
  static constexpr TileFn tile = avx2_tile<T, R>;
};

// GCC 12's AVX-512 intrinsics start from a self-initialised "undefined" vector, which its
// -Wmaybe-uninitialized reports wherever they are inlined: a false alarm, silenced for this path.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// ---- AVX-512 path ----------------------------------------------------------------------------
// The contract's 16 lanes are one 512-bit vector: lane l of a group's pair step is
// x[l] w[l] + x[16 + l] w[16 + l], i.e. the group's elements 0-15 ("lo") against 16-31 ("hi").
// Every weight is decoded by the AVX2 path's formula and the lanes are summed in its tree, so the
// two paths give the same bits; this one takes half the instructions per group, and its 32
// registers hold eight rows' accumulators without spilling (the AVX2 prefill tile spills).

// 16 bytes at p (any alignment) widened to 16 int32, signed or not.
MIL_TARGET_AVX512 inline __m512i widen16_u8(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
MIL_TARGET_AVX512 inline __m512i widen16_i8(const uint8_t* p) {
  return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Q6_K: 16 codes of quarter k (nibble k / 2 of ql[l], bits 2k, 2k + 1 of qh[l]), centred, as floats.
MIL_TARGET_AVX512 inline __m512 q6_codes16(const uint8_t* ql, const uint8_t* qh, int k) {
  const __m512i low = _mm512_and_si512(_mm512_srlv_epi32(widen16_u8(ql), _mm512_set1_epi32(4 * (k / 2))),
                                       _mm512_set1_epi32(0xF));
  const __m512i high = _mm512_and_si512(_mm512_srlv_epi32(widen16_u8(qh), _mm512_set1_epi32(2 * k)),
                                        _mm512_set1_epi32(3));
  return _mm512_cvtepi32_ps(
      _mm512_sub_epi32(_mm512_or_si512(low, _mm512_slli_epi32(high, 4)), _mm512_set1_epi32(32)));
}

// Group g of the block at b (32 weights) as elements 0-15 (lo) and 16-31 (hi).
template <GgmlType T>
MIL_TARGET_AVX512 inline void decode_group16(const uint8_t* b, int g, __m512& lo, __m512& hi) {
  if constexpr (T == GgmlType::F16) {
    lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32)));
  } else if constexpr (T == GgmlType::BF16) {
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b))), 16));
    hi = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32))), 16));
  } else if constexpr (T == GgmlType::Q8_0) {
    const __m512 d = _mm512_set1_ps(f16_at(b));
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(widen16_i8(b + 2)), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(widen16_i8(b + 18)), d);
  } else if constexpr (T == GgmlType::Q4_0 || T == GgmlType::Q4_1) {
    constexpr bool has_min = T == GgmlType::Q4_1;
    const __m512i bytes = widen16_u8(b + (has_min ? 4 : 2));
    __m512i q_lo = _mm512_and_si512(bytes, _mm512_set1_epi32(0xF)), q_hi = _mm512_srli_epi32(bytes, 4);
    const __m512 d = _mm512_set1_ps(f16_at(b));
    if constexpr (has_min) {
      const __m512 m = _mm512_set1_ps(f16_at(b + 2));
      lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_lo), d, m);
      hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_hi), d, m);
    } else {
      const __m512i eight = _mm512_set1_epi32(8);
      lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q_lo, eight)), d);
      hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q_hi, eight)), d);
    }
  } else if constexpr (T == GgmlType::Q4_K) {
    float sc, mn;
    io::detail::k_scale_min(g, b + 4, sc, mn);
    const float scale = f16_at(b) * sc, min = f16_at(b + 2) * mn;
    const __m512 s = _mm512_set1_ps(scale), neg_min = _mm512_set1_ps(-min);
    const uint8_t* qs = b + 16 + 32 * (g / 2);
    const __m512i shift = _mm512_set1_epi32(4 * (g % 2)), nibble = _mm512_set1_epi32(0xF);
    const __m512i q_lo = _mm512_and_si512(_mm512_srlv_epi32(widen16_u8(qs), shift), nibble);
    const __m512i q_hi = _mm512_and_si512(_mm512_srlv_epi32(widen16_u8(qs + 16), shift), nibble);
    lo = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(q_lo), neg_min);
    hi = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(q_hi), neg_min);
  } else if constexpr (T == GgmlType::Q6_K) {
    const int h = g / 4, k = g % 4;
    const uint8_t* ql = b + 64 * h + 32 * (k % 2);
    const uint8_t* qh = b + 128 + 32 * h;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = f16_at(b + 208);
    lo = _mm512_mul_ps(_mm512_set1_ps(d * float(scales[8 * h + 2 * k])), q6_codes16(ql, qh, k));
    hi = _mm512_mul_ps(_mm512_set1_ps(d * float(scales[8 * h + 2 * k + 1])),
                       q6_codes16(ql + 16, qh + 16, k));
  }
}

// As avx2_tile, with one 16-lane accumulator per row.
template <GgmlType T, int R>
MIL_TARGET_AVX512 void avx512_tile(GgmlType, const uint8_t* w, int64_t row_bytes, int64_t in,
                                   const float* x, float* y, int64_t ldy, int64_t j0, int64_t j1,
                                   bool accumulate) {
  constexpr int64_t bs = T == GgmlType::Q4_K || T == GgmlType::Q6_K ? 256 : 32;
  constexpr int groups = int(bs / 32);
  const int64_t blocks = in / bs, bb = blocks > 0 ? row_bytes / blocks : 0;
  for (int64_t j = j0; j < j1; ++j) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const uint8_t* row = w + j * row_bytes;
    for (int64_t b = 0; b < blocks; ++b)
      for (int g = 0; g < groups; ++g) {
        __m512 lo, hi;
        decode_group16<T>(row + b * bb, g, lo, hi);
        for (int r = 0; r < R; ++r) {
          const float* xr = x + r * in + b * bs + 32 * g;
          acc[r] = _mm512_add_ps(acc[r], _mm512_fmadd_ps(_mm512_loadu_ps(xr + 16), hi,
                                                         _mm512_mul_ps(_mm512_loadu_ps(xr), lo)));
        }
      }
    for (int r = 0; r < R; ++r) {
      const __m256 lanes_lo = _mm512_castps512_ps256(acc[r]);
      const __m256 lanes_hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r]), 1));
      const float dot = avx2_sum_lanes(lanes_lo, lanes_hi);
      float& yr = y[r * ldy + j];
      yr = accumulate ? yr + dot : dot;
    }
  }
}

// The AVX-512 path's tiles, for tile_for.
struct Avx512Tiles {
  template <GgmlType T, int R>
  static constexpr TileFn tile = avx512_tile<T, R>;
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // MIL_CPU_SIMD

// The portable path's tiles, for tile_for: one per row count, decoding any type at run time.
struct PortableTiles {
  template <GgmlType, int R>
  static constexpr TileFn tile = portable_tile<R>;
};

// Path's tile (Path: Avx2Tiles, Avx512Tiles or PortableTiles) for weights in T and `rows` rows
// (1 to kMaxTileRows).
// Path may also be another family of tiles with one signature (quant_rows_q8.hpp).
template <class Path, GgmlType T>
inline auto tile_for_rows(int rows) {
  static_assert(kMaxTileRows == 8);
  switch (rows) {
    case 1: return Path::template tile<T, 1>;
    case 2: return Path::template tile<T, 2>;
    case 3: return Path::template tile<T, 3>;
    case 4: return Path::template tile<T, 4>;
    case 5: return Path::template tile<T, 5>;
    case 6: return Path::template tile<T, 6>;
    case 7: return Path::template tile<T, 7>;
    default: return Path::template tile<T, 8>;
  }
}

// Path's tile for weights in `type` (one quant_rows_supports takes) and `rows` rows.
template <class Path>
inline auto tile_for(GgmlType type, int rows) {
  switch (type) {
    case GgmlType::F16: return tile_for_rows<Path, GgmlType::F16>(rows);
    case GgmlType::BF16: return tile_for_rows<Path, GgmlType::BF16>(rows);
    case GgmlType::Q8_0: return tile_for_rows<Path, GgmlType::Q8_0>(rows);
    case GgmlType::Q4_0: return tile_for_rows<Path, GgmlType::Q4_0>(rows);
    case GgmlType::Q4_1: return tile_for_rows<Path, GgmlType::Q4_1>(rows);
    case GgmlType::Q4_K: return tile_for_rows<Path, GgmlType::Q4_K>(rows);
    default: return tile_for_rows<Path, GgmlType::Q6_K>(rows);
  }
}

}  // namespace quant_rows_detail

// y[r*ldy + o] = (y[r*ldy + o] +) sum_i x[r*in + i] dequant(W[o, i]) for r < rows, o < out; W's
// row o starts at w + o * ggml_row_bytes(type, in), in the type's block layout (any alignment).
// Types: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K; `in` a whole number of blocks (32, or 256 for the K types).
// y_stride (ldy) 0 means out; a larger one writes columns of a wider output (a matrix stored as
// parts of different types, nn/block_weights.hpp).
inline void quant_linear_rows(io::GgmlType type, const uint8_t* w, int64_t out, int64_t in,
                              const float* x, int64_t rows, float* y, bool accumulate = false,
                              QuantRowsPath path = QuantRowsPath::automatic,
                              int64_t y_stride = 0) {
  namespace d = quant_rows_detail;
  MIL_CHECK(rows >= 0 && out >= 0 && in >= 0, "quant_linear_rows: negative size rows=", rows,
            " out=", out, " in=", in);
  MIL_CHECK(y_stride == 0 || y_stride >= out, "quant_linear_rows: y_stride ", y_stride,
            " is below out = ", out);
  const int64_t ldy = y_stride ? y_stride : out;
  const auto info = io::ggml_type_info_or_throw(type);
  MIL_CHECK(quant_rows_supports(type), "quant_linear_rows: ggml type ", info.name,
            " is not supported (supported: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, F16, BF16): dequantise "
            "the weights to float and use linear_rows");
  MIL_CHECK(in % quant_rows_block(type) == 0, "quant_linear_rows: in = ", in,
            " is not a whole number of ", info.name, " blocks of ", quant_rows_block(type));
  const int64_t row_bytes = io::ggml_row_bytes(type, in);
  (void)checked_mul(rows, in), (void)checked_mul(out, row_bytes), (void)checked_mul(rows, ldy);
  MIL_CHECK(path != QuantRowsPath::avx2 || quant_rows_avx2_supported(),
            "quant_linear_rows: the AVX2 path was asked for but this CPU or build lacks AVX2/FMA/F16C");
  MIL_CHECK(path != QuantRowsPath::avx512 || quant_rows_avx512_supported(),
            "quant_linear_rows: the AVX-512 path was asked for but this CPU or build lacks AVX-512F");
  if (rows == 0 || out == 0) return;
  MIL_CHECK(y && (in == 0 || (x && w)), "quant_linear_rows: null operand pointer");

  path = quant_rows_path_for(path);
  d::TileFn tiles[d::kMaxTileRows + 1] = {};
  for (int n = 1; n <= d::kMaxTileRows; ++n) {
#if MIL_CPU_SIMD
    tiles[n] = path == QuantRowsPath::avx512 ? d::tile_for<d::Avx512Tiles>(type, n)
               : path == QuantRowsPath::avx2 ? d::tile_for<d::Avx2Tiles>(type, n)
                                             : d::tile_for<d::PortableTiles>(type, n);
#else
    tiles[n] = d::tile_for<d::PortableTiles>(type, n);
#endif
  }
  for_each_row_tile(rows, out, in, d::kColumnBlock, d::kMaxTileRows,
                    [&](int n, int64_t r, int64_t j0, int64_t j1) {
                      tiles[n](type, w, row_bytes, in, x + r * in, y + r * ldy, ldy, j0, j1,
                               accumulate);
                    });
}

}  // namespace mil::cpu
