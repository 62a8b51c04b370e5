#pragma once
// Inference product on the CPU: y[r, :] = x[r, :] W^T (+ y[r, :] when accumulate), W [out, in].
//
// Contract: row r's result is bitwise the same whatever the number of rows in the call and the
// thread count, so verifying k tokens in one call equals k single-token decode steps. Hence:
//   - one summation order per output element, fixed by `in` alone: L lanes (L = 64 bytes of T:
//     16 floats, 8 doubles); lane l sums x[i] w[i] for i = l (mod L) in increasing i (a last
//     partial block is padded with zeros); the lanes are then added in a fixed tree
//     (l + L/2, then l + L/4, ... down to lane 0), and y is added last when accumulating;
//   - threads split the output columns only (never `in`);
//   - the row tiling (up to kMaxTileRows rows share each weight read) does not touch the order.
// Each product is added with one rounding (FMA) where the build's instruction set has FMA and two
// elsewhere, explicitly, in every tile alike. The lanes are GCC/Clang vector types, lowered to
// whatever the build targets (SSE2 for portable packages, AVX2 or AVX-512 with MIL_NATIVE): the
// same source and order everywhere, and the same bits for every row count and thread count of one
// build (not across builds with and without FMA).
//
// Decode (1..8 rows) reads each weight once from memory; prefill runs the same per-row arithmetic
// in tiles of rows against a block of weight rows that stays in the core's cache.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../core/error.hpp"
#include "row_tiles.hpp"

namespace mil::cpu {

namespace linear_rows_detail {

inline constexpr int kVectorBytes = 64;
// A tile of R rows and C weight rows keeps R x C lane vectors of accumulators in registers: up to
// 16 where a lane vector is one register (AVX-512's 32), 6 where it is two or four. R rows share
// each weight read; the C weight rows share each x read and give the FMA latency independent
// chains when R is small.
#if defined(__AVX512F__)
inline constexpr int kMaxTileRows = 8, kAccumulators = 16;
#else
inline constexpr int kMaxTileRows = 4, kAccumulators = 6;
#endif
inline constexpr int tile_columns_for(int rows) {
  return std::max(1, std::min(4, kAccumulators / rows));
}
// Weight rows per thread task: 64 rows of 576 floats (144 KiB) stay in L2 while the row tiles of
// a prefill pass over them.
inline constexpr int64_t kColumnBlock = 64;

#if !defined(__GNUC__) && !defined(__clang__)
#error "cpu::linear_rows needs GCC or Clang vector extensions"
#endif
template <class T, int Bytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <class T>
using Vec = typename VecOf<T, kVectorBytes>::type;

// Sum of the lanes in the fixed tree order of the contract: adding the high half to the low half
// is lane[l] += lane[l + width] for every l < width at once.
template <class T, int Bytes = kVectorBytes>
inline T sum_lanes(const typename VecOf<T, Bytes>::type& v) {
  if constexpr (Bytes == int(sizeof(T))) {
    return v[0];
  } else {
    using Half = typename VecOf<T, Bytes / 2>::type;
    Half low, high;
    std::memcpy(&low, &v, sizeof(Half));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
    return sum_lanes<T, Bytes / 2>(low + high);
  }
}

template <class T>
inline constexpr int64_t kLanes = kVectorBytes / int64_t(sizeof(T));

// acc += x w lane by lane, with one rounding where the build's ISA has FMA and two elsewhere.
// Explicit, because the compiler's contraction of a * b + c is a heuristic that fuses in some
// instantiations and not in others, which would make tiles of different row counts round
// differently.
template <class T>
inline void multiply_add(Vec<T>& acc, const Vec<T>& x, const Vec<T>& w) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  for (int64_t l = 0; l < kLanes<T>; ++l) acc[l] = std::fma(x[l], w[l], acc[l]);
#else
  const Vec<T> product = x * w;  // no FMA instruction, so nothing can fuse this
  acc += product;
#endif
}

// Loads write through a reference: a vector returned by value would change the ABI when the
// build's ISA has narrower registers (GCC warns).
template <class T>
inline void load(Vec<T>& v, const T* p) {
  std::memcpy(&v, p, sizeof(v));  // unaligned load
}

// The last n < L elements, zero padded.
template <class T>
inline void load_partial(Vec<T>& v, const T* p, int64_t n) {
  T padded[kLanes<T>] = {};
  std::copy_n(p, n, padded);
  load<T>(v, padded);
}

// Rows [0, R) of x against weight rows [j, j + C): each weight row is read once for all R rows,
// each x block once for all C weight rows.
template <class T, int R, int C>
void tile_columns(T* y, const T* x, const T* w, int64_t out, int64_t in, int64_t j,
                  const Vec<T>* x_tail, bool accumulate) {
  constexpr int64_t L = kLanes<T>;
  const int64_t full = in - in % L;
  Vec<T> acc[C][R] = {};
  for (int64_t i = 0; i < full; i += L) {
    Vec<T> wv[C], xv;
    for (int c = 0; c < C; ++c) load<T>(wv[c], w + (j + c) * in + i);
    for (int r = 0; r < R; ++r) {
      load<T>(xv, x + r * in + i);
      for (int c = 0; c < C; ++c) multiply_add<T>(acc[c][r], xv, wv[c]);
    }
  }
  if (full < in)
    for (int c = 0; c < C; ++c) {
      Vec<T> wv;
      load_partial<T>(wv, w + (j + c) * in + full, in - full);
      for (int r = 0; r < R; ++r) multiply_add<T>(acc[c][r], x_tail[r], wv);
    }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) {
      const T dot = sum_lanes<T>(acc[c][r]);
      T& yr = y[r * out + j + c];
      yr = accumulate ? yr + dot : dot;
    }
}

// Rows [0, R) of x against weight rows [j0, j1).
template <class T, int R>
void tile(T* y, const T* x, const T* w, int64_t out, int64_t in, int64_t j0, int64_t j1,
          bool accumulate) {
  const int64_t full = in - in % kLanes<T>;
  Vec<T> x_tail[R];  // the zero-padded last block of each row, built once per tile
  for (int r = 0; r < R; ++r) load_partial<T>(x_tail[r], x + r * in + full, in - full);
  constexpr int C = tile_columns_for(R);
  int64_t j = j0;
  for (; j + C <= j1; j += C) tile_columns<T, R, C>(y, x, w, out, in, j, x_tail, accumulate);
  for (; j < j1; ++j) tile_columns<T, R, 1>(y, x, w, out, in, j, x_tail, accumulate);
}

template <class T>
void tile_rows(int rows, T* y, const T* x, const T* w, int64_t out, int64_t in, int64_t j0,
               int64_t j1, bool accumulate) {
  static_assert(kMaxTileRows <= 8);
  switch (rows) {
    case 1: return tile<T, 1>(y, x, w, out, in, j0, j1, accumulate);
    case 2: return tile<T, 2>(y, x, w, out, in, j0, j1, accumulate);
    case 3: return tile<T, 3>(y, x, w, out, in, j0, j1, accumulate);
    case 4: return tile<T, 4>(y, x, w, out, in, j0, j1, accumulate);
    case 5: return tile<T, 5>(y, x, w, out, in, j0, j1, accumulate);
    case 6: return tile<T, 6>(y, x, w, out, in, j0, j1, accumulate);
    case 7: return tile<T, 7>(y, x, w, out, in, j0, j1, accumulate);
    case 8: return tile<T, 8>(y, x, w, out, in, j0, j1, accumulate);
  }
}

}  // namespace linear_rows_detail

template <class T>
void linear_rows(T* y, const T* x, const T* w, int64_t rows, int64_t out, int64_t in,
                 bool accumulate) {
  static_assert(std::is_floating_point_v<T>, "cpu::linear_rows runs in float or double");
  namespace d = linear_rows_detail;
  MIL_CHECK(rows >= 0 && out >= 0 && in >= 0, "linear_rows: negative size rows=", rows,
            " out=", out, " in=", in);
  (void)checked_mul(rows, in), (void)checked_mul(out, in), (void)checked_mul(rows, out);
  if (rows == 0 || out == 0) return;
  MIL_CHECK(y && (in == 0 || (x && w)), "linear_rows: null operand pointer");
  for_each_row_tile(rows, out, in, d::kColumnBlock, d::kMaxTileRows,
                    [&](int n, int64_t r, int64_t j0, int64_t j1) {
                      d::tile_rows(n, y + r * out, x + r * in, w, out, in, j0, j1, accumulate);
                    });
}

}  // namespace mil::cpu
