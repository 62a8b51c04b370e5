// Attention against the KV cache on the GPU against the CPU reference: float and bf16, head_dim 64
// and 128, GQA groups 1 to 8, rows at different positions in different slots (decode) and a run of
// consecutive positions (prefill continuing a sequence). Also the cache append, the row bias and
// the row argmax.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/argmax.cuh>
#include <mil/kernels/bias.cuh>
#include <mil/kernels/kv_attention.cuh>

#include "common/gpu.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

template <class T>
void check_kv_attention(int64_t heads, int64_t kv_heads, int64_t hd,
                        const std::vector<int32_t>& slots, const std::vector<int32_t>& pos,
                        uint64_t seed) {
  const int64_t n_slots = 3, max_seq = 300, rows = int64_t(slots.size());
  const int64_t q_stride = (heads + 2 * kv_heads) * hd + 8;  // rows with a gap, as in fused QKV
  const int64_t kvw = kv_heads * hd, cache = n_slots * max_seq * kvw;
  const auto q = test::representable<T>(size_t(rows * q_stride), seed, -2.f, 2.f);
  const auto k = test::representable<T>(size_t(cache), seed + 1, -2.f, 2.f);
  const auto v = test::representable<T>(size_t(cache), seed + 2);
  KvAttentionShape s{rows, heads, kv_heads, hd, q_stride, n_slots, max_seq,
                     float(1.0 / std::sqrt(double(hd)))};
  std::vector<float> ref(size_t(rows * heads * hd));
  cpu::attention_kv_cache_reference(ref.data(), q.data(), k.data(), v.data(), slots.data(), pos.data(), s);
  auto qg = test::to_gpu(test::cast_vector<T>(q)), kg = test::to_gpu(test::cast_vector<T>(k));
  auto vg = test::to_gpu(test::cast_vector<T>(v));
  auto sg = test::to_gpu(slots), pg = test::to_gpu(pos);
  auto out = test::poisoned_gpu<T>(ref.size());
  const int64_t ws = mil::cuda::kv_attention_workspace(s), nc = mil::cuda::kv_attention_counters(s);
  auto workspace = test::poisoned_gpu<float>(size_t(std::max<int64_t>(ws, 1)));
  auto counters = test::to_gpu(std::vector<int32_t>(size_t(std::max<int64_t>(nc, 1)), 0));
  const KvWorkspace space{ws ? workspace.data() : nullptr, nc ? counters.data() : nullptr};
  mil::cuda::attention_kv_cache<T>(out.data(), qg.data(), kg.data(), vg.data(), sg.data(),
                                   pg.data(), s, space, mil::cuda::current_stream());
  INFO("kv attention ", std::is_same_v<T, float> ? "f32" : "bf16", " heads ", heads, "/",
       kv_heads, " hd ", hd, " rows ", rows, " splits ", mil::cuda::kv_attention_splits(s));
  const auto first = out.to_vector();
  test::require_close("cuda kv attention", first, ref, std::is_same_v<T, float> ? 1e-5 : 1e-2);
  // The last split of each (row, KV head) merged and reset its counter: a second call (as the
  // next layer's) merges again, in the same order.
  CHECK(counters.to_vector() == std::vector<int32_t>(counters.numel(), 0));
  auto again = test::poisoned_gpu<T>(ref.size());
  mil::cuda::attention_kv_cache<T>(again.data(), qg.data(), kg.data(), vg.data(), sg.data(),
                                   pg.data(), s, space, mil::cuda::current_stream());
  CHECK(test::bytes_of(again.to_vector()) == test::bytes_of(first));
}

}  // namespace

TEST_CASE("kv attention cuda: decode rows in different slots at different lengths") {
  MIL_GPU_TEST_GUARD();
  const std::vector<int32_t> slots = {2, 0, 1, 1};  // slot 1 twice: two queries of one slot
  const std::vector<int32_t> pos = {0, 7, 299, 130};
  for (auto [h, hkv] : {std::pair{9, 3}, {4, 4}, {32, 8}, {8, 1}}) {
    check_kv_attention<float>(h, hkv, 64, slots, pos, 10 + h);
    check_kv_attention<bf16>(h, hkv, 64, slots, pos, 20 + h);
    check_kv_attention<bf16>(h, hkv, 128, slots, pos, 30 + h);
  }
  check_kv_attention<float>(6, 2, 128, slots, pos, 40);
}

TEST_CASE("kv attention cuda: a prefill chunk continuing a sequence") {
  MIL_GPU_TEST_GUARD();
  std::vector<int32_t> slots, pos;
  for (int32_t t = 0; t < 77; ++t) {
    slots.push_back(1);
    pos.push_back(150 + t);
  }
  check_kv_attention<bf16>(9, 3, 64, slots, pos, 50);
  check_kv_attention<float>(9, 3, 64, slots, pos, 51);
  check_kv_attention<bf16>(32, 8, 128, slots, pos, 52);  // 616 blocks: no split, no workspace
  KvAttentionShape bad{1, 6, 2, 96, 6 * 96, 1, 4, 1.f};
  CHECK_THROWS_WITH_AS(mil::cuda::attention_kv_cache<bf16>(nullptr, nullptr, nullptr, nullptr,
                                                           nullptr, nullptr, bad, {},
                                                           mil::cuda::current_stream()),
                       doctest::Contains("head_dim 96"), Error);
  KvAttentionShape split{1, 6, 2, 64, 6 * 64, 1, 100, 1.f};  // split keys: needs counters too
  float partials = 0.f;
  CHECK_THROWS_WITH_AS(mil::cuda::attention_kv_cache<bf16>(nullptr, nullptr, nullptr, nullptr,
                                                           nullptr, nullptr, split,
                                                           KvWorkspace{&partials, nullptr},
                                                           mil::cuda::current_stream()),
                       doctest::Contains("counters"), Error);
}

TEST_CASE("kv attention cuda: up to 8 rows, a row's result does not depend on the others") {
  MIL_GPU_TEST_GUARD();
  // A verification step's rows (slot 0 at consecutive positions) and a decode row of another
  // slot, against each row alone: the same splits, the same merge order, the same bits.
  const int64_t heads = 9, kv_heads = 3, hd = 64, n_slots = 2, max_seq = 1100;
  const std::vector<int32_t> slots = {0, 0, 0, 0, 0, 1}, pos = {1000, 1001, 1002, 1003, 1004, 17};
  const int64_t rows = int64_t(slots.size()), q_stride = (heads + 2 * kv_heads) * hd;
  const int64_t kvw = kv_heads * hd, cache = n_slots * max_seq * kvw;
  auto q = test::to_gpu(test::cast_vector<bf16>(test::representable<bf16>(size_t(rows * q_stride), 3, -2.f, 2.f)));
  auto k = test::to_gpu(test::cast_vector<bf16>(test::representable<bf16>(size_t(cache), 4, -2.f, 2.f)));
  auto v = test::to_gpu(test::cast_vector<bf16>(test::representable<bf16>(size_t(cache), 5)));
  auto sg = test::to_gpu(slots), pg = test::to_gpu(pos);
  const float scale = float(1.0 / std::sqrt(double(hd)));
  auto run = [&](int64_t first, int64_t n) {
    const KvAttentionShape s{n, heads, kv_heads, hd, q_stride, n_slots, max_seq, scale};
    auto ws = test::poisoned_gpu<float>(size_t(std::max<int64_t>(mil::cuda::kv_attention_workspace(s), 1)));
    auto nc = test::to_gpu(std::vector<int32_t>(size_t(std::max<int64_t>(mil::cuda::kv_attention_counters(s), 1)), 0));
    auto out = test::poisoned_gpu<bf16>(size_t(n * heads * hd));
    mil::cuda::attention_kv_cache<bf16>(out.data(), q.data() + first * q_stride, k.data(), v.data(),
                                        sg.data() + first, pg.data() + first, s,
                                        KvWorkspace{ws.data(), nc.data()}, mil::cuda::current_stream());
    return out.to_vector();
  };
  CHECK(mil::cuda::kv_attention_splits({rows, heads, kv_heads, hd, q_stride, n_slots, max_seq, scale}) ==
        mil::cuda::kv_attention_splits({1, heads, kv_heads, hd, q_stride, n_slots, max_seq, scale}));
  const auto all = run(0, rows);
  for (int64_t r = 0; r < rows; ++r) {
    const auto one = run(r, 1);
    INFO("row ", r);
    CHECK(test::bytes_of(one) ==
          test::bytes_of(std::vector<bf16>(all.begin() + r * heads * hd, all.begin() + (r + 1) * heads * hd)));
  }
}

TEST_CASE("kv cache append cuda: rows land at their slot and position") {
  MIL_GPU_TEST_GUARD();
  const int64_t kvw = 40, stride = 130, n_slots = 2, max_seq = 5;
  const auto k = test::random_vector<float>(size_t(3 * stride), 1);
  const auto v = test::random_vector<float>(size_t(3 * stride), 2);
  const std::vector<int32_t> slots = {1, 0, 1}, pos = {4, 0, 2};
  std::vector<float> kc(size_t(n_slots * max_seq * kvw), 0.5f), vc = kc;
  cpu::kv_cache_append(kc.data(), vc.data(), k.data(), v.data(), stride, slots.data(), pos.data(),
                       3, kvw, n_slots, max_seq);
  auto kg = test::to_gpu(std::vector<float>(kc.size(), 0.5f));
  auto vg = test::to_gpu(std::vector<float>(kc.size(), 0.5f));
  auto ks = test::to_gpu(k), vs = test::to_gpu(v);
  auto sg = test::to_gpu(slots), pg = test::to_gpu(pos);
  mil::cuda::kv_cache_append<float>(kg.data(), vg.data(), ks.data(), vs.data(), stride, sg.data(),
                                    pg.data(), 3, kvw, n_slots, max_seq,
                                    mil::cuda::current_stream());
  CHECK(test::bytes_of(kg.to_vector()) == test::bytes_of(kc));
  CHECK(test::bytes_of(vg.to_vector()) == test::bytes_of(vc));
}

TEST_CASE("bias cuda: forward bitwise and column sums against the CPU") {
  MIL_GPU_TEST_GUARD();
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {37, 1728}, {1000, 33}}) {
    const auto y = test::cast_vector<bf16>(test::random_vector<float>(size_t(rows * cols), 3));
    const auto b = test::cast_vector<bf16>(test::random_vector<float>(size_t(cols), 4));
    auto ref = y;
    cpu::bias_add(ref.data(), b.data(), rows, cols);
    auto yg = test::to_gpu(y), bg = test::to_gpu(b);
    mil::cuda::bias_add<bf16>(yg.data(), bg.data(), rows, cols, mil::cuda::current_stream());
    CHECK(test::bytes_of(yg.to_vector()) == test::bytes_of(ref));
    const auto dy = test::random_vector<float>(size_t(rows * cols), 5);
    std::vector<float> db(size_t(cols), 1.f);
    cpu::bias_backward(db.data(), dy.data(), rows, cols, true);
    auto dyg = test::to_gpu(dy);
    auto dbg = test::to_gpu(std::vector<float>(size_t(cols), 1.f));
    mil::cuda::bias_backward<float>(dbg.data(), dyg.data(), rows, cols, true,
                                    mil::cuda::current_stream());
    test::require_close("cuda bias db", dbg.to_vector(), db, 1e-5);
  }
}

TEST_CASE("argmax cuda: equals the CPU on ties NaN and wide rows") {
  MIL_GPU_TEST_GUARD();
  const int64_t rows = 5, cols = 49152;
  auto x = test::cast_vector<bf16>(test::random_vector<float>(size_t(rows * cols), 9, -4.f, 4.f));
  x[1 * cols + 40000] = bf16(9.f);  // ties: the smaller index wins
  x[1 * cols + 7] = bf16(9.f);
  for (int64_t c = 0; c < cols; ++c) x[2 * cols + c] = bf16(NAN);
  x[3 * cols + 100] = bf16(NAN);
  x[3 * cols + 49151] = bf16(20.f);
  std::vector<int32_t> ref(static_cast<size_t>(rows));
  cpu::argmax_rows(ref.data(), x.data(), rows, cols);
  auto xg = test::to_gpu(x);
  auto out = test::to_gpu(std::vector<int32_t>(size_t(rows), -1));
  mil::cuda::argmax_rows<bf16>(out.data(), xg.data(), rows, cols, mil::cuda::current_stream());
  CHECK(out.to_vector() == ref);
  CHECK(ref[1] == 7);
  CHECK(ref[2] == 0);
  CHECK(ref[3] == 49151);
}
