// The CPU kernels of the inference path give each row (token) the same bits whether it is computed
// alone, among others, or in chunks of a sequence with the state carried between calls: what
// makes verifying k tokens in one call equal k decode steps. Each case runs the kernel over 13
// rows split into calls as {13}, {1 x 13} and {3, 5, 5}, and compares every output and state bit.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include <mil/kernels/argmax.hpp>
#include <mil/kernels/bias.hpp>
#include <mil/kernels/conv1d.hpp>
#include <mil/kernels/embedding.hpp>
#include <mil/kernels/gated_rmsnorm.hpp>
#include <mil/kernels/kv_attention.hpp>
#include <mil/kernels/repeat_groups.hpp>
#include <mil/kernels/rmsnorm.hpp>
#include <mil/kernels/rope.hpp>
#include <mil/kernels/selective_scan.hpp>
#include <mil/kernels/ssd_scan.hpp>
#include <mil/kernels/swiglu.hpp>

#include "common/random.hpp"

using namespace mil;

namespace {

constexpr int64_t kRows = 13;
using Split = std::vector<int64_t>;  // rows per call, in order

// The bits of a run: outputs and states appended.
struct Bits {
  std::vector<unsigned char> bytes;
  template <class T>
  Bits& add(const std::vector<T>& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    bytes.insert(bytes.end(), p, p + v.size() * sizeof(T));
    return *this;
  }
};

// run(split) executes the kernel call by call (each call gets `first` and `count`) from fresh
// buffers and returns the bits; every split must give the bits of the single call.
template <class Run>
void check_splits(Run run) {
  const Bits whole = run(Split{kRows});
  REQUIRE(!whole.bytes.empty());
  for (const Split& split : {Split(size_t(kRows), 1), Split{3, 5, 5}}) {
    CAPTURE(split.size());
    CHECK(run(split).bytes == whole.bytes);
  }
}

// Calls f(first, count) for each call of the split.
template <class F>
void for_calls(const Split& split, F f) {
  int64_t first = 0;
  for (int64_t count : split) {
    f(first, count);
    first += count;
  }
}

std::vector<float> rand(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return test::random_vector<float>(size_t(n), seed, lo, hi);
}

}  // namespace

TEST_CASE("row invariance: rmsnorm_forward") {
  const int64_t dim = 577;  // odd: the 8-lane sum of squares has a tail
  const auto x = rand(kRows * dim, 1), w = rand(dim, 2);
  check_splits([&](const Split& split) {
    std::vector<float> out(size_t(kRows * dim)), rstd(static_cast<size_t>(kRows));
    for_calls(split, [&](int64_t first, int64_t count) {
      cpu::rmsnorm_forward(out.data() + first * dim, rstd.data() + first, x.data() + first * dim,
                           w.data(), count, dim, 1e-5f);
    });
    return Bits{}.add(out).add(rstd);
  });
}

TEST_CASE("row invariance: rope_apply") {
  const int64_t heads = 3, hd = 64, stride = heads * hd + 5;
  const auto in = rand(kRows * stride, 3);
  std::vector<int32_t> positions(static_cast<size_t>(kRows));
  for (int64_t t = 0; t < kRows; ++t) positions[size_t(t)] = int32_t(37 * t % 1000);
  for (auto layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    const RopeConfig cfg{hd, 10000.f, layout};
    check_splits([&](const Split& split) {
      std::vector<float> out = in;  // in place, as the decoder does
      for_calls(split, [&](int64_t first, int64_t count) {
        cpu::rope_apply(out.data() + first * stride, out.data() + first * stride,
                        positions.data() + first, count, heads, stride, cfg, false);
      });
      return Bits{}.add(out);
    });
  }
}

TEST_CASE("row invariance: swiglu_forward, bias_add, embedding_forward, argmax_rows") {
  const int64_t hidden = 1537, vocab = 50;
  const auto gate_up = rand(kRows * 2 * hidden, 4, -6.f, 6.f), bias = rand(hidden, 5);
  const auto table = rand(vocab * hidden, 6);
  std::vector<int32_t> ids(static_cast<size_t>(kRows));
  for (int64_t t = 0; t < kRows; ++t) ids[size_t(t)] = int32_t(11 * t % vocab);
  check_splits([&](const Split& split) {
    std::vector<float> act(size_t(kRows * hidden)), emb(size_t(kRows * hidden));
    std::vector<int32_t> best(static_cast<size_t>(kRows));
    for_calls(split, [&](int64_t first, int64_t count) {
      cpu::swiglu_forward(act.data() + first * hidden, gate_up.data() + first * 2 * hidden,
                          gate_up.data() + first * 2 * hidden + hidden, count, hidden, 2 * hidden);
      cpu::bias_add(act.data() + first * hidden, bias.data(), count, hidden);
      cpu::argmax_rows(best.data() + first, act.data() + first * hidden, count, hidden);
      cpu::embedding_forward(emb.data() + first * hidden, table.data(), ids.data() + first, count,
                             hidden, vocab);
    });
    return Bits{}.add(act).add(best).add(emb);
  });
}

TEST_CASE("row invariance: repeat_groups_forward and gated_rmsnorm_forward") {
  const int64_t groups = 3, group_size = 48, dim = groups * group_size, z_stride = dim + 7;
  const auto x = rand(kRows * dim, 7), z = rand(kRows * z_stride, 8, -4.f, 4.f), w = rand(dim, 9);
  check_splits([&](const Split& split) {
    std::vector<float> repeated(size_t(kRows * dim * 2)), out(size_t(kRows * dim));
    std::vector<float> rstd(size_t(kRows * groups));
    for_calls(split, [&](int64_t first, int64_t count) {
      cpu::repeat_groups_forward(repeated.data() + first * dim * 2, x.data() + first * dim,
                                 RepeatGroupsShape{count, groups, group_size, 2});
      cpu::gated_rmsnorm_forward(out.data() + first * dim, rstd.data() + first * groups,
                                 x.data() + first * dim, z.data() + first * z_stride, w.data(),
                                 GatedNormShape{count, dim, group_size, z_stride});
    });
    return Bits{}.add(repeated).add(out).add(rstd);
  });
}

TEST_CASE("row invariance: kv_cache_append + attention_kv_cache, two sequences") {
  // Rows alternate between slots 0 and 1; each slot's positions count up from 0.
  KvAttentionShape s;
  s.heads = 6, s.kv_heads = 2, s.head_dim = 64, s.slots = 2, s.max_seq = 16;
  s.q_stride = (s.heads + 2 * s.kv_heads) * s.head_dim;  // fused q, k, v rows
  s.scale = 0.125f;
  const int64_t kvw = s.kv_width();
  const auto qkv = rand(kRows * s.q_stride, 10, -2.f, 2.f);
  std::vector<int32_t> slots(static_cast<size_t>(kRows)), positions(static_cast<size_t>(kRows));
  for (int64_t r = 0; r < kRows; ++r) slots[size_t(r)] = int32_t(r % 2), positions[size_t(r)] = int32_t(r / 2);
  check_splits([&](const Split& split) {
    std::vector<float> k_cache(size_t(s.slots * s.max_seq * kvw)), v_cache = k_cache;
    std::vector<float> out(size_t(kRows * s.heads * s.head_dim));
    for_calls(split, [&](int64_t first, int64_t count) {
      const float* row = qkv.data() + first * s.q_stride;
      const int32_t *sl = slots.data() + first, *pos = positions.data() + first;
      cpu::kv_cache_append(k_cache.data(), v_cache.data(), row + s.heads * s.head_dim,
                           row + s.heads * s.head_dim + kvw, s.q_stride, sl, pos, count, kvw,
                           s.slots, s.max_seq);
      KvAttentionShape call = s;
      call.rows = count;
      cpu::attention_kv_cache(out.data() + first * s.heads * s.head_dim, row, k_cache.data(),
                              v_cache.data(), sl, pos, call);
    });
    return Bits{}.add(out).add(k_cache).add(v_cache);
  });
}

TEST_CASE("row invariance: conv1d_forward with a ring carries a sequence across calls") {
  const int64_t channels = 40, kernel = 4, x_stride = 50;
  const auto x = rand(kRows * x_stride, 11), w = rand(channels * kernel, 12), bias = rand(channels, 13);
  const int32_t slot = 1;
  for (int64_t len : {kernel - 1, int64_t(6)}) {
    CAPTURE(len);
    check_splits([&](const Split& split) {
      std::vector<float> y(size_t(kRows * channels)), ring(size_t(2 * len * channels));
      for_calls(split, [&](int64_t first, int64_t count) {
        const int32_t position = int32_t(first);
        Conv1dShape s{1, count, channels, kernel, x_stride};
        cpu::conv1d_forward(y.data() + first * channels, x.data() + first * x_stride, w.data(),
                            bias.data(), s, Conv1dRing<float>{ring.data(), len, 2, &slot, &position});
      });
      return Bits{}.add(y).add(ring);
    });
  }
}

TEST_CASE("row invariance: ssd_scan_forward with states carries a sequence across calls") {
  SsdShape s;
  s.heads = 4, s.groups = 2, s.head_dim = 8, s.d_state = 16;
  const auto x = rand(kRows * s.xs(), 14), B = rand(kRows * s.bs(), 15), C = rand(kRows * s.cs(), 16);
  const auto dt = rand(kRows * s.dts(), 17, -3.f, 1.f), dt_bias = rand(s.heads, 18);
  const auto A_log = rand(s.heads, 19, -1.f, 1.f), D = rand(s.heads, 20);
  const int32_t slot = 0;
  check_splits([&](const Split& split) {
    std::vector<float> y(size_t(kRows * s.ys())), states = rand(s.state_size(), 21);
    for_calls(split, [&](int64_t first, int64_t count) {
      SsdShape call = s;
      call.seq = count;
      cpu::ssd_scan_forward(y.data() + first * s.ys(), x.data() + first * s.xs(),
                            B.data() + first * s.bs(), C.data() + first * s.cs(),
                            dt.data() + first * s.dts(), dt_bias.data(), A_log.data(), D.data(),
                            call, SsdStates{states.data(), 1, &slot});
    });
    return Bits{}.add(y).add(states);
  });
}

TEST_CASE("row invariance: selective_scan_forward with states carries a sequence across calls") {
  SelectiveScanShape s;
  s.channels = 32, s.d_state = 16, s.b_groups = 1, s.c_groups = 2;
  const auto u = rand(kRows * s.us(), 22), delta = rand(kRows * s.ds(), 23, -3.f, 1.f);
  const auto B = rand(kRows * s.bs(), 24), C = rand(kRows * s.cs(), 25), z = rand(kRows * s.zs(), 26);
  const auto delta_bias = rand(s.channels, 27), A_log = rand(s.channels * s.d_state, 28);
  const auto D = rand(s.channels, 29);
  const int32_t slot = 0;
  check_splits([&](const Split& split) {
    std::vector<float> y(size_t(kRows * s.ys())), states = rand(s.state_size(), 30);
    for_calls(split, [&](int64_t first, int64_t count) {
      SelectiveScanShape call = s;
      call.seq = count;
      cpu::selective_scan_forward(y.data() + first * s.ys(), u.data() + first * s.us(),
                                  delta.data() + first * s.ds(), delta_bias.data(), A_log.data(),
                                  B.data() + first * s.bs(), C.data() + first * s.cs(), D.data(),
                                  z.data() + first * s.zs(), call,
                                  SelectiveStates{states.data(), 1, &slot});
    });
    return Bits{}.add(y).add(states);
  });
}
