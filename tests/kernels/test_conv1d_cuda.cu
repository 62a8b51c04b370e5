// Causal depthwise conv1d on the GPU against the CPU reference in double on the same
// T-representable inputs: kernel widths 4 (templated, packed and one-element paths) and 2, 3, 8
// (generic), channels not a multiple of the pack, x and y as column blocks of wider buffers, SiLU
// on and off, no bias, runs longer and shorter than a thread's run, backward write modes and null
// gradients; the ring: a sequence split into calls (decode steps included) equals one call and
// leaves the same ring as the CPU, independent slots, bad sizes.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include <mil/kernels/conv1d.cuh>
#include <mil/kernels/conv1d.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// x at column x_offset of rows of x_stride; y (and dy) at column y_offset of rows of y_stride
// (strides 0: packed, offsets then 0).
struct Case {
  int64_t batch, seq, channels, kernel;
  int64_t x_stride = 0, x_offset = 0, y_stride = 0, y_offset = 0;
  bool silu = true, bias = true;
};

struct Mode {
  bool accumulate_dx, accumulate_dw;
  bool dx = true, dw = true, dbias = true;
};

template <class T>
void check(const Case& c, const Mode& m, uint64_t seed) {
  Conv1dShape s{c.batch, c.seq, c.channels, c.kernel, c.x_stride, c.y_stride, c.silu};
  INFO("batch ", c.batch, " seq ", c.seq, " channels ", c.channels, " kernel ", c.kernel,
       " x stride ", c.x_stride, "+", c.x_offset, " y stride ", c.y_stride, "+", c.y_offset,
       " silu ", c.silu, " bias ", c.bias, " accumulate ", m.accumulate_dx, "/", m.accumulate_dw,
       " ", test::type_name<T>());
  const int64_t rows = c.batch * c.seq, K = c.kernel, C = c.channels;
  const int64_t xn = c.x_offset + rows * s.xs(), yn = c.y_offset + rows * s.ys();
  const auto x = test::representable<T>(size_t(xn), seed, -2.f, 2.f);
  const auto w = test::representable<T>(size_t(C * K), seed + 1, -0.8f, 0.8f);
  const auto bias = test::representable<T>(size_t(C), seed + 2, -0.5f, 0.5f);
  const auto dy = test::representable<T>(size_t(yn), seed + 3);
  const auto dx0 = test::representable<T>(size_t(xn), seed + 4);  // pre-filled gradients
  const auto dw0 = test::representable<T>(size_t(C * K), seed + 5);
  const auto db0 = test::representable<T>(size_t(C), seed + 6);

  auto xd = test::cast_vector<double>(x), wd = test::cast_vector<double>(w),
       bd = test::cast_vector<double>(bias), dyd = test::cast_vector<double>(dy);
  std::vector<double> y_ref(static_cast<size_t>(yn));
  auto dx_ref = test::cast_vector<double>(dx0), dw_ref = test::cast_vector<double>(dw0),
       db_ref = test::cast_vector<double>(db0);
  const double* bp = c.bias ? bd.data() : nullptr;
  cpu::conv1d_forward(y_ref.data() + c.y_offset, xd.data() + c.x_offset, wd.data(), bp, s);
  cpu::conv1d_backward(m.dx ? dx_ref.data() + c.x_offset : nullptr, m.dw ? dw_ref.data() : nullptr,
                       m.dbias ? db_ref.data() : nullptr, dyd.data() + c.y_offset,
                       xd.data() + c.x_offset, wd.data(), bp, s, m.accumulate_dx, m.accumulate_dw);

  auto x_gpu = test::to_gpu(test::cast_vector<T>(x)), w_gpu = test::to_gpu(test::cast_vector<T>(w));
  auto b_gpu = test::to_gpu(test::cast_vector<T>(bias)), dy_gpu = test::to_gpu(test::cast_vector<T>(dy));
  auto dx_gpu = test::to_gpu(test::cast_vector<T>(dx0)), dw_gpu = test::to_gpu(test::cast_vector<T>(dw0));
  auto db_gpu = test::to_gpu(test::cast_vector<T>(db0));
  auto y_gpu = test::poisoned_gpu<T>(size_t(yn));
  const T* bg = c.bias ? b_gpu.data() : nullptr;
  cuda::conv1d_forward(y_gpu.data() + c.y_offset, x_gpu.data() + c.x_offset, w_gpu.data(), bg, s,
                       nullptr);
  cuda::conv1d_backward(m.dx ? dx_gpu.data() + c.x_offset : nullptr, m.dw ? dw_gpu.data() : nullptr,
                        m.dbias ? db_gpu.data() : nullptr, dy_gpu.data() + c.y_offset,
                        x_gpu.data() + c.x_offset, w_gpu.data(), bg, s, m.accumulate_dx,
                        m.accumulate_dw, nullptr);
  MIL_CUDA_CHECK(cudaDeviceSynchronize());

  const double tol = test::tolerance<T>();
  // y: the block against the reference, the rest of the buffer still the poison.
  const auto y = y_gpu.to_vector();
  std::vector<T> y_block;
  std::vector<double> y_block_ref;
  size_t y_outside = 0;
  const T poison = test::poison<T>();
  for (int64_t i = 0; i < yn; ++i) {
    const int64_t k = i - c.y_offset;
    if (k >= 0 && k % s.ys() < C) {
      y_block.push_back(y[size_t(i)]);
      y_block_ref.push_back(y_ref[size_t(i)]);
    } else if (std::memcmp(&y[size_t(i)], &poison, sizeof(T)) != 0) {
      ++y_outside;
    }
  }
  test::require_close("conv1d gpu y", y_block, y_block_ref, tol);
  CHECK(y_outside == 0);
  const auto dx = dx_gpu.to_vector();
  const auto dx0_t = test::cast_vector<T>(dx0);
  if (m.dx) {
    std::vector<T> block;
    std::vector<double> block_ref;
    size_t differ = 0;  // outside the x block: untouched
    for (int64_t i = 0; i < xn; ++i) {
      const int64_t k = i - c.x_offset;
      if (k >= 0 && k % s.xs() < C) {
        block.push_back(dx[size_t(i)]);
        block_ref.push_back(dx_ref[size_t(i)]);
      } else if (std::memcmp(&dx[size_t(i)], &dx0_t[size_t(i)], sizeof(T)) != 0) {
        ++differ;
      }
    }
    test::require_close("conv1d gpu dx", block, block_ref, tol);
    CHECK(differ == 0);
  } else {
    CHECK(test::bytes_of(dx) == test::bytes_of(dx0_t));
  }
  if (m.dw) test::require_close("conv1d gpu dw", dw_gpu.to_vector(), dw_ref, tol);
  else CHECK(test::bytes_of(dw_gpu.to_vector()) == test::bytes_of(test::cast_vector<T>(dw0)));
  if (m.dbias) test::require_close("conv1d gpu dbias", db_gpu.to_vector(), db_ref, tol);
  else CHECK(test::bytes_of(db_gpu.to_vector()) == test::bytes_of(test::cast_vector<T>(db0)));
}

// `batch` sequences of `total` tokens through the ring in the pieces `pieces` (every batch row
// gets the same piece lengths; row b uses slot slots[b] and starts at position start[b]), on the
// GPU, against the CPU doing the same calls and against one GPU call without the ring where the
// starts are 0. The ring starts with random history (used where start > 0).
template <class T>
void check_ring(int64_t batch, int64_t total, int64_t C, int64_t K, int64_t len,
                const std::vector<int64_t>& pieces, const std::vector<int32_t>& start,
                uint64_t seed) {
  INFO("batch ", batch, " tokens ", total, " channels ", C, " kernel ", K, " ring ", len,
       " pieces ", pieces.size(), " ", test::type_name<T>());
  const int64_t n_slots = batch + 1;
  std::vector<int32_t> slots(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) slots[size_t(b)] = int32_t(batch - b);  // slot 0 unused
  const auto x = test::representable<T>(size_t(batch * total * C), seed, -2.f, 2.f);
  const auto w = test::representable<T>(size_t(C * K), seed + 1, -0.8f, 0.8f);
  const auto bias = test::representable<T>(size_t(C), seed + 2, -0.5f, 0.5f);
  const auto ring0 = test::representable<T>(size_t(n_slots * len * C), seed + 3, -2.f, 2.f);
  auto xd = test::cast_vector<double>(x), wd = test::cast_vector<double>(w),
       bd = test::cast_vector<double>(bias);

  auto x_gpu = test::to_gpu(test::cast_vector<T>(x)), w_gpu = test::to_gpu(test::cast_vector<T>(w));
  auto b_gpu = test::to_gpu(test::cast_vector<T>(bias));
  auto ring_gpu = test::to_gpu(test::cast_vector<T>(ring0));
  auto slots_gpu = test::to_gpu(slots);
  std::vector<double> y_ref(static_cast<size_t>(batch * total * C));
  std::vector<T> y_pieces(static_cast<size_t>(batch * total * C));
  auto ring_ref = test::cast_vector<double>(ring0);
  int64_t t0 = 0;
  for (int64_t len_p : pieces) {
    // The rows [t0, t0 + len_p) of every sequence, packed.
    std::vector<double> xp(size_t(batch * len_p * C));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < len_p; ++t)
        for (int64_t c = 0; c < C; ++c)
          xp[size_t((b * len_p + t) * C + c)] = xd[size_t((b * total + t0 + t) * C + c)];
    std::vector<int32_t> pos(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) pos[size_t(b)] = start[size_t(b)] + int32_t(t0);
    Conv1dShape s{batch, len_p, C, K};
    std::vector<double> yp(xp.size());
    cpu::conv1d_forward(yp.data(), xp.data(), wd.data(), bd.data(), s,
                        Conv1dRing<double>{ring_ref.data(), len, n_slots, slots.data(), pos.data()});
    auto xp_gpu = test::to_gpu(test::cast_vector<T>(xp));
    auto pos_gpu = test::to_gpu(pos);
    auto yp_gpu = test::poisoned_gpu<T>(xp.size());
    cuda::conv1d_forward(yp_gpu.data(), xp_gpu.data(), w_gpu.data(), b_gpu.data(), s,
                         Conv1dRing<T>{ring_gpu.data(), len, n_slots, slots_gpu.data(), pos_gpu.data()},
                         nullptr);
    const auto ypv = yp_gpu.to_vector();  // synchronises
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < len_p; ++t)
        for (int64_t c = 0; c < C; ++c) {
          const size_t dst = size_t((b * total + t0 + t) * C + c), src = size_t((b * len_p + t) * C + c);
          y_ref[dst] = yp[src];
          y_pieces[dst] = ypv[src];
        }
    t0 += len_p;
  }
  REQUIRE(t0 == total);
  const double tol = test::tolerance<T>();
  test::require_close("conv1d gpu ring pieces y", y_pieces, y_ref, tol);
  // The ring holds copies of inputs: bitwise the CPU's (slot 0 untouched on both).
  const auto ring_out = ring_gpu.to_vector();
  CHECK(test::bytes_of(ring_out) == test::bytes_of(test::cast_vector<T>(ring_ref)));
  CHECK(std::memcmp(ring_out.data(), test::cast_vector<T>(ring0).data(), size_t(len * C) * sizeof(T)) == 0);
  bool fresh = true;
  for (int32_t s0 : start) fresh = fresh && s0 == 0;
  if (fresh) {  // fresh sequences: one call without the ring gives the same outputs
    auto y_one = test::poisoned_gpu<T>(y_pieces.size());
    cuda::conv1d_forward(y_one.data(), x_gpu.data(), w_gpu.data(), b_gpu.data(),
                         Conv1dShape{batch, total, C, K}, nullptr);
    const auto yo = y_one.to_vector();
    CHECK(test::bytes_of(yo) == test::bytes_of(y_pieces));
  }
}

}  // namespace

TEST_CASE("conv1d: gpu forward and backward match the cpu") {
  MIL_GPU_TEST_GUARD();
  uint64_t seed = 100;
  int mode = 0;
  std::vector<Case> cases = {
      {2, 37, 24, 4},                       // packed, several runs, partial last run
      {3, 16, 20, 4},                       // channels not a multiple of 8 (bf16 one-element)
      {1, 70, 13, 4, 0, 0, 0, 0, false},    // odd channels, no SiLU
      {2, 33, 40, 3},                       // generic width 3
      {2, 21, 16, 2, 0, 0, 0, 0, true, false},  // width 2, no bias
      {1, 40, 9, 8},                        // width 8 over 9 channels
      {2, 50, 32, 4, 96, 32, 40, 8},        // x and y column blocks (Mamba-2's [x|B|C] in in_proj)
      {2, 19, 24, 4, 61, 5, 27, 1},         // odd strides: one-element packs
      {4, 3, 64, 4},                        // sequences shorter than the kernel
  };
  for (const Case& c : cases) {
    const Mode m{(mode & 1) != 0, (mode & 2) != 0};
    check<bf16>(c, m, seed);
    check<float>(c, Mode{!m.accumulate_dx, !m.accumulate_dw}, seed + 1);
    seed += 10;
    ++mode;
  }
}

TEST_CASE("conv1d: gpu backward with null gradients") {
  MIL_GPU_TEST_GUARD();
  Mode frozen{true, false};
  frozen.dw = frozen.dbias = false;
  check<bf16>({2, 37, 24, 4}, frozen, 300);
  Mode only_bias{false, true};
  only_bias.dx = only_bias.dw = false;
  check<bf16>({2, 37, 24, 4, 96, 32, 40, 8}, only_bias, 310);
  Mode no_dx{false, false};
  no_dx.dx = false;
  check<float>({1, 30, 11, 3}, no_dx, 320);
}

TEST_CASE("conv1d: gpu ring - pieces and decode steps equal one call") {
  MIL_GPU_TEST_GUARD();
  const std::vector<int32_t> fresh2{0, 0}, fresh3{0, 0, 0};
  // pieces longer than a thread's run (16: ring stored by a second kernel), shorter (stored by
  // the same threads), decode steps; ring of exactly K - 1 rows and longer
  check_ring<bf16>(2, 60, 24, 4, 3, {20, 1, 1, 5, 1, 17, 15}, fresh2, 400);
  check_ring<float>(2, 60, 24, 4, 3, {20, 1, 1, 5, 1, 17, 15}, fresh2, 410);
  check_ring<bf16>(3, 40, 20, 4, 6, {1, 1, 1, 30, 1, 6}, fresh3, 420);
  check_ring<bf16>(2, 30, 13, 3, 2, {2, 1, 25, 1, 1}, fresh2, 430);
  check_ring<float>(1, 24, 16, 8, 9, {8, 1, 1, 14}, {0}, 440);
  check_ring<bf16>(2, 12, 8, 1, 1, {5, 1, 6}, fresh2, 450);  // kernel 1: no history
}

TEST_CASE("conv1d: gpu ring - rows at different positions read the history before them") {
  MIL_GPU_TEST_GUARD();
  // Start positions > 0: the first tokens read the ring's (random) history, as on the CPU.
  check_ring<bf16>(3, 20, 24, 4, 5, {1, 18, 1}, {7, 3, 2}, 500);
  check_ring<float>(2, 9, 12, 4, 3, {1, 1, 7}, {1, 100}, 510);
}

TEST_CASE("conv1d: gpu rejects bad sizes") {
  MIL_GPU_TEST_GUARD();
  auto buf = Tensor<bf16, Cuda>::empty(Shape{256});
  bf16* p = buf.data();
  CHECK_THROWS_AS(cuda::conv1d_forward<bf16>(p, p, p, p, Conv1dShape{1, 4, 8, 9}, nullptr), Error);
  CHECK_THROWS_AS(cuda::conv1d_forward<bf16>(p, p, p, p, Conv1dShape{1, 4, 8, 4, 6}, nullptr), Error);
  CHECK_THROWS_AS(cuda::conv1d_backward<bf16>(p, p, p, p, p, p, p, Conv1dShape{1, 4, 0, 4}, false,
                                              false, nullptr),
                  Error);
  int32_t* ids = reinterpret_cast<int32_t*>(p);
  // a ring shorter than kernel - 1
  CHECK_THROWS_AS(cuda::conv1d_forward<bf16>(p, p, p, p, Conv1dShape{1, 4, 8, 4},
                                             Conv1dRing<bf16>{p, 2, 1, ids, ids}, nullptr),
                  Error);
}
