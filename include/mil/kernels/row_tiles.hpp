#pragma once
// The loop the row-invariant CPU products share (cpu::linear_rows, cpu::quant_linear_rows): the
// output columns (weight rows) in equal blocks of at most `column_block`, a whole number per
// thread, one thread task each, and within a task the call's rows in tiles of up to
// `max_tile_rows` that share each weight read. Threads split
// columns only and a tile's rows never change a row's summation order, so a row's bits depend on
// neither the thread count nor the other rows of the call.
#include <algorithm>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/threads.hpp"

namespace mil::cpu {

// tile(n, r, j0, j1): rows [r, r + n) against weight rows [j0, j1).
template <class Tile>
inline void for_each_row_tile(int64_t rows, int64_t out, int64_t in, int64_t column_block,
                              int max_tile_rows, const Tile& tile) {
  if (rows <= 0 || out <= 0) return;
  // Threads only pay off past ~64k multiply-adds; the `if` changes who computes, not the result.
  [[maybe_unused]] const bool parallel =
      checked_mul(checked_mul(rows, out), std::max<int64_t>(in, 1)) > (int64_t(1) << 16);
  // A whole number of blocks per thread, each at most column_block wide: 576 columns in blocks of
  // 64 would give one thread 5 blocks and the other 4, which a decode step waits for.
  int64_t blocks = (out + column_block - 1) / column_block;
  const int64_t team = parallel ? threads() : 1;
  blocks = (blocks + team - 1) / team * team;
  const int64_t width = (out + blocks - 1) / blocks;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = std::min(out, b * width), j1 = std::min(out, j0 + width);
    if (j0 == j1) continue;
    for (int64_t r = 0; r < rows; r += max_tile_rows)
      tile(int(std::min<int64_t>(max_tile_rows, rows - r)), r, j0, j1);
  }
}

}  // namespace mil::cpu
