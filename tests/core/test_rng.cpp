// Philox-4x32-10 streams: known answers from Random123's kat_vectors, the counter layout, the
// distribution of uniforms and normals, determinism, and independence of seeds and offsets.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>

using namespace mil;

namespace {

struct Moments {
  double mean = 0, var = 0, skew = 0, kurtosis = 0;
};
Moments moments(const std::vector<double>& x) {
  Moments m;
  double n = double(x.size());
  for (double v : x) m.mean += v;
  m.mean /= n;
  double m2 = 0, m3 = 0, m4 = 0;
  for (double v : x) {
    double d = v - m.mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m3 /= n;
  m4 /= n;
  m.var = m2;
  m.skew = m3 / std::pow(m2, 1.5);
  m.kurtosis = m4 / (m2 * m2);
  return m;
}

double correlation(const std::vector<double>& a, const std::vector<double>& b) {
  Moments ma = moments(a), mb = moments(b);
  double c = 0;
  for (size_t i = 0; i < a.size(); ++i) c += (a[i] - ma.mean) * (b[i] - mb.mean);
  return c / double(a.size()) / std::sqrt(ma.var * mb.var);
}

std::vector<double> uniform_stream(uint64_t seed, uint64_t offset, uint64_t first, size_t n) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = rng::uniform(seed, offset, first + i, 0.0f, 1.0f);
  return v;
}

void check_kat(rng::U32x4 counter, uint32_t k0, uint32_t k1, rng::U32x4 expected) {
  rng::U32x4 out = rng::philox4x32(counter, k0, k1);
  for (int j = 0; j < 4; ++j) {
    INFO("word ", j);
    CHECK(out.v[j] == expected.v[j]);
  }
}

}  // namespace

TEST_CASE("rng: Philox-4x32-10 matches the Random123 known-answer vectors") {
  // Random123 tests/kat_vectors, "philox4x32 10": counter (4 words), key (2 words), output.
  check_kat({{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
  check_kat({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
            {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
  check_kat({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
            {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST_CASE("rng: stream layout puts block and offset in the counter and the seed in the key") {
  // The layout fixes which numbers a (seed, offset) stream holds: saved runs depend on it.
  const uint64_t seed = 0x299f31d0a4093822ull, offset = 0x0370734413198a2eull;
  const uint64_t block = 0x85a308d3243f6a88ull;
  rng::U32x4 r = rng::random_block(seed, offset, block);
  CHECK(r.v[0] == 0xd16cfe09u);
  CHECK(r.v[1] == 0x94fdccebu);
  CHECK(r.v[2] == 0x5001e420u);
  CHECK(r.v[3] == 0x24126ea1u);
  // Uniform element 4b + j takes the top 24 bits of word j of block b.
  const uint32_t zero_block[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  for (uint64_t j = 0; j < 4; ++j)
    CHECK(rng::uniform(0, 0, j, 0.0f, 1.0f) == float(zero_block[j] >> 8) / 16777216.0f);
  const uint64_t b = block >> 3;  // 4 * b + 2 must not wrap
  CHECK(rng::uniform(seed, offset, 4 * b + 2, 0.0f, 1.0f) ==
        float(rng::random_block(seed, offset, b).v[2] >> 8) / 16777216.0f);
}

TEST_CASE("rng: to_unit_float uses the top 24 bits and stays below 1") {
  CHECK(rng::to_unit_float(0) == 0.0f);
  CHECK(rng::to_unit_float(0xffu) == 0.0f);
  CHECK(rng::to_unit_float(0x100u) == 0x1p-24f);
  CHECK(rng::to_unit_float(0x80000000u) == 0.5f);
  CHECK(rng::to_unit_float(0xffffffffu) == 1.0f - 0x1p-24f);
}

TEST_CASE("rng: uniform values lie in the half-open range with the uniform moments") {
  const size_t n = 100000;
  const float lo = -2.0f, hi = 3.0f;
  std::vector<double> x(n);
  std::vector<int> bins(50, 0);
  for (size_t i = 0; i < n; ++i) {
    float u = rng::uniform(7, 3, i, lo, hi);
    REQUIRE(u >= lo);
    REQUIRE(u < hi);
    x[i] = u;
    ++bins[size_t((double(u) - lo) / (hi - lo) * double(bins.size()))];
  }
  Moments m = moments(x);
  CHECK(std::fabs(m.mean - 0.5) < 0.02);                                   // sd 0.0046
  CHECK(std::fabs(m.var - 25.0 / 12.0) < 0.03);                            // sd 0.0083
  CHECK(std::fabs(m.skew) < 0.03);
  CHECK(*std::min_element(x.begin(), x.end()) < lo + 1e-3);
  CHECK(*std::max_element(x.begin(), x.end()) > hi - 1e-3);
  // Chi-square over 50 equal bins, 49 degrees of freedom: 99.99% quantile is about 95.
  double expected = double(n) / double(bins.size()), chi2 = 0;
  for (int c : bins) chi2 += (c - expected) * (c - expected) / expected;
  CHECK(chi2 < 95.0);
}

TEST_CASE("rng: normal values have mean 0 and variance 1 and Gaussian tails") {
  const size_t n = 100000;
  std::vector<double> z(n);
  size_t within_one = 0, beyond_three = 0;
  for (size_t i = 0; i < n; ++i) {
    z[i] = rng::normal(11, 0, i);
    REQUIRE(std::isfinite(z[i]));
    REQUIRE(std::fabs(z[i]) <= 5.8);  // |z| <= sqrt(-2 log 2^-24) by construction
    within_one += std::fabs(z[i]) < 1.0;
    beyond_three += std::fabs(z[i]) > 3.0;
  }
  Moments m = moments(z);
  CHECK(std::fabs(m.mean) < 0.015);         // sd 0.0032
  CHECK(std::fabs(m.var - 1.0) < 0.02);     // sd 0.0045
  CHECK(std::fabs(m.skew) < 0.04);          // sd 0.0077
  CHECK(std::fabs(m.kurtosis - 3.0) < 0.1); // sd 0.015
  CHECK(std::fabs(double(within_one) / double(n) - 0.682689) < 0.006);  // sd 0.0015
  CHECK(double(beyond_three) / double(n) > 0.0018);                     // expected 0.0027
  CHECK(double(beyond_three) / double(n) < 0.0036);
}

TEST_CASE("rng: tensor fills equal the streams element by element") {
  auto u = Tensor<float, Cpu>::empty(Shape{37, 3});
  rng::fill_uniform(u, -0.3f, 0.7f, 5, 9);
  for (int64_t i = 0; i < u.numel(); ++i)
    CHECK(u[i] == rng::uniform(5, 9, uint64_t(i), -0.3f, 0.7f));

  auto g = Tensor<float, Cpu>::empty(Shape{101});
  rng::fill_normal(g, 2.0f, 0.5f, 5, 9);
  for (int64_t i = 0; i < g.numel(); ++i)
    CHECK(g[i] == 2.0f + 0.5f * rng::normal(5, 9, uint64_t(i)));

  auto b = Tensor<bf16, Cpu>::empty(Shape{101});
  rng::fill_normal(b, 2.0f, 0.5f, 5, 9);
  for (int64_t i = 0; i < b.numel(); ++i) CHECK(b[i].bits == bf16(g[i]).bits);

  auto d = Tensor<double, Cpu>::empty(Shape{64});
  rng::fill_uniform(d, 0.0f, 1.0f, 5, 9);
  for (int64_t i = 0; i < d.numel(); ++i)
    CHECK(d[i] == double(rng::uniform(5, 9, uint64_t(i), 0, 1)));

  auto empty = Tensor<float, Cpu>::empty(Shape{0});
  rng::fill_uniform(empty, 0.0f, 1.0f, 5);  // no elements, nothing written
  CHECK(empty.numel() == 0);
}

TEST_CASE("rng: streams are deterministic and independent of length and order") {
  auto short_t = Tensor<float, Cpu>::empty(Shape{10});
  auto long_t = Tensor<float, Cpu>::empty(Shape{1000});
  rng::fill_normal(short_t, 0.0f, 1.0f, 77, 4);
  rng::fill_normal(long_t, 0.0f, 1.0f, 77, 4);
  for (int64_t i = 0; i < 10; ++i) CHECK(short_t[i] == long_t[i]);
  // Element i needs no generator state: computing backwards gives the same numbers.
  for (int64_t i = 999; i >= 0; --i) REQUIRE(long_t[i] == rng::normal(77, 4, uint64_t(i)));
  auto again = Tensor<float, Cpu>::empty(Shape{1000});
  rng::fill_normal(again, 0.0f, 1.0f, 77, 4);
  CHECK(again.to_vector() == long_t.to_vector());
  // A slice filled on its own is element 0.. of the stream, not a continuation.
  auto rows = Tensor<float, Cpu>::empty(Shape{4, 5});
  auto tail = rows.slice(2, 4);
  rng::fill_uniform(tail, 0.0f, 1.0f, 77, 4);
  for (int64_t i = 0; i < tail.numel(); ++i)
    CHECK(tail[i] == rng::uniform(77, 4, uint64_t(i), 0, 1));
}

TEST_CASE("rng: different seeds or offsets or far-apart elements give uncorrelated streams") {
  const size_t n = 20000;
  const uint64_t seed = 123456789;
  auto base = uniform_stream(seed, 0, 0, n);
  struct Other {
    const char* what;
    std::vector<double> values;
  };
  const Other others[] = {
      {"offset + 1", uniform_stream(seed, 1, 0, n)},
      {"seed + 1", uniform_stream(seed + 1, 0, 0, n)},
      {"seed + 2^32 (key word 1)", uniform_stream(seed + (uint64_t(1) << 32), 0, 0, n)},
      {"offset 2^32 (counter word 3)", uniform_stream(seed, uint64_t(1) << 32, 0, n)},
      {"element + 2^34 (counter word 1)", uniform_stream(seed, 0, uint64_t(1) << 34, n)},
      {"element + 1 (lag 1 within the stream)", uniform_stream(seed, 0, 1, n)},
  };
  for (const Other& o : others) {
    INFO(o.what);
    size_t equal = 0;
    for (size_t i = 0; i < n; ++i) equal += base[i] == o.values[i];
    CHECK(equal < 10);                                    // 24-bit values: ~0.001 expected
    CHECK(std::fabs(correlation(base, o.values)) < 0.03);  // sd 0.007
  }
}
