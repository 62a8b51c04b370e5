#pragma once
// The block products of quant_rows.hpp with the activations quantised to 8 bits: an option, for
// speed (as llama.cpp does by default). Each 32 consecutive values of an activation row become
// int8 codes q (|q| <= 127) and one float scale dx = max|x| / 127, so x ~ dx q with an error of at
// most dx / 2 per value; the products then multiply integers: the weight's codes (Q8_0's int8,
// Q4_0's nibble - 8, Q4_1's and Q4_K's nibble, Q6_K's 6 bits - 32) against q, exactly, and
// apply the scales once per 32 products.
//
// Error: against the float-activation product, |y_q8 - y| <= sum_i |w_i| dx(i) / 2 plus float
// rounding, per output (the test checks this bound element by element).
//
// Contract (row-invariant, as quant_linear_rows): for each 32 weights (a group: a block of Q8_0,
// Q4_0, Q4_1, a sub-block of Q4_K and Q6_K), 8 integer lanes, lane l the exact sum of the four
// products of elements 4l .. 4l + 3; the group's lane l then adds fma(float(lane), sw(l) dx,
// acc_l) into one of two accumulators, the even groups' or the odd groups' (two dependency chains,
// and the AVX-512 path's two groups per register), sw the weight scale of its elements (Q6_K has
// one per 16 elements: lanes 0-3 and 4-7), sw dx rounded once. A weight minimum (Q4_1's m, Q4_K's
// -dmin mn) adds fma(min, dx sum(q), m_k) into minimum lane k = group % 16, in increasing groups.
// At the end lane l = even_l + odd_l, the 8 lanes are summed in the tree l + 4, l + 2, l + 1, the
// 16 minimum lanes (types with minima) in the tree k + 8, k + 4, k + 2, k + 1 and added, then y
// when accumulating. Integers are exact on every path, and every path makes the same float
// operations in the same order (fused multiply-adds, one rounding), so the portable, AVX2 and
// AVX-512 VNNI paths give the same bits.
// F16 and BF16 weights have no codes: their parts keep float activations (BlockMatrix::apply).
#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_rows.hpp"

namespace mil::cpu {

// Rows of activations quantised to 8 bits, 32 values per scale. Reused across calls: quantize()
// keeps the capacity.
struct Q8Rows {
  int64_t rows = 0, in = 0;
  std::vector<int8_t> q;    // [rows, in]
  std::vector<float> d;     // [rows, in / 32]: the group's scale
  std::vector<float> sum;   // [rows, in / 32]: d * (sum of the group's codes), for weight minima
  std::vector<float> d8;    // [rows, in / 32, 8]: d in each of the group's 8 lanes (vector loads)

  // x [rows, in] (in a multiple of 32). A group with a non-finite value gets a NaN scale, so the
  // products it enters are NaN, as with float activations.
  void quantize(const float* x, int64_t n_rows, int64_t n_in) {
    MIL_CHECK(n_rows >= 0 && n_in >= 0 && n_in % 32 == 0, "Q8Rows: rows of ", n_in,
              " values: 8-bit activations take whole groups of 32");
    rows = n_rows, in = n_in;
    const int64_t groups = checked_mul(rows, in / 32);
    q.resize(size_t(checked_mul(rows, in)));
    d.resize(size_t(groups));
    sum.resize(size_t(groups));
    d8.resize(size_t(checked_mul(groups, 8)));
    [[maybe_unused]] const bool parallel = rows * in > (int64_t(1) << 16);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
    for (int64_t g = 0; g < groups; ++g) {
      quantize_group(x + 32 * g, q.data() + 32 * g, d[size_t(g)], sum[size_t(g)]);
      std::fill_n(d8.begin() + 8 * g, 8, d[size_t(g)]);
    }
  }

  static void quantize_group(const float* x, int8_t* codes, float& scale, float& code_sum) {
    float amax = 0;
    bool finite = true;
    for (int i = 0; i < 32; ++i) {
      finite = finite && std::isfinite(x[i]);
      amax = std::max(amax, std::fabs(x[i]));
    }
    if (!finite) {
      std::memset(codes, 0, 32);
      scale = code_sum = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    scale = amax / 127.f;
    if (scale == 0) {  // all zero, or so small that the scale underflows: codes 0
      std::memset(codes, 0, 32);
      code_sum = 0;
      return;
    }
    // Below ~3.7e-37, 127 / amax overflows: divide by the scale instead (never NaN: x is finite,
    // the scale positive).
    const float inverse = 127.f / amax;
    const bool divide = !std::isfinite(inverse);
    int total = 0;
    for (int i = 0; i < 32; ++i) {
      const float v = std::clamp(std::nearbyint(divide ? x[i] / scale : x[i] * inverse), -127.f, 127.f);
      codes[i] = int8_t(v);
      total += codes[i];
    }
    code_sum = scale * float(total);
  }
};

// The weight types with integer codes (F16 and BF16 have none).
namespace quant_rows_q8_detail {

using io::GgmlType;
using quant_rows_detail::kColumnBlock;
using quant_rows_detail::kMaxTileRows;

// One group of 32 weights: its codes, the scale of elements 0-15 and of 16-31, and its minimum
// (value = scale * code + min).
struct Group {
  int8_t codes[32];
  float scale_lo, scale_hi, min;
};

constexpr bool has_codes(GgmlType t) {
  return t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q4_K ||
         t == GgmlType::Q6_K;
}

// Whether the type's codes are signed (then the SIMD path multiplies |code| by x's code with
// code's sign) or nibbles 0..15 (multiplied as unsigned bytes).
constexpr bool signed_codes(GgmlType t) { return t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q6_K; }

// Group g (elements 32g .. 32g + 31) of the block at b, by the formulas of io's decoder.
inline void decode_group(GgmlType type, const uint8_t* b, int g, Group& out) {
  out.min = 0;
  switch (type) {
    case GgmlType::Q8_0:
      std::memcpy(out.codes, b + 2, 32);
      out.scale_lo = out.scale_hi = io::detail::load_f16(b);
      return;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1: {
      const bool has_min = type == GgmlType::Q4_1;
      const uint8_t* qs = b + (has_min ? 4 : 2);
      const int centre = has_min ? 0 : 8;
      for (int l = 0; l < 16; ++l) {
        out.codes[l] = int8_t((qs[l] & 0xF) - centre);
        out.codes[l + 16] = int8_t((qs[l] >> 4) - centre);
      }
      out.scale_lo = out.scale_hi = io::detail::load_f16(b);
      if (has_min) out.min = io::detail::load_f16(b + 2);
      return;
    }
    case GgmlType::Q4_K: {
      float sc, mn;
      io::detail::k_scale_min(g, b + 4, sc, mn);
      out.scale_lo = out.scale_hi = io::detail::load_f16(b) * sc;
      out.min = -(io::detail::load_f16(b + 2) * mn);
      const uint8_t* qs = b + 16 + 32 * (g / 2);
      const int shift = 4 * (g % 2);
      for (int l = 0; l < 32; ++l) out.codes[l] = int8_t((qs[l] >> shift) & 0xF);
      return;
    }
    default: {  // Q6_K
      const int h = g / 4, k = g % 4;
      const uint8_t* ql = b + 64 * h + 32 * (k % 2);
      const uint8_t* qh = b + 128 + 32 * h;
      const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
      const float d = io::detail::load_f16(b + 208);
      for (int l = 0; l < 32; ++l)
        out.codes[l] = int8_t((((ql[l] >> (4 * (k / 2))) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32);
      out.scale_lo = d * float(scales[8 * h + 2 * k]);
      out.scale_hi = d * float(scales[8 * h + 2 * k + 1]);
      return;
    }
  }
}

// The contract's closing sum: even + odd groups' lanes in the tree l + 4, l + 2, l + 1, plus the
// 16 minimum lanes in their tree (null: a type without minima).
inline float finish_lanes(const float* even, const float* odd, float* min_lanes) {
  float lanes[8];
  for (int l = 0; l < 8; ++l) lanes[l] = even[l] + odd[l];
  for (int width = 4; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return min_lanes ? lanes[0] + quant_rows_detail::sum_lanes(min_lanes) : lanes[0];
}

// Rows [r0, r0 + R) of x against weight rows [j0, j1) into y[(r - r0) * ldy + j].
using TileFn = void (*)(GgmlType type, const uint8_t* w, int64_t row_bytes, const Q8Rows& x,
                        int64_t r0, float* y, int64_t ldy, int64_t j0, int64_t j1, bool accumulate);

inline int64_t block_elements(GgmlType t) { return t == GgmlType::Q4_K || t == GgmlType::Q6_K ? 256 : 32; }
constexpr bool has_minimum(GgmlType t) { return t == GgmlType::Q4_1 || t == GgmlType::Q4_K; }

// A weight row's minima, kept while its groups pass and then taken into each row's 16 minimum
// lanes, kChunk groups at a time (a multiple of 16, so lane k stays group % 16).
constexpr int64_t kMinChunk = 256;

// ---- Portable path ---------------------------------------------------------------------------
template <int R>
void portable_tile(GgmlType type, const uint8_t* w, int64_t row_bytes, const Q8Rows& x, int64_t r0,
                   float* y, int64_t ldy, int64_t j0, int64_t j1, bool accumulate) {
  const int64_t in = x.in, bs = block_elements(type), blocks = in / bs, bb = blocks > 0 ? row_bytes / blocks : 0;
  const int per_block = int(bs / 32);
  const int64_t groups = in / 32;
  const bool minima = has_minimum(type);
  Group grp;
  for (int64_t j = j0; j < j1; ++j) {
    float lanes[R][2][8] = {}, min_lanes[R][16] = {};  // [row][even / odd group][lane]
    for (int64_t G = 0; G < groups; ++G) {
      decode_group(type, w + j * row_bytes + (G / per_block) * bb, int(G % per_block), grp);
      for (int r = 0; r < R; ++r) {
        const int64_t row = r0 + r;
        const int8_t* xq = x.q.data() + row * in + 32 * G;
        const float dx = x.d[size_t(row * groups + G)];
        const float lo = grp.scale_lo * dx, hi = grp.scale_hi * dx;
        for (int l = 0; l < 8; ++l) {
          int32_t lane = 0;
          for (int e = 4 * l; e < 4 * l + 4; ++e) lane += int32_t(grp.codes[e]) * int32_t(xq[e]);
          float& acc = lanes[r][G % 2][l];
          acc = std::fma(float(lane), l < 4 ? lo : hi, acc);
        }
        if (minima) {
          float& m = min_lanes[r][G % 16];
          m = std::fma(grp.min, x.sum[size_t(row * groups + G)], m);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float dot = finish_lanes(lanes[r][0], lanes[r][1], minima ? min_lanes[r] : nullptr);
      float& yr = y[r * ldy + j];
      yr = accumulate ? yr + dot : dot;
    }
  }
}

struct PortableTiles {
  template <GgmlType T, int R>
  static constexpr TileFn tile = has_codes(T) ? portable_tile<R> : nullptr;
};

#if MIL_CPU_SIMD
// ---- AVX2 path -------------------------------------------------------------------------------

// Group g of the block at b: its 32 codes in one register (element e in byte e), its scales and
// minimum; the same values as decode_group.
template <GgmlType T>
MIL_TARGET_AVX2 inline __m256i avx2_codes(const uint8_t* b, int g, float& scale_lo, float& scale_hi,
                                          float& min) {
  min = 0;
  if constexpr (T == GgmlType::Q8_0) {
    scale_lo = scale_hi = quant_rows_detail::f16_at(b);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  } else if constexpr (T == GgmlType::Q4_0 || T == GgmlType::Q4_1) {
    constexpr bool has_min = T == GgmlType::Q4_1;
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (has_min ? 4 : 2)));
    const __m128i nibble = _mm_set1_epi8(0xF);
    __m256i codes = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), nibble), _mm_and_si128(qs, nibble));
    scale_lo = scale_hi = quant_rows_detail::f16_at(b);
    if constexpr (has_min) min = quant_rows_detail::f16_at(b + 2);
    else codes = _mm256_sub_epi8(codes, _mm256_set1_epi8(8));
    return codes;
  } else if constexpr (T == GgmlType::Q4_K) {
    float sc, mn;
    io::detail::k_scale_min(g, b + 4, sc, mn);
    scale_lo = scale_hi = quant_rows_detail::f16_at(b) * sc;
    min = -(quant_rows_detail::f16_at(b + 2) * mn);
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16 + 32 * (g / 2)));
    return _mm256_and_si256(g % 2 ? _mm256_srli_epi16(qs, 4) : qs, _mm256_set1_epi8(0xF));
  } else {  // Q6_K
    const int h = g / 4, k = g % 4;
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h + 32 * (k % 2)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h));
    const __m256i low = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k / 2))),
                                         _mm256_set1_epi8(0xF));
    const __m256i high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)),
                                          _mm256_set1_epi8(3));
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = quant_rows_detail::f16_at(b + 208);
    scale_lo = d * float(scales[8 * h + 2 * k]);
    scale_hi = d * float(scales[8 * h + 2 * k + 1]);
    return _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), _mm256_set1_epi8(32));
  }
}

// Group G of weight row `row` (Q4_K and Q6_K hold 8 groups a block): its codes and scales.
template <GgmlType T>
MIL_TARGET_AVX2 inline __m256i avx2_group(const uint8_t* row, int64_t block_bytes, int64_t G,
                                          float& scale_lo, float& scale_hi, float& min) {
  constexpr int per_block = T == GgmlType::Q4_K || T == GgmlType::Q6_K ? 8 : 1;
  return avx2_codes<T>(row + (G / per_block) * block_bytes, int(G % per_block), scale_lo, scale_hi, min);
}

// The 8 lanes of a group: lane l = sum of codes[e] xq[e] over e = 4l .. 4l + 3, exactly (a pair of
// products is at most 2 * 128 * 127 in magnitude: no int16 saturation).
template <bool Signed>
MIL_TARGET_AVX2 inline __m256i avx2_lanes(__m256i codes_unsigned, __m256i codes, const int8_t* xq) {
  __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  if constexpr (Signed) x = _mm256_sign_epi8(x, codes);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes_unsigned, x), _mm256_set1_epi16(1));
}

// 16 minimum lanes of R rows (lo: 0-7, hi: 8-15) take `count` groups from `first` (a multiple of
// 16): min_lanes += minima * sums, the sums read up to the row's last group.
template <int R>
MIL_TARGET_AVX2 inline void avx2_minima(__m256 (*min_lanes)[2], const float* minima, int64_t first,
                                        int64_t count, const float* sums, int64_t groups) {
  for (int64_t k = 0; k < count; k += 16)
    for (int half = 0; half < 2; ++half) {
      const int64_t at = first + k + 8 * half, left = std::min<int64_t>(8, groups - at);
      if (left <= 0) continue;
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 m = _mm256_maskload_ps(minima + k + 8 * half, mask);  // not a stale minimum
      for (int r = 0; r < R; ++r)
        min_lanes[r][half] = _mm256_fmadd_ps(m, _mm256_maskload_ps(sums + r * groups + at, mask), min_lanes[r][half]);
    }
}

template <GgmlType T, int R>
MIL_TARGET_AVX2 void avx2_tile(GgmlType, const uint8_t* w, int64_t row_bytes, const Q8Rows& x, int64_t r0,
                               float* y, int64_t ldy, int64_t j0, int64_t j1, bool accumulate) {
  constexpr bool minima = has_minimum(T), is_signed = signed_codes(T);
  const int64_t in = x.in, groups = in / 32, block_bytes = in > 0 ? row_bytes / (in / block_elements(T)) : 0;
  const int8_t* q = x.q.data() + r0 * in;
  const float* d8 = x.d8.data() + r0 * groups * 8;
  const float* sums = x.sum.data() + r0 * groups;
  alignas(32) float chunk[kMinChunk + 16] = {};  // a weight row's minima (read masked to its groups)
  for (int64_t j = j0; j < j1; ++j) {
    __m256 acc[R][2], min_lanes[R][2];  // even / odd groups; minimum lanes 0-7 / 8-15
    for (int r = 0; r < R; ++r)
      acc[r][0] = acc[r][1] = min_lanes[r][0] = min_lanes[r][1] = _mm256_setzero_ps();
    for (int64_t G = 0; G < groups; ++G) {
      float scale_lo, scale_hi, min;
      const __m256i codes = avx2_group<T>(w + j * row_bytes, block_bytes, G, scale_lo, scale_hi, min);
      const __m256i codes_unsigned = is_signed ? _mm256_sign_epi8(codes, codes) : codes;  // |code|
      const __m256 sw = T == GgmlType::Q6_K
                            ? _mm256_blend_ps(_mm256_set1_ps(scale_lo), _mm256_set1_ps(scale_hi), 0xF0)
                            : _mm256_set1_ps(scale_lo);
MIL_CPU_UNROLL_8
      for (int r = 0; r < R; ++r) {
        const __m256 lanes = _mm256_cvtepi32_ps(avx2_lanes<is_signed>(codes_unsigned, codes, q + r * in + 32 * G));
        const __m256 scale = _mm256_mul_ps(sw, _mm256_loadu_ps(d8 + (r * groups + G) * 8));
        acc[r][G % 2] = _mm256_fmadd_ps(lanes, scale, acc[r][G % 2]);
      }
      if constexpr (minima) {
        chunk[G % kMinChunk] = min;
        if (G % kMinChunk == kMinChunk - 1 || G == groups - 1) {
          const int64_t first = G - G % kMinChunk;
          avx2_minima<R>(min_lanes, chunk, first, G - first + 1, sums, groups);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      // finish_lanes in registers: avx2_sum_lanes(a, b) is the tree over a + b of l + 4, l + 2,
      // l + 1, which is the lanes' even + odd and tree, and the 16 minimum lanes' tree.
      float dot = avx2_sum_lanes(acc[r][0], acc[r][1]);
      if constexpr (minima) dot += avx2_sum_lanes(min_lanes[r][0], min_lanes[r][1]);
      float& yr = y[r * ldy + j];
      yr = accumulate ? yr + dot : dot;
    }
  }
}

// A path's tiles for quant_rows_detail::tile_for: Kernel::fn<T, R> for the types with codes, none
// for F16 and BF16 (never instantiated).
template <class Kernel>
struct CodeTiles {
  template <GgmlType T, int R>
  static consteval TileFn pick() {
    if constexpr (has_codes(T)) return Kernel::template fn<T, R>;
    else return nullptr;
  }
  template <GgmlType T, int R>
  static constexpr TileFn tile = pick<T, R>();
};

struct Avx2Kernel {
  template <GgmlType T, int R>
  static constexpr TileFn fn = avx2_tile<T, R>;
};
using Avx2Tiles = CodeTiles<Avx2Kernel>;

// GCC 12's AVX-512 intrinsics: the same false -Wmaybe-uninitialized alarm as in quant_rows.hpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// ---- AVX-512 VNNI path -------------------------------------------------------------------------
// Two groups per 512-bit register: the even group's 8 lanes in lanes 0-7, the odd one's in 8-15,
// which are the contract's two accumulators; one vpdpbusd forms the 16 lanes' integer sums (it
// multiplies unsigned by signed bytes: signed codes go in as |code| against x with code's sign).
// A row's last group, when their number is odd, takes lanes 0-7 with zero codes and scales above
// (adding 0 * 0 leaves the odd accumulator's bits: it is never -0).
MIL_TARGET_AVX512_VNNI inline __m256 low_half(__m512 v) { return _mm512_castps512_ps256(v); }
MIL_TARGET_AVX512_VNNI inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

template <GgmlType T, int R>
MIL_TARGET_AVX512_VNNI void avx512_tile(GgmlType, const uint8_t* w, int64_t row_bytes, const Q8Rows& x,
                                        int64_t r0, float* y, int64_t ldy, int64_t j0, int64_t j1,
                                        bool accumulate) {
  constexpr bool minima = has_minimum(T), is_signed = signed_codes(T);
  const int64_t in = x.in, groups = in / 32, block_bytes = in > 0 ? row_bytes / (in / block_elements(T)) : 0;
  const int8_t* q = x.q.data() + r0 * in;
  const float* d8 = x.d8.data() + r0 * groups * 8;
  const float* sums = x.sum.data() + r0 * groups;
  alignas(64) float chunk[kMinChunk + 16] = {};
  for (int64_t j = j0; j < j1; ++j) {
    __m512 acc[R];
    alignas(64) float min_lanes[R][16];  // in memory: taken once per kMinChunk groups
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps(), _mm512_store_ps(min_lanes[r], _mm512_setzero_ps());
    for (int64_t G = 0; G < groups; G += 2) {
      const bool pair = G + 1 < groups;
      float lo[2] = {0, 0}, hi[2] = {0, 0}, min[2] = {0, 0};
      __m512i codes = _mm512_zextsi256_si512(avx2_group<T>(w + j * row_bytes, block_bytes, G, lo[0], hi[0], min[0]));
      if (pair)
        codes = _mm512_inserti64x4(codes, avx2_group<T>(w + j * row_bytes, block_bytes, G + 1, lo[1], hi[1], min[1]), 1);
      const __m512i codes_unsigned = is_signed ? _mm512_abs_epi8(codes) : codes;
      const __mmask64 negative = is_signed ? _mm512_movepi8_mask(codes) : 0;
      __m512 sw = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(lo[0]), _mm512_set1_ps(lo[1]));
      if constexpr (T == GgmlType::Q6_K) {
        sw = _mm512_mask_blend_ps(0x00F0, sw, _mm512_set1_ps(hi[0]));
        sw = _mm512_mask_blend_ps(0xF000, sw, _mm512_set1_ps(hi[1]));
      }
      const __mmask16 lanes_in = pair ? 0xFFFF : 0x00FF;
MIL_CPU_UNROLL_8
      for (int r = 0; r < R; ++r) {
        const int8_t* xq = q + r * in + 32 * G;
        __m512i xv = pair ? _mm512_loadu_si512(xq)
                          : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
        if constexpr (is_signed) xv = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
        const __m512 lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), codes_unsigned, xv));
        const __m512 scale = _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(lanes_in, d8 + (r * groups + G) * 8));
        acc[r] = _mm512_fmadd_ps(lanes, scale, acc[r]);
      }
      if constexpr (minima) {
        chunk[G % kMinChunk] = min[0];
        chunk[G % kMinChunk + 1] = min[1];
        const int64_t last = pair ? G + 1 : G;
        if (last % kMinChunk == kMinChunk - 1 || last == groups - 1) {
          const int64_t first = last - last % kMinChunk;
          for (int64_t k = 0; k < last - first + 1; k += 16) {
            const int64_t left = std::min<int64_t>(16, groups - (first + k));
            const __mmask16 mask = __mmask16((1u << left) - 1u);
            const __m512 m = _mm512_maskz_loadu_ps(mask, chunk + k);  // not a stale minimum
            for (int r = 0; r < R; ++r)
              _mm512_store_ps(min_lanes[r], _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(mask, sums + r * groups + first + k),
                                                            _mm512_load_ps(min_lanes[r])));
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {  // as the AVX2 path's (lanes 0-7 even, 8-15 odd)
      float dot = avx2_sum_lanes(low_half(acc[r]), high_half(acc[r]));
      if constexpr (minima) dot += avx2_sum_lanes(_mm256_load_ps(min_lanes[r]), _mm256_load_ps(min_lanes[r] + 8));
      float& yr = y[r * ldy + j];
      yr = accumulate ? yr + dot : dot;
    }
  }
}

struct Avx512Kernel {
  template <GgmlType T, int R>
  static constexpr TileFn fn = avx512_tile<T, R>;
};
using Avx512Tiles = CodeTiles<Avx512Kernel>;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // MIL_CPU_SIMD

}  // namespace quant_rows_q8_detail

// The weight types with integer codes (F16 and BF16 have none: their products keep float x).
inline bool quant_rows_q8_supports(io::GgmlType type) { return quant_rows_q8_detail::has_codes(type); }

// y[r*ldy + o] = (y +) sum_i dequant(W[o, i]) * dx q[r, i] for the rows of `x` (quantised
// activations) and o < out, W as in quant_linear_rows (types: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
// Paths: automatic takes AVX-512 VNNI where the CPU has it, else AVX2, else portable (the
// same bits on all three).
inline void quant_linear_rows_q8(io::GgmlType type, const uint8_t* w, int64_t out, const Q8Rows& x,
                                 float* y, bool accumulate = false,
                                 QuantRowsPath path = QuantRowsPath::automatic, int64_t y_stride = 0) {
  namespace d = quant_rows_q8_detail;
  const int64_t rows = x.rows, in = x.in;
  MIL_CHECK(out >= 0, "quant_linear_rows_q8: negative size out=", out);
  MIL_CHECK(y_stride == 0 || y_stride >= out, "quant_linear_rows_q8: y_stride ", y_stride,
            " is below out = ", out);
  const auto info = io::ggml_type_info_or_throw(type);
  MIL_CHECK(quant_rows_q8_supports(type), "quant_linear_rows_q8: ggml type ", info.name,
            " has no integer codes (8-bit activations take Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)");
  MIL_CHECK(in % info.block_size == 0, "quant_linear_rows_q8: in = ", in, " is not a whole number of ",
            info.name, " blocks of ", info.block_size);
  MIL_CHECK(path != QuantRowsPath::avx2 || quant_rows_avx2_supported(),
            "quant_linear_rows_q8: the AVX2 path was asked for but this CPU or build lacks AVX2/FMA/F16C");
  MIL_CHECK(path != QuantRowsPath::avx512 || cpu_has_avx512_vnni(),
            "quant_linear_rows_q8: the AVX-512 path was asked for but this CPU or build lacks "
            "AVX-512 BW/VL/VNNI");
  const int64_t ldy = y_stride ? y_stride : out;
  if (rows == 0 || out == 0) return;
  MIL_CHECK(y && (in == 0 || w), "quant_linear_rows_q8: null operand pointer");
  (void)checked_mul(out, io::ggml_row_bytes(type, in)), (void)checked_mul(rows, ldy);
  const int64_t row_bytes = io::ggml_row_bytes(type, in);
  if (path == QuantRowsPath::automatic)
    path = cpu_has_avx512_vnni()          ? QuantRowsPath::avx512
           : quant_rows_avx2_supported() ? QuantRowsPath::avx2
                                         : QuantRowsPath::portable;
  d::TileFn tiles[d::kMaxTileRows + 1] = {};
  for (int n = 1; n <= d::kMaxTileRows; ++n) {
#if MIL_CPU_SIMD
    tiles[n] = path == QuantRowsPath::avx512 ? quant_rows_detail::tile_for<d::Avx512Tiles>(type, n)
               : path == QuantRowsPath::avx2 ? quant_rows_detail::tile_for<d::Avx2Tiles>(type, n)
                                             : quant_rows_detail::tile_for<d::PortableTiles>(type, n);
#else
    tiles[n] = quant_rows_detail::tile_for<d::PortableTiles>(type, n);
#endif
  }
  for_each_row_tile(rows, out, in, d::kColumnBlock, d::kMaxTileRows, [&](int n, int64_t r, int64_t j0, int64_t j1) {
    tiles[n](type, w, row_bytes, x, r, y + r * ldy, ldy, j0, j1, accumulate);
  });
}

}  // namespace mil::cpu
