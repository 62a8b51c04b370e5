#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/attention.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

namespace {

// q, k, v of one shape in separate buffers (strides heads*hd and kv_heads*hd).
struct SeparateQkv {
  AttentionShape shape;
  std::vector<double> q, k, v;
};

AttentionShape separate_shape(int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                              int64_t hd) {
  return AttentionShape{batch, seq, heads, kv_heads, hd, heads * hd, kv_heads * hd,
                        float(1.0 / std::sqrt(double(hd)))};
}

SeparateQkv random_qkv(int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads, int64_t hd,
                       uint64_t seed) {
  SeparateQkv r;
  r.shape = separate_shape(batch, seq, heads, kv_heads, hd);
  r.q = test::random_vector(size_t(batch * seq * heads * hd), seed, -2.f, 2.f);
  r.k = test::random_vector(size_t(batch * seq * kv_heads * hd), seed + 1, -2.f, 2.f);
  r.v = test::random_vector(size_t(batch * seq * kv_heads * hd), seed + 2);
  return r;
}

size_t out_size(const AttentionShape& s) { return size_t(s.batch * s.seq * s.heads * s.head_dim); }
size_t lse_size(const AttentionShape& s) { return size_t(s.batch * s.heads * s.seq); }

struct Forward {
  std::vector<double> out, lse;
};
Forward forward(const SeparateQkv& x) {
  Forward f{std::vector<double>(out_size(x.shape)), std::vector<double>(lse_size(x.shape))};
  cpu::attention_forward(f.out.data(), f.lse.data(), x.q.data(), x.k.data(), x.v.data(), x.shape);
  return f;
}

// Copies separate q, k, v into one fused buffer with `pad` extra elements per token (a gap after
// v), returning the fused shape.
AttentionShape fuse(const SeparateQkv& x, int64_t pad, std::vector<double>& qkv) {
  const AttentionShape& s = x.shape;
  const int64_t hd = s.head_dim, qw = s.heads * hd, kw = s.kv_heads * hd;
  AttentionShape f = s;
  f.q_stride = f.kv_stride = qw + 2 * kw + pad;
  const int64_t tokens = s.batch * s.seq;
  qkv.assign(size_t(tokens * f.q_stride), 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < qw; ++i) qkv[t * f.q_stride + i] = x.q[t * qw + i];
    for (int64_t i = 0; i < kw; ++i) {
      qkv[t * f.q_stride + qw + i] = x.k[t * kw + i];
      qkv[t * f.q_stride + qw + kw + i] = x.v[t * kw + i];
    }
  }
  return f;
}

}  // namespace

TEST_CASE("attention: shape helpers and validation") {
  AttentionShape f = attention_shape_fused(2, 7, 9, 3, 64);
  CHECK(f.q_stride == (9 + 6) * 64);
  CHECK(f.kv_stride == (9 + 6) * 64);
  CHECK(f.scale == doctest::Approx(0.125));
  CHECK_NOTHROW(check(f));
  CHECK_THROWS_AS(attention_shape_fused(1, 4, 6, 4, 8), Error);  // 6 heads over 4 kv heads
  AttentionShape s = separate_shape(1, 4, 4, 2, 8);
  CHECK_NOTHROW(check(s));
  AttentionShape bad = s;
  bad.q_stride = 31;
  CHECK_THROWS_AS(check(bad), Error);
  bad = s;
  bad.kv_stride = 15;
  CHECK_THROWS_AS(check(bad), Error);
  bad = s;
  bad.kv_heads = 0;
  CHECK_THROWS_AS(check(bad), Error);
  bad = s;
  bad.seq = -1;
  CHECK_THROWS_AS(check(bad), Error);
  bad = s;
  bad.scale = NAN;
  CHECK_THROWS_AS(check(bad), Error);
  bad = s;
  bad.batch = int64_t(1) << 40;
  bad.seq = int64_t(1) << 40;
  CHECK_THROWS_AS(check(bad), Error);
  std::vector<float> x(64);
  CHECK_THROWS_AS(cpu::attention_forward(x.data(), (float*)nullptr, x.data(), x.data(), x.data(),
                                         bad),
                  Error);
}

TEST_CASE("attention: seq 1 attends only to itself (out = v - lse = scaled q.k)") {
  SeparateQkv x = random_qkv(2, 1, 4, 2, 3, 11);
  Forward f = forward(x);
  const AttentionShape& s = x.shape;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 4; ++h) {
      const int64_t g = h / 2;
      double qk = 0;
      for (int64_t d = 0; d < 3; ++d) {
        const double expected = x.v[(b * 2 + g) * 3 + d];
        CHECK(f.out[(b * 4 + h) * 3 + d] == doctest::Approx(expected).epsilon(1e-14));
        qk += x.q[(b * 4 + h) * 3 + d] * x.k[(b * 2 + g) * 3 + d];
      }
      CHECK(f.lse[b * 4 + h] == doctest::Approx(double(s.scale) * qk).epsilon(1e-14));
    }
}

TEST_CASE("attention: seq 2 known values") {
  // scale ln 3: token 1 scores q1.k0 = 0 and q1.k1 = ln 3 give weights 1/4 and 3/4.
  const float ln3 = float(std::log(3.0));
  AttentionShape s{1, 2, 1, 1, 2, 2, 2, ln3};
  std::vector<double> q = {1, 0, 0, 1}, k = {1, 0, 0, 1}, v = {4, 0, 0, 8};
  std::vector<double> out(4), lse(2);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s);
  CHECK(out[0] == doctest::Approx(4.0));
  CHECK(out[1] == doctest::Approx(0.0));
  CHECK(out[2] == doctest::Approx(1.0).epsilon(1e-6));  // 1/4 * 4 + 3/4 * 0
  CHECK(out[3] == doctest::Approx(6.0).epsilon(1e-6));  // 1/4 * 0 + 3/4 * 8
  CHECK(lse[0] == doctest::Approx(double(ln3)));         // only key 0: q0.k0 = 1
  CHECK(lse[1] == doctest::Approx(std::log(1.0 + std::exp(double(ln3)))));
  // float gives the same numbers (the reference is templated on the element type).
  std::vector<float> qf(q.begin(), q.end()), kf(k.begin(), k.end()), vf(v.begin(), v.end());
  std::vector<float> outf(4), lsef(2);
  cpu::attention_forward(outf.data(), lsef.data(), qf.data(), kf.data(), vf.data(), s);
  CHECK(outf[2] == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(outf[3] == doctest::Approx(6.0).epsilon(1e-6));
}

TEST_CASE("attention: float agrees with double") {
  SeparateQkv x = random_qkv(2, 9, 4, 2, 5, 21);
  Forward f = forward(x);
  auto qf = test::cast_vector<float>(x.q), kf = test::cast_vector<float>(x.k),
       vf = test::cast_vector<float>(x.v);
  std::vector<float> out(out_size(x.shape)), lse(lse_size(x.shape));
  cpu::attention_forward(out.data(), lse.data(), qf.data(), kf.data(), vf.data(), x.shape);
  test::require_close("attention float out", out, f.out, 1e-5);
  test::require_close("attention float lse", lse, f.lse, 1e-5);
}

TEST_CASE("attention: causal - future tokens do not change earlier outputs") {
  SeparateQkv x = random_qkv(2, 8, 4, 2, 3, 31);
  Forward before = forward(x);
  const int64_t cut = 5;  // change tokens 5..7 of q, k and v in both batches
  const AttentionShape& s = x.shape;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = cut; t < s.seq; ++t) {
      for (int64_t i = 0; i < s.q_stride; ++i) x.q[(b * s.seq + t) * s.q_stride + i] += 0.5;
      for (int64_t i = 0; i < s.kv_stride; ++i) {
        x.k[(b * s.seq + t) * s.kv_stride + i] -= 0.75;
        x.v[(b * s.seq + t) * s.kv_stride + i] *= -2.0;
      }
    }
  Forward after = forward(x);
  int changed = 0;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < s.seq; ++t)
      for (int64_t h = 0; h < s.heads; ++h) {
        for (int64_t d = 0; d < s.head_dim; ++d) {
          size_t i = size_t(((b * s.seq + t) * s.heads + h) * s.head_dim + d);
          if (t < cut) CHECK(after.out[i] == before.out[i]);
          else changed += after.out[i] != before.out[i];
        }
        size_t i = size_t((b * s.heads + h) * s.seq + t);
        if (t < cut) CHECK(after.lse[i] == before.lse[i]);
      }
  CHECK(changed > 0);
}

TEST_CASE("attention: GQA equals MHA with repeated kv heads") {
  SeparateQkv gqa = random_qkv(2, 6, 6, 2, 4, 41);
  SeparateQkv mha = gqa;
  mha.shape = separate_shape(2, 6, 6, 6, 4);
  const int64_t tokens = 2 * 6, hd = 4;
  mha.k.assign(size_t(tokens * 6 * hd), 0.0);
  mha.v.assign(size_t(tokens * 6 * hd), 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t d = 0; d < hd; ++d) {
        mha.k[(t * 6 + h) * hd + d] = gqa.k[(t * 2 + h / 3) * hd + d];
        mha.v[(t * 6 + h) * hd + d] = gqa.v[(t * 2 + h / 3) * hd + d];
      }
  Forward fg = forward(gqa), fm = forward(mha);
  test::require_close("attention gqa out", fg.out, fm.out, 1e-14);
  test::require_close("attention gqa lse", fg.lse, fm.lse, 1e-14);

  // Gradients: dq equal; dk, dv of a kv head are the sums over the query heads of its group.
  auto dout = test::random_vector(out_size(gqa.shape), 42);
  std::vector<double> dqg(gqa.q.size()), dkg(gqa.k.size()), dvg(gqa.v.size());
  std::vector<double> dqm(mha.q.size()), dkm(mha.k.size()), dvm(mha.v.size());
  cpu::attention_backward(dqg.data(), dkg.data(), dvg.data(), dout.data(), gqa.q.data(),
                          gqa.k.data(), gqa.v.data(), fg.out.data(), fg.lse.data(), gqa.shape,
                          false);
  cpu::attention_backward(dqm.data(), dkm.data(), dvm.data(), dout.data(), mha.q.data(),
                          mha.k.data(), mha.v.data(), fm.out.data(), fm.lse.data(), mha.shape,
                          false);
  test::require_close("attention gqa dq", dqg, dqm, 1e-13);
  std::vector<double> dk_sum(dkg.size(), 0.0), dv_sum(dvg.size(), 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t d = 0; d < hd; ++d) {
        dk_sum[(t * 2 + h / 3) * hd + d] += dkm[(t * 6 + h) * hd + d];
        dv_sum[(t * 2 + h / 3) * hd + d] += dvm[(t * 6 + h) * hd + d];
      }
  test::require_close("attention gqa dk", dkg, dk_sum, 1e-13);
  test::require_close("attention gqa dv", dvg, dv_sum, 1e-13);
}

TEST_CASE("attention: fused QKV layout equals separate layout - gaps untouched") {
  SeparateQkv x = random_qkv(2, 7, 4, 2, 3, 51);
  Forward ref = forward(x);
  auto dout = test::random_vector(out_size(x.shape), 52);
  std::vector<double> dq(x.q.size()), dk(x.k.size()), dv(x.v.size());
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), x.q.data(), x.k.data(),
                          x.v.data(), ref.out.data(), ref.lse.data(), x.shape, false);

  for (int64_t pad : {0, 5}) {
    CAPTURE(pad);
    std::vector<double> qkv;
    AttentionShape f = fuse(x, pad, qkv);
    const int64_t qw = f.heads * f.head_dim, kw = f.kv_heads * f.head_dim;
    const double* q = qkv.data();
    Forward got{std::vector<double>(out_size(f)), std::vector<double>(lse_size(f))};
    cpu::attention_forward(got.out.data(), got.lse.data(), q, q + qw, q + qw + kw, f);
    test::require_close("attention fused out", got.out, ref.out, 1e-14);
    test::require_close("attention fused lse", got.lse, ref.lse, 1e-14);

    // Fused dQKV, pre-filled with a sentinel: overwrite must replace the q, k, v parts and keep
    // the gap after v.
    const double sentinel = 123.25;
    std::vector<double> dqkv(qkv.size(), sentinel);
    double* d = dqkv.data();
    cpu::attention_backward(d, d + qw, d + qw + kw, dout.data(), q, q + qw, q + qw + kw,
                            got.out.data(), got.lse.data(), f, false);
    std::vector<double> dqf, dkf, dvf;
    const int64_t tokens = f.batch * f.seq;
    for (int64_t t = 0; t < tokens; ++t) {
      const double* row = d + t * f.q_stride;
      dqf.insert(dqf.end(), row, row + qw);
      dkf.insert(dkf.end(), row + qw, row + qw + kw);
      dvf.insert(dvf.end(), row + qw + kw, row + qw + 2 * kw);
      for (int64_t i = qw + 2 * kw; i < f.q_stride; ++i) CHECK(row[i] == sentinel);
    }
    test::require_close("attention fused dq", dqf, dq, 1e-14);
    test::require_close("attention fused dk", dkf, dk, 1e-14);
    test::require_close("attention fused dv", dvf, dv, 1e-14);
  }
}

TEST_CASE("attention: gradients of q - k - v match central differences") {
  SeparateQkv x = random_qkv(2, 5, 4, 2, 3, 61);
  const AttentionShape s = x.shape;
  Forward f = forward(x);
  auto g = test::random_vector(out_size(s), 62);
  std::vector<double> dq(x.q.size()), dk(x.k.size()), dv(x.v.size());
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), g.data(), x.q.data(), x.k.data(),
                          x.v.data(), f.out.data(), f.lse.data(), s, false);
  auto run = [&] {
    std::vector<double> out(out_size(s));
    cpu::attention_forward(out.data(), (double*)nullptr, x.q.data(), x.k.data(), x.v.data(), s);
    return out;
  };
  test::check_gradients("attention", {{"q", &x.q, &dq}, {"k", &x.k, &dk}, {"v", &x.v, &dv}}, run,
                        g);
}

TEST_CASE("attention: backward overwrite and accumulate with pre-filled gradients") {
  SeparateQkv x = random_qkv(1, 6, 3, 1, 4, 71);
  const AttentionShape s = x.shape;
  Forward f = forward(x);
  auto dout = test::random_vector(out_size(s), 72);
  std::vector<double> dq(x.q.size()), dk(x.k.size()), dv(x.v.size());
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), x.q.data(), x.k.data(),
                          x.v.data(), f.out.data(), f.lse.data(), s, false);

  const double pre = 0.375;
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    std::vector<double> gq(dq.size(), pre), gk(dk.size(), pre), gv(dv.size(), pre);
    cpu::attention_backward(gq.data(), gk.data(), gv.data(), dout.data(), x.q.data(), x.k.data(),
                            x.v.data(), f.out.data(), f.lse.data(), s, accumulate);
    auto expect = [&](const std::vector<double>& grad) {
      std::vector<double> e(grad);
      if (accumulate)
        for (double& v : e) v += pre;
      return e;
    };
    test::require_close("attention dq", gq, expect(dq), 1e-14);
    test::require_close("attention dk", gk, expect(dk), 1e-14);
    test::require_close("attention dv", gv, expect(dv), 1e-14);
  }
}

TEST_CASE("attention: empty batch or sequence writes nothing") {
  AttentionShape s = separate_shape(0, 4, 2, 1, 3);
  std::vector<float> x(1, 5.f);
  cpu::attention_forward(x.data(), x.data(), x.data(), x.data(), x.data(), s);
  s = separate_shape(2, 0, 2, 1, 3);
  cpu::attention_backward(x.data(), x.data(), x.data(), x.data(), x.data(), x.data(), x.data(),
                          x.data(), x.data(), s, false);
  CHECK(x[0] == 5.f);
}
