// CPU reference of RoPE: frequencies, known rotations, layouts, inverse, gradients, strides.
#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include <mil/kernels/rope.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {

std::vector<int32_t> random_positions(int64_t n, uint64_t seed, int32_t max_pos) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    p[size_t(i)] = int32_t(rng::uniform(seed, 0, uint64_t(i), 0.f, float(max_pos)));
  return p;
}

RopeConfig llama31_config(RopeLayout layout = RopeLayout::rotate_half) {
  RopeConfig c{128};
  c.theta = 500000.f;
  c.layout = layout;
  c.llama3_scaling = true;  // factor 8, low 1, high 4, original 8192: Llama-3.1's values
  return c;
}

}  // namespace

TEST_CASE("rope: inverse frequencies are theta^(-2i/head_dim)") {
  RopeConfig cfg{8};
  auto inv = rope_inv_freq(cfg);
  REQUIRE(inv.size() == 4);
  const double expect[4] = {1.0, 0.1, 0.01, 0.001};  // 10000^(-i/4)
  for (int i = 0; i < 4; ++i) CHECK(inv[size_t(i)] == doctest::Approx(expect[i]).epsilon(1e-6));
}

TEST_CASE(
    "rope: llama3 scaling keeps high frequencies, divides low ones by factor, blends between") {
  RopeConfig plain = llama31_config();
  plain.llama3_scaling = false;
  auto base = rope_inv_freq(plain), scaled = rope_inv_freq(llama31_config());
  REQUIRE(base.size() == 64);
  int high = 0, low = 0, medium = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    CAPTURE(i);
    double wavelen = 2 * std::numbers::pi / base[i];
    if (wavelen < 8192.0 / 4 - 1) {
      CHECK(scaled[i] == base[i]);
      ++high;
    } else if (wavelen > 8192.0 + 1) {
      CHECK(scaled[i] == base[i] / 8.f);  // division by a power of two is exact
      ++low;
    } else if (wavelen > 8192.0 / 4 + 1 && wavelen < 8192.0 - 1) {
      CHECK(scaled[i] > base[i] / 8.f);
      CHECK(scaled[i] < base[i]);
      // smooth = (8192 / wavelen - 1) / 3 blends inv/8 (smooth 0) and inv (smooth 1)
      double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      CHECK(scaled[i] ==
            doctest::Approx((1 - smooth) * base[i] / 8 + smooth * base[i]).epsilon(1e-5));
      ++medium;
    }
  }
  CHECK(high > 0);
  CHECK(low > 0);
  CHECK(medium > 0);
}

TEST_CASE("rope: position 0 is the identity in both layouts") {
  for (RopeLayout layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    RopeConfig cfg{16};
    cfg.layout = layout;
    const int64_t tokens = 3, heads = 2;
    auto in = random_vector<float>(tokens * heads * 16, 21);
    std::vector<float> out(in.size());
    std::vector<int32_t> pos(tokens, 0);
    cpu::rope_apply(out.data(), in.data(), pos.data(), tokens, heads, heads * 16, cfg, false);
    CHECK(out == in);
  }
}

TEST_CASE("rope: a pair rotates by position x inv_freq") {
  // head_dim 4: pair 0 has inv_freq 1, pair 1 has inv_freq 1/100.
  const int32_t p = 3;
  for (RopeLayout layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    RopeConfig cfg{4};
    cfg.layout = layout;
    const bool inter = layout == RopeLayout::interleaved;
    // unit vector in the first element of pair 0 and of pair 1
    std::vector<double> in(4, 0.0), out(4);
    in[0] = 1.0;
    in[inter ? 2 : 1] = 2.0;
    cpu::rope_apply(out.data(), in.data(), &p, 1, 1, 4, cfg, false);
    const int a0 = 0, b0 = inter ? 1 : 2, a1 = inter ? 2 : 1, b1 = 3;
    CHECK(out[a0] == doctest::Approx(std::cos(3.0)).epsilon(1e-12));
    CHECK(out[b0] == doctest::Approx(std::sin(3.0)).epsilon(1e-12));
    const double angle1 = double(3.f * rope_inv_freq(cfg)[1]);
    CHECK(out[a1] == doctest::Approx(2 * std::cos(angle1)).epsilon(1e-12));
    CHECK(out[b1] == doctest::Approx(2 * std::sin(angle1)).epsilon(1e-12));
    // the inverse rotates by -angle
    cpu::rope_apply(out.data(), in.data(), &p, 1, 1, 4, cfg, true);
    CHECK(out[a0] == doctest::Approx(std::cos(3.0)).epsilon(1e-12));
    CHECK(out[b0] == doctest::Approx(-std::sin(3.0)).epsilon(1e-12));
  }
}

TEST_CASE("rope: the inverse rotation gives back the input - positions up to 100000") {
  for (bool scaled : {false, true}) {
    RopeConfig cfg = llama31_config(scaled ? RopeLayout::interleaved : RopeLayout::rotate_half);
    cfg.llama3_scaling = scaled;
    const int64_t tokens = 7, heads = 3, hd = cfg.head_dim;
    auto in = random_vector<float>(tokens * heads * hd, 31);
    auto pos = random_positions(tokens, 32, 100000);
    std::vector<float> rotated(in.size()), back(in.size());
    cpu::rope_apply(rotated.data(), in.data(), pos.data(), tokens, heads, heads * hd, cfg, false);
    cpu::rope_apply(back.data(), rotated.data(), pos.data(), tokens, heads, heads * hd, cfg, true);
    test::require_close("rope inverse(apply(x))", back, in, 1e-6);
    // a rotation keeps the norm of every pair, so of the whole vector
    double n_in = 0, n_rot = 0;
    for (size_t i = 0; i < in.size(); ++i) n_in += in[i] * in[i], n_rot += rotated[i] * rotated[i];
    CHECK(n_rot == doctest::Approx(n_in).epsilon(1e-5));
  }
}

TEST_CASE("rope: rotate_half and interleaved differ by a permutation of the head dims") {
  const int64_t tokens = 5, heads = 2, hd = 12, half = hd / 2;
  RopeConfig rh{hd}, il{hd};
  il.layout = RopeLayout::interleaved;
  auto x = random_vector<double>(tokens * heads * hd, 41);
  auto pos = random_positions(tokens, 42, 5000);
  // interleaved slot 2i holds rotate_half slot i, slot 2i+1 holds slot i + half
  auto to_interleaved = [&](const std::vector<double>& v) {
    std::vector<double> r(v.size());
    for (int64_t th = 0; th < tokens * heads; ++th)
      for (int64_t i = 0; i < half; ++i) {
        r[size_t(th * hd + 2 * i)] = v[size_t(th * hd + i)];
        r[size_t(th * hd + 2 * i + 1)] = v[size_t(th * hd + i + half)];
      }
    return r;
  };
  std::vector<double> out_rh(x.size()), out_il(x.size());
  cpu::rope_apply(out_rh.data(), x.data(), pos.data(), tokens, heads, heads * hd, rh, false);
  auto x_il = to_interleaved(x);
  cpu::rope_apply(out_il.data(), x_il.data(), pos.data(), tokens, heads, heads * hd, il, false);
  CHECK(out_il == to_interleaved(out_rh));  // same arithmetic on the same numbers: exact
}

TEST_CASE("rope: gradient check of the input in double - backward is inverse = true") {
  for (RopeLayout layout : {RopeLayout::rotate_half, RopeLayout::interleaved}) {
    CAPTURE(int(layout));
    RopeConfig cfg{8};
    cfg.layout = layout;
    cfg.llama3_scaling = true;
    cfg.original_max_positions = 64.f;  // so that hd 8 has all three frequency bands
    const int64_t tokens = 3, heads = 2, stride = heads * 8 + 3;
    auto in = random_vector<double>(tokens * stride, 51);
    auto g = random_vector<double>(tokens * stride, 52);
    std::vector<int32_t> pos{0, 17, 4099};
    std::vector<double> din(in.size(), 0.0);
    cpu::rope_apply(din.data(), g.data(), pos.data(), tokens, heads, stride, cfg, true);
    // the elements between tokens are not part of the op: their gradient is 0, like their output
    auto forward = [&] {
      std::vector<double> o(in.size(), 0.0);
      cpu::rope_apply(o.data(), in.data(), pos.data(), tokens, heads, stride, cfg, false);
      return o;
    };
    test::check_gradients("rope", {{"in", &in, &din}}, forward, g);
  }
}

TEST_CASE("rope: strided tokens rotate in place - leaving the gap untouched") {
  RopeConfig cfg{10};
  cfg.theta = 1000.f;
  const int64_t tokens = 4, heads = 3, stride = heads * 10 + 7;  // e.g. q inside a fused buffer
  auto buf = random_vector<float>(tokens * stride, 61);
  auto pos = random_positions(tokens, 62, 300);
  std::vector<float> out(buf.size(), -5.f);
  cpu::rope_apply(out.data(), buf.data(), pos.data(), tokens, heads, stride, cfg, false);
  std::vector<float> inplace = buf;
  cpu::rope_apply(inplace.data(), inplace.data(), pos.data(), tokens, heads, stride, cfg, false);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < stride; ++j) {
      size_t k = size_t(t * stride + j);
      if (j < heads * 10) {
        CHECK(inplace[k] == out[k]);
      } else {
        CHECK(inplace[k] == buf[k]);  // gap untouched in place
        CHECK(out[k] == -5.f);        // and not written out of place
      }
    }
  // each token is rotated independently of its neighbours: the same token alone agrees
  std::vector<float> one(10 * heads);
  cpu::rope_apply(one.data(), buf.data() + 2 * stride, pos.data() + 2, 1, heads, heads * 10, cfg,
                  false);
  for (int64_t j = 0; j < heads * 10; ++j) CHECK(one[size_t(j)] == out[size_t(2 * stride + j)]);
}

TEST_CASE("rope: bad arguments are errors") {
  std::vector<float> x(16, 1.f);
  RopeConfig cfg{8};
  int32_t neg = -1, ok = 1;
  CHECK_THROWS_AS(cpu::rope_apply(x.data(), x.data(), &neg, 1, 2, 16, cfg, false), Error);
  // a negative position anywhere is found before anything is written
  std::vector<int32_t> pos{5, -3};
  std::vector<float> in = random_vector<float>(32, 71), out(32, 2.f);
  CHECK_THROWS_AS(cpu::rope_apply(out.data(), in.data(), pos.data(), 2, 2, 16, cfg, false), Error);
  CHECK(out == std::vector<float>(32, 2.f));
  CHECK_THROWS_AS(cpu::rope_apply(x.data(), x.data(), &ok, 1, 2, 15, cfg, false), Error);
  RopeConfig odd{7};
  CHECK_THROWS_AS(cpu::rope_apply(x.data(), x.data(), &ok, 1, 2, 16, odd, false), Error);
  CHECK_THROWS_AS(rope_inv_freq(RopeConfig{0}), Error);
}
