// cpu::attention_kv_cache's fast float path (threads over heads and rows, vectorised dot products
// and value sums) against the plain-loop reference computed in double on the same inputs, and the
// bits of its result against the thread count.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include <mil/kernels/kv_attention.hpp>

#include "common/compare.hpp"
#include "common/random.hpp"
#include "common/threads_scope.hpp"

using namespace mil;

namespace {

struct Case {
  KvAttentionShape shape;
  std::vector<float> q, k, v;
  std::vector<int32_t> slots, positions;
};

// rows query rows over 2 slots: slot 1 holds a long sequence (rows at its last positions, as a
// prompt chunk continuing a conversation), slot 0 a short one (a decode row at position 2).
Case make_case(int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t rows, int64_t max_seq,
               uint32_t seed) {
  Case c;
  c.shape.rows = rows, c.shape.heads = heads, c.shape.kv_heads = kv_heads;
  c.shape.head_dim = head_dim, c.shape.q_stride = heads * head_dim + 3;  // rows not packed
  c.shape.slots = 2, c.shape.max_seq = max_seq, c.shape.scale = 0.3f;
  const int64_t cache = 2 * max_seq * c.shape.kv_width();
  c.q = test::random_vector<float>(size_t(rows * c.shape.q_stride), seed, -2.f, 2.f);
  c.k = test::random_vector<float>(size_t(cache), seed + 1, -2.f, 2.f);
  c.v = test::random_vector<float>(size_t(cache), seed + 2, -1.f, 1.f);
  for (int64_t r = 0; r < rows; ++r) {
    const bool short_row = r == rows / 2;
    c.slots.push_back(short_row ? 0 : 1);
    c.positions.push_back(int32_t(short_row ? 2 : max_seq - rows + r));
  }
  return c;
}

std::vector<float> fast(const Case& c) {
  std::vector<float> out(size_t(c.shape.rows * c.shape.heads * c.shape.head_dim), test::poison<float>());
  cpu::attention_kv_cache(out.data(), c.q.data(), c.k.data(), c.v.data(), c.slots.data(),
                          c.positions.data(), c.shape);
  return out;
}

std::vector<double> reference(const Case& c) {
  const std::vector<double> q(c.q.begin(), c.q.end()), k(c.k.begin(), c.k.end()),
      v(c.v.begin(), c.v.end());
  std::vector<double> out(size_t(c.shape.rows * c.shape.heads * c.shape.head_dim));
  cpu::attention_kv_cache_reference(out.data(), q.data(), k.data(), v.data(), c.slots.data(),
                                    c.positions.data(), c.shape);
  return out;
}

}  // namespace

// Catches a wrong key or value head for a query head under GQA (g = h / group), keys or values
// read at a stride of head_dim instead of the cache row's kv_width (kv_heads > 1), a dot product
// that drops the head_dim tail past a multiple of 16 (head_dim 20 and 3), the scale applied twice
// or not at all, a row reading another slot's cache or too few or too many positions, and outputs
// left unwritten (poisoned start). Float accumulation over up to 300 keys: 1e-5 normalised.
TEST_CASE("attention_kv_cache (float): the fast path equals the reference in double") {
  struct Shape {
    int64_t heads, kv_heads, head_dim, rows, max_seq;
  };
  uint32_t seed = 10;
  for (Shape sh : {Shape{9, 3, 64, 5, 300}, Shape{8, 2, 128, 5, 300}, Shape{6, 2, 20, 4, 40},
                   Shape{4, 4, 3, 3, 17}, Shape{2, 1, 128, 1, 64}}) {
    CAPTURE(sh.heads);
    CAPTURE(sh.head_dim);
    const Case c = make_case(sh.heads, sh.kv_heads, sh.head_dim, sh.rows, sh.max_seq, seed += 3);
    test::require_close("attention_kv_cache", fast(c), reference(c), 1e-5);
  }
}

// Catches threads sharing a score or value buffer, or a split of one head's keys whose partial
// sums join in a schedule-dependent order: the bits must not change with the thread count.
TEST_CASE("attention_kv_cache (float): bits do not depend on the thread count") {
  for (int64_t head_dim : {64, 128, 20}) {  // both AVX2 forms and the portable loops
    const Case c = make_case(9, 3, head_dim, 7, 200, 50);
    std::vector<float> one;
    {
      test::ThreadsScope t(1);
      one = fast(c);
    }
    for (int n : {2, 3}) {
      test::ThreadsScope t(n);
      const std::vector<float> many = fast(c);
      CAPTURE(head_dim);
      CAPTURE(n);
      CHECK(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)) == 0);
    }
  }
}
