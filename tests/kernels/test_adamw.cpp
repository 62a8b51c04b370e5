#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/adamw.hpp>

#include "common/compare.hpp"
#include "common/random.hpp"

using namespace mil;

TEST_CASE("adamw: one step matches hand-computed numbers") {
  // Hyperparameters exact in binary, so the float and double paths start from the same numbers.
  AdamWStep s;
  s.lr = 0.125f, s.beta1 = 0.75f, s.beta2 = 0.875f, s.eps = 0x1p-20f, s.weight_decay = 0.5f;
  s.step = 2, s.grad_scale = 2.f;
  // g = 0.5 * 2 = 1; m = 0.75 * 0.5 + 0.25 = 0.625; v = 0.875 * 0.25 + 0.125 = 0.34375;
  // master = 1 * (1 - 0.0625) - 0.125 * (0.625 / 0.4375) / (sqrt(0.34375 / 0.234375) + 2^-20).
  const double expect =
      0.9375 - 0.125 * (0.625 / 0.4375) / (std::sqrt(0.34375 / 0.234375) + 0x1p-20);
  CHECK(expect == doctest::Approx(0.7900496118548582).epsilon(1e-15));
  {
    double master = 1, m = 0.5, v = 0.25, grad = 0.5;
    cpu::adamw_update(&master, &m, &v, nullptr, &grad, 1, s);
    CHECK(m == 0.625);
    CHECK(v == 0.34375);
    CHECK(master == doctest::Approx(expect).epsilon(1e-14));
  }
  {
    float master = 1, m = 0.5f, v = 0.25f, grad = 0.5f;
    bf16 param = bf16(0.f);
    cpu::adamw_update(&master, &m, &v, &param, &grad, 1, s);
    CHECK(m == 0.625f);
    CHECK(v == 0.34375f);
    CHECK(master == doctest::Approx(expect).epsilon(1e-6));
    CHECK(param.bits == bf16(master).bits);
  }
}

TEST_CASE("adamw: 300 steps on a quadratic converge to its minimum") {
  // f(w) = sum_i a_i (w_i - c_i)^2 / 2, gradient a_i (w_i - c_i), curvatures from 0.1 to 10.
  const int64_t n = 16;
  auto c = test::random_vector<float>(n, 51, -2.f, 2.f);
  auto a = test::random_vector<float>(n, 52, 0.1f, 10.f);
  std::vector<float> w(n, 0.f), m(n, 0.f), v(n, 0.f), g(n);
  auto loss = [&] {
    double f = 0;
    for (int64_t i = 0; i < n; ++i) f += 0.5 * a[i] * (w[i] - c[i]) * (w[i] - c[i]);
    return f;
  };
  const double initial = loss();
  AdamWStep s;
  for (int64_t t = 1; t <= 300; ++t) {
    for (int64_t i = 0; i < n; ++i) g[i] = a[i] * (w[i] - c[i]);
    s.lr = t <= 200 ? 0.05f : 0.005f;  // a smaller step at the end settles the Adam oscillation
    s.step = t;
    cpu::adamw_update(w.data(), m.data(), v.data(), nullptr, g.data(), n, s);
  }
  CHECK(loss() < 1e-4 * initial);
  for (int64_t i = 0; i < n; ++i) CHECK(w[i] == doctest::Approx(c[i]).epsilon(0.02));
}

TEST_CASE("adamw: weight decay is decoupled: a zero gradient only shrinks by 1 - lr x wd") {
  const int64_t n = 5;
  std::vector<float> w{1.f, -2.f, 0.5f, 3.f, -0.25f}, m(n, 0.f), v(n, 0.f), g(n, 0.f);
  const std::vector<float> before = w;
  AdamWStep s;
  s.lr = 0.01f, s.weight_decay = 0.1f, s.step = 7;
  cpu::adamw_update(w.data(), m.data(), v.data(), nullptr, g.data(), n, s);
  const float decay = float(1.0 - double(0.01f) * double(0.1f));
  for (int64_t i = 0; i < n; ++i) {
    CHECK(w[i] == before[i] * decay);  // m / (sqrt(v) + eps) is exactly 0
    CHECK(m[i] == 0.f);
    CHECK(v[i] == 0.f);
  }
  // The decay does not go through the moments: a gradient step with and without decay differ by
  // exactly the decay of the starting value.
  std::vector<float> w1 = before, w2 = before, m1(n, 0.f), v1(n, 0.f), m2(n, 0.f), v2(n, 0.f);
  std::vector<float> grad{0.3f, -0.1f, 2.f, -4.f, 0.01f};
  AdamWStep no_decay = s;
  no_decay.weight_decay = 0.f;
  cpu::adamw_update(w1.data(), m1.data(), v1.data(), nullptr, grad.data(), n, s);
  cpu::adamw_update(w2.data(), m2.data(), v2.data(), nullptr, grad.data(), n, no_decay);
  for (int64_t i = 0; i < n; ++i) {
    CHECK(w1[i] - w2[i] == doctest::Approx(before[i] * (decay - 1.f)).epsilon(1e-3));
    CHECK(m1[i] == m2[i]);
    CHECK(v1[i] == v2[i]);
  }
}

TEST_CASE("adamw: bias correction makes the first step lr x sign(g) for |g| >> eps") {
  const int64_t n = 6;
  std::vector<double> g{1e-3, -2.0, 50.0, -0.07, 3e-2, -1e3};
  std::vector<double> w(n, 0.5), m(n, 0.0), v(n, 0.0);
  AdamWStep s;
  s.lr = 0.003f;
  s.beta1 = 0.9f, s.beta2 = 0.95f;
  cpu::adamw_update(w.data(), m.data(), v.data(), nullptr, g.data(), n, s);
  for (int64_t i = 0; i < n; ++i) {
    const double step = w[i] - 0.5, expect = -double(s.lr) * (g[i] > 0 ? 1 : -1);
    CHECK(std::fabs(step - expect) <= 1e-4 * double(s.lr));
  }
}

TEST_CASE("adamw: grad_scale gives the same update as pre-scaled gradients") {
  const int64_t n = 257;
  auto w0 = test::random_vector<float>(n, 61), grad = test::random_vector<float>(n, 62);
  std::vector<float> scaled(n);
  const float scale = 0.37f;
  for (int64_t i = 0; i < n; ++i) scaled[i] = grad[i] * scale;
  std::vector<float> w1 = w0, w2 = w0, m1(n, 0.f), v1(n, 0.f), m2(n, 0.f), v2(n, 0.f);
  AdamWStep s;
  s.lr = 1e-3f, s.weight_decay = 0.01f;
  for (int64_t t = 1; t <= 3; ++t) {
    s.step = t;
    AdamWStep with_scale = s;
    with_scale.grad_scale = scale;
    cpu::adamw_update(w1.data(), m1.data(), v1.data(), nullptr, grad.data(), n, with_scale);
    cpu::adamw_update(w2.data(), m2.data(), v2.data(), nullptr, scaled.data(), n, s);
  }
  CHECK(w1 == w2);
  CHECK(m1 == m2);
  CHECK(v1 == v2);
}

TEST_CASE("adamw: the bf16 parameter copy is bf16(master) - with bf16 gradients") {
  const int64_t n = 1001;
  auto master = test::random_vector<float>(n, 71);
  auto grad = test::cast_vector<bf16>(test::random_vector<float>(n, 72));
  std::vector<float> m(n, 0.f), v(n, 0.f);
  std::vector<bf16> param(n, test::poison<bf16>());
  AdamWStep s;
  s.lr = 1e-2f, s.weight_decay = 0.1f;
  for (int64_t t = 1; t <= 2; ++t) {
    s.step = t;
    cpu::adamw_update(master.data(), m.data(), v.data(), param.data(), grad.data(), n, s);
    for (int64_t i = 0; i < n; ++i) CHECK(param[i].bits == bf16(master[i]).bits);
  }
  // The bf16 gradient enters as its exact float value.
  std::vector<float> master2 = test::random_vector<float>(n, 71), m2(n, 0.f), v2(n, 0.f);
  auto grad_f = test::cast_vector<float>(grad);
  for (int64_t t = 1; t <= 2; ++t) {
    s.step = t;
    cpu::adamw_update(master2.data(), m2.data(), v2.data(), nullptr, grad_f.data(), n, s);
  }
  CHECK(master2 == master);
}

TEST_CASE("adamw: invalid hyperparameters throw") {
  float w = 1, m = 0, v = 0, g = 1;
  auto run = [&](AdamWStep s) { cpu::adamw_update(&w, &m, &v, nullptr, &g, 1, s); };
  AdamWStep s;
  s.lr = 1e-3f;
  AdamWStep bad = s;
  bad.step = 0;
  CHECK_THROWS_AS(run(bad), Error);
  bad = s, bad.beta1 = 1.f;
  CHECK_THROWS_AS(run(bad), Error);
  bad = s, bad.beta2 = -0.1f;
  CHECK_THROWS_AS(run(bad), Error);
  bad = s, bad.lr = -1.f;
  CHECK_THROWS_AS(run(bad), Error);
  CHECK(w == 1.f);
  CHECK_NOTHROW(run(s));
}
