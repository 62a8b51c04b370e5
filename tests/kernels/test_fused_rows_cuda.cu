// The fused decode products on the GPU (kernels/fused_rows.cuh) against their CPU references
// (kernels/fused_rows.hpp, the unfused operations in a row): float and bf16, 1 to 8 rows, short
// rows (fewer weight vectors than lanes), rows longer than the prefetched weights, output counts
// that leave warps of the last block idle, with and without the attention bias, both RoPE
// layouts, the cache rows written and no others; each row's result independent of the other rows
// of its call (verification steps equal decode steps); and the refusals.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include <mil/kernels/fused_rows.cuh>

#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

template <class T>
constexpr double fused_tolerance() {
  // bf16: the GPU and the CPU may round a few products (and normalised inputs) to neighbouring
  // bf16 values; float: summation order only.
  return std::is_same_v<T, bf16> ? 4e-3 : 2e-5;
}

template <class T>
std::vector<T> host_values(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return test::cast_vector<T>(test::representable<T>(n, seed, lo, hi));
}

// norm_linear_rows and norm_swiglu_rows against the CPU references.
template <class T>
void check_norm_products(int64_t rows, int64_t n, int64_t k, uint64_t seed) {
  INFO(test::type_name<T>(), " rows ", rows, " n ", n, " k ", k);
  const auto x = host_values<T>(size_t(rows * k), seed, -3.f, 3.f);
  const auto g = host_values<T>(size_t(k), seed + 1, 0.5f, 1.5f);
  const auto w = host_values<T>(size_t(2 * n * k), seed + 2, -0.2f, 0.2f);
  std::vector<T> ref(size_t(rows * n)), ref_swiglu(size_t(rows * n));
  cpu::norm_linear_rows(ref.data(), x.data(), g.data(), 1e-5f, w.data(), rows, n, k);
  cpu::norm_swiglu_rows(ref_swiglu.data(), x.data(), g.data(), 1e-5f, w.data(), rows, n, k);
  auto xg = test::to_gpu(x), gg = test::to_gpu(g), wg = test::to_gpu(w);
  auto y = test::poisoned_gpu<T>(ref.size()), m = test::poisoned_gpu<T>(ref.size());
  cuda::norm_linear_rows(y.data(), xg.data(), gg.data(), 1e-5f, wg.data(), rows, n, k,
                         cuda::current_stream());
  cuda::norm_swiglu_rows(m.data(), xg.data(), gg.data(), 1e-5f, wg.data(), rows, n, k,
                         cuda::current_stream());
  test::require_close("norm_linear_rows", y.to_vector(), ref, fused_tolerance<T>());
  test::require_close("norm_swiglu_rows", m.to_vector(), ref_swiglu, fused_tolerance<T>());
}

struct QkvCase {
  int64_t heads, kv_heads, head_dim, k;
  RopeLayout layout;
  bool bias;
};

struct QkvRun {
  std::vector<float> qkv, k_cache, v_cache;
};

template <class T>
struct QkvFixture {
  QkvCase c;
  QkvCacheShape s;
  int64_t rows;
  std::vector<T> x, g, w, b, kc, vc;
  std::vector<int32_t> slots, positions;

  QkvFixture(const QkvCase& cs, const std::vector<int32_t>& sl, const std::vector<int32_t>& pos,
             uint64_t seed)
      : c(cs), rows(int64_t(sl.size())), slots(sl), positions(pos) {
    RopeConfig rope{cs.head_dim};
    rope.layout = cs.layout;
    s = QkvCacheShape{cs.heads, cs.kv_heads, cs.head_dim, rope, 3, 40};
    x = host_values<T>(size_t(rows * cs.k), seed, -3.f, 3.f);
    g = host_values<T>(size_t(cs.k), seed + 1, 0.5f, 1.5f);
    w = host_values<T>(size_t(s.width() * cs.k), seed + 2, -0.2f, 0.2f);
    b = host_values<T>(size_t(s.width()), seed + 3);
    // Caches hold earlier tokens' values: only the rows of this step may change.
    kc = host_values<T>(size_t(s.n_slots * s.max_seq * s.kv_width()), seed + 4);
    vc = host_values<T>(kc.size(), seed + 5);
  }

  QkvRun reference() const {
    std::vector<T> qkv(size_t(rows * s.width())), k = kc, v = vc;
    cpu::norm_qkv_rope_cache_rows(qkv.data(), k.data(), v.data(), x.data(), g.data(), 1e-5f,
                                  w.data(), c.bias ? b.data() : nullptr, slots.data(),
                                  positions.data(), rows, c.k, s);
    return {test::cast_vector<float>(qkv), test::cast_vector<float>(k), test::cast_vector<float>(v)};
  }

  // Rows [first, first + n) on the GPU, into caches that start as kc and vc.
  QkvRun gpu(int64_t first, int64_t n) const {
    auto xg = test::to_gpu(std::vector<T>(x.begin() + first * c.k, x.begin() + (first + n) * c.k));
    auto gg = test::to_gpu(g), wg = test::to_gpu(w), bg = test::to_gpu(b);
    auto k = test::to_gpu(kc), v = test::to_gpu(vc);
    auto sg = test::to_gpu(std::vector<int32_t>(slots.begin() + first, slots.begin() + first + n));
    auto pg = test::to_gpu(
        std::vector<int32_t>(positions.begin() + first, positions.begin() + first + n));
    auto qkv = test::poisoned_gpu<T>(size_t(n * s.width()));
    cuda::norm_qkv_rope_cache_rows(qkv.data(), k.data(), v.data(), xg.data(), gg.data(), 1e-5f,
                                   wg.data(), c.bias ? bg.data() : nullptr, sg.data(), pg.data(),
                                   n, c.k, s, cuda::current_stream());
    return {test::cast_vector<float>(qkv.to_vector()), test::cast_vector<float>(k.to_vector()),
            test::cast_vector<float>(v.to_vector())};
  }
};

template <class T>
void check_qkv(const QkvCase& c, uint64_t seed) {
  const std::vector<int32_t> slots = {2, 0, 1, 1, 0}, positions = {0, 39, 7, 8, 17};
  INFO(test::type_name<T>(), " heads ", c.heads, "/", c.kv_heads, " hd ", c.head_dim, " k ", c.k,
       c.layout == RopeLayout::interleaved ? " interleaved" : " rotate-half",
       c.bias ? " bias" : "");
  const QkvFixture<T> f(c, slots, positions, seed);
  const QkvRun ref = f.reference(), out = f.gpu(0, f.rows);
  test::require_close("qkv", out.qkv, ref.qkv, fused_tolerance<T>());
  // The untouched cache rows are equal bitwise on both sides, so the caches' errors are the new
  // rows' errors; a row written to the wrong place shows as two wrong rows.
  test::require_close("k cache", out.k_cache, ref.k_cache, fused_tolerance<T>());
  test::require_close("v cache", out.v_cache, ref.v_cache, fused_tolerance<T>());
}

}  // namespace

TEST_CASE("fused rows cuda: norm + product and norm + SwiGLU follow the CPU references") {
  MIL_GPU_TEST_GUARD();
  for (int64_t rows : {1, 3, 8}) {
    check_norm_products<bf16>(rows, 576, 576, 100 + uint64_t(rows));   // SmolLM2's in_proj
    check_norm_products<bf16>(rows, 100, 1536, 200 + uint64_t(rows));  // weights past the prefetch
    check_norm_products<float>(rows, 77, 576, 300 + uint64_t(rows));   // idle warps in the last block
  }
  check_norm_products<bf16>(5, 33, 16, 400);   // two weight vectors per row: most lanes idle
  check_norm_products<float>(2, 513, 8, 401);
  // Staged rows past 48 KB (the shared-memory opt-in) and enough columns for 8 warps a block.
  check_norm_products<bf16>(8, 2100, 4096, 402);  // 64 KB of rows
  check_norm_products<float>(5, 300, 4096, 403);  // 80 KB
}

TEST_CASE("fused rows cuda: qkv with bias, RoPE and the cache append follow the CPU reference") {
  MIL_GPU_TEST_GUARD();
  check_qkv<bf16>({9, 3, 64, 576, RopeLayout::rotate_half, false}, 10);  // SmolLM2's attention
  check_qkv<bf16>({4, 2, 32, 128, RopeLayout::interleaved, true}, 11);
  check_qkv<float>({9, 3, 64, 576, RopeLayout::rotate_half, true}, 12);
  check_qkv<float>({2, 1, 16, 64, RopeLayout::interleaved, false}, 13);
}

TEST_CASE("fused rows cuda: a row's results do not depend on the other rows of the call") {
  MIL_GPU_TEST_GUARD();
  // Products: 5 rows at once against each row alone, bitwise.
  const int64_t rows = 5, n = 300, k = 1152;
  const auto x = host_values<bf16>(size_t(rows * k), 7, -3.f, 3.f);
  const auto g = host_values<bf16>(size_t(k), 8, 0.5f, 1.5f);
  const auto w = host_values<bf16>(size_t(2 * n * k), 9, -0.2f, 0.2f);
  auto xg = test::to_gpu(x), gg = test::to_gpu(g), wg = test::to_gpu(w);
  auto all = test::poisoned_gpu<bf16>(size_t(rows * n)), one = test::poisoned_gpu<bf16>(size_t(rows * n));
  auto all_m = test::poisoned_gpu<bf16>(size_t(rows * n)), one_m = test::poisoned_gpu<bf16>(size_t(rows * n));
  const cudaStream_t st = cuda::current_stream();
  cuda::norm_linear_rows(all.data(), xg.data(), gg.data(), 1e-5f, wg.data(), rows, n, k, st);
  cuda::norm_swiglu_rows(all_m.data(), xg.data(), gg.data(), 1e-5f, wg.data(), rows, n, k, st);
  for (int64_t r = 0; r < rows; ++r) {
    cuda::norm_linear_rows(one.data() + r * n, xg.data() + r * k, gg.data(), 1e-5f, wg.data(), 1,
                           n, k, st);
    cuda::norm_swiglu_rows(one_m.data() + r * n, xg.data() + r * k, gg.data(), 1e-5f, wg.data(),
                           1, n, k, st);
  }
  CHECK(test::bytes_of(all.to_vector()) == test::bytes_of(one.to_vector()));
  CHECK(test::bytes_of(all_m.to_vector()) == test::bytes_of(one_m.to_vector()));

  // qkv: rows 0..4 at once against each alone (distinct cache rows, so the caches compare too).
  const QkvFixture<bf16> f({9, 3, 64, 576, RopeLayout::rotate_half, true}, {0, 0, 0, 1, 2},
                           {10, 11, 12, 3, 39}, 14);
  const QkvRun whole = f.gpu(0, f.rows);
  for (int64_t r = 0; r < f.rows; ++r) {
    const QkvRun alone = f.gpu(r, 1);
    const int64_t wd = f.s.width();
    CHECK(std::memcmp(alone.qkv.data(), whole.qkv.data() + r * wd, size_t(wd) * sizeof(float)) == 0);
    const int64_t at = (int64_t(f.slots[size_t(r)]) * f.s.max_seq + f.positions[size_t(r)]) * f.s.kv_width();
    CHECK(std::memcmp(alone.k_cache.data() + at, whole.k_cache.data() + at,
                      size_t(f.s.kv_width()) * sizeof(float)) == 0);
    CHECK(std::memcmp(alone.v_cache.data() + at, whole.v_cache.data() + at,
                      size_t(f.s.kv_width()) * sizeof(float)) == 0);
  }
}

TEST_CASE("fused rows cuda: refuses what the kernel cannot take") {
  MIL_GPU_TEST_GUARD();
  auto buf = test::to_gpu(std::vector<bf16>(9 * 64 * 4, bf16(0.5f)));
  const cudaStream_t st = cuda::current_stream();
  CHECK_FALSE(cuda::fused_rows_fit<bf16>(9, 64, buf.data(), buf.data(), buf.data()));
  CHECK_FALSE(cuda::fused_rows_fit<bf16>(1, 60, buf.data(), buf.data(), buf.data()));
  CHECK_THROWS_WITH_AS(cuda::norm_linear_rows(buf.data(), buf.data(), buf.data(), 1e-5f, buf.data(),
                                              9, 4, 64, st),
                       doctest::Contains("do not fit"), Error);  // 9 rows
  CHECK_THROWS_WITH_AS(cuda::norm_swiglu_rows(buf.data(), buf.data() + 1, buf.data(), 1e-5f,
                                              buf.data(), 1, 4, 64, st),
                       doctest::Contains("16-byte boundaries"), Error);
  CHECK_FALSE(cuda::fused_rows_fit<bf16>(1, 64, buf.data() + 1, buf.data(), buf.data()));
  CHECK(cuda::fused_rows_fit<bf16>(1, 64, buf.data(), buf.data(), buf.data()));
  QkvCacheShape bad{6, 4, 64, RopeConfig{64}, 1, 8};  // 6 heads over 4 KV heads
  CHECK_THROWS_WITH_AS(cuda::norm_qkv_rope_cache_rows<bf16>(buf.data(), buf.data(), buf.data(), buf.data(),
                                                      buf.data(), 1e-5f, buf.data(), nullptr,
                                                      nullptr, nullptr, 1, 64, bad, st),
                       doctest::Contains("heads 6, kv_heads 4"), Error);
}
