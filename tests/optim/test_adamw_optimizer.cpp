#include <doctest/doctest.h>

#include <cmath>

#include <mil/optim/adamw.hpp>

using namespace mil;

namespace {
nn::ParameterStore<float, Cpu> store_of(std::vector<float> init) {
  nn::ParameterStore<float, Cpu> s({{"a.weight", Shape{2}}, {"b.weight", Shape{2}}, {"c.norm", Shape{1}}});
  s.values().copy_from(Tensor<float, Cpu>::from(Shape{5}, init));
  return s;
}
void set_grads(nn::ParameterStore<float, Cpu>& s, std::vector<float> g) {
  for (const auto& e : s.entries()) {
    if (!e.var.requires_grad()) continue;
    auto [grad, acc] = e.var.grad_for_write();
    for (int64_t i = 0; i < e.var.numel(); ++i) grad[i] = g[size_t(e.offset + i)];
  }
}
}  // namespace

TEST_CASE("adamw optimizer: groups scale the learning rate - frozen parameters never move") {
  auto s = store_of({1, 1, 1, 1, 1});
  s["b.weight"].set_requires_grad(false);
  optim::AdamW<float, Cpu> opt(s, {}, {{"norms", [](const std::string& n) { return n.ends_with("norm"); }, 0.5f, 0.f}});
  set_grads(s, {1, -1, 7, 7, 1});
  auto r = opt.step(0.1f);
  CHECK_FALSE(r.skipped);
  CHECK(r.grad_norm == doctest::Approx(std::sqrt(3.0)));  // frozen gradients do not count
  auto v = s.values().to_vector();
  // First step of Adam moves each parameter by lr * sign(g).
  CHECK(v[0] == doctest::Approx(0.9));
  CHECK(v[1] == doctest::Approx(1.1));
  CHECK(v[2] == 1.f);
  CHECK(v[3] == 1.f);
  CHECK(v[4] == doctest::Approx(0.95));
  CHECK(opt.steps_taken() == 1);
}

TEST_CASE("adamw optimizer: a frozen parameter between two of one group never moves") {
  // a and c share the default group but are not adjacent: two runs, not one over b.
  auto s = store_of({1, 1, 1, 1, 1});
  s["b.weight"].set_requires_grad(false);
  optim::AdamW<float, Cpu> opt(s, {});
  set_grads(s, {1, -1, 7, 7, 1});
  opt.step(0.1f);
  const auto v = s.values().to_vector();
  CHECK(v[0] == doctest::Approx(0.9));
  CHECK(v[1] == doctest::Approx(1.1));
  CHECK(v[2] == 1.f);
  CHECK(v[3] == 1.f);
  CHECK(v[4] == doctest::Approx(0.9));
}

TEST_CASE("adamw optimizer: a group's weight decay replaces the default, scaled by its lr") {
  // Zero gradients: each parameter only decays, by 1 - lr x lr_scale x weight_decay.
  auto s = store_of({1, 1, 1, 1, 1});
  const optim::AdamWConfig cfg{.weight_decay = 0.5f};
  optim::AdamW<float, Cpu> opt(
      s, cfg,
      {{"norms", [](const std::string& n) { return n.ends_with("norm"); }, 1.f, 0.f},
       {"b", [](const std::string& n) { return n.starts_with("b."); }, 2.f, -1.f}});  // default wd
  set_grads(s, {0, 0, 0, 0, 0});
  opt.step(0.1f);
  const auto v = s.values().to_vector();
  CHECK(v[0] == doctest::Approx(1 - 0.1 * 0.5));  // no group: the default
  CHECK(v[1] == doctest::Approx(1 - 0.1 * 0.5));
  CHECK(v[2] == doctest::Approx(1 - 0.2 * 0.5));  // group b: twice the lr, the default decay
  CHECK(v[3] == doctest::Approx(1 - 0.2 * 0.5));
  CHECK(v[4] == 1.f);  // norms: no decay
}

// The moments of a first step from zero are m = (1 - beta1) g and v = (1 - beta2) g^2 for the
// gradient g the update saw, so they show whether (and by how much) it was clipped; the first
// step's parameter change is lr x sign(g) whatever the scale, and would not.
TEST_CASE("adamw optimizer: a gradient norm above max_grad_norm is scaled down to it") {
  auto s = store_of({1, 1, 1, 1, 1});
  const optim::AdamWConfig cfg{.max_grad_norm = 1.0f};
  optim::AdamW<float, Cpu> opt(s, cfg);
  set_grads(s, {3, 4, 0, 0, 0});
  auto r = opt.step(0.1f);
  CHECK(r.grad_norm == doctest::Approx(5.0));  // reported before clipping
  const double coef = 1.0 / (5.0 + 1e-6);      // clip_coefficient: max_norm / (norm + 1e-6)
  const double g1[2] = {3 * coef, 4 * coef};   // the clipped gradient, norm 1
  auto m = opt.first_moment().to_vector(), v = opt.second_moment().to_vector();
  for (int i = 0; i < 2; ++i) {
    CHECK(m[size_t(i)] == doctest::Approx((1 - 0.9) * g1[i]).epsilon(1e-6));
    CHECK(v[size_t(i)] == doctest::Approx((1 - 0.98) * g1[i] * g1[i]).epsilon(1e-6));
  }
  // A second gradient of norm 0.5 is below the limit and enters unscaled; the parameters follow
  // AdamW's update from the clipped first moments (hand-computed here in double).
  set_grads(s, {0.3f, 0.4f, 0, 0, 0});
  r = opt.step(0.1f);
  CHECK(r.grad_norm == doctest::Approx(0.5));
  const double g2[2] = {0.3, 0.4}, bc1 = 1 - 0.9 * 0.9, bc2 = 1 - 0.98 * 0.98;
  m = opt.first_moment().to_vector(), v = opt.second_moment().to_vector();
  const auto p = s.values().to_vector();
  for (int i = 0; i < 2; ++i) {
    const double m2 = 0.9 * (0.1 * g1[i]) + 0.1 * g2[i];
    const double v2 = 0.98 * (0.02 * g1[i] * g1[i]) + 0.02 * g2[i] * g2[i];
    const double p1 = 1 - 0.1;  // first step: lr x sign(g)
    CHECK(m[size_t(i)] == doctest::Approx(m2).epsilon(1e-6));
    CHECK(v[size_t(i)] == doctest::Approx(v2).epsilon(1e-6));
    CHECK(p[size_t(i)] == doctest::Approx(p1 - 0.1 * (m2 / bc1) / std::sqrt(v2 / bc2)).epsilon(1e-6));
  }
}

TEST_CASE("adamw optimizer: a gradient norm below max_grad_norm is left as it is") {
  auto s = store_of({1, 1, 1, 1, 1});
  const optim::AdamWConfig cfg{.max_grad_norm = 10.0f};
  optim::AdamW<float, Cpu> opt(s, cfg);
  set_grads(s, {3, 4, 0, 0, 0});
  CHECK(opt.step(0.1f).grad_norm == doctest::Approx(5.0));
  const auto m = opt.first_moment().to_vector(), v = opt.second_moment().to_vector();
  CHECK(m[0] == doctest::Approx(0.1 * 3).epsilon(1e-6));
  CHECK(m[1] == doctest::Approx(0.1 * 4).epsilon(1e-6));
  CHECK(v[0] == doctest::Approx(0.02 * 9).epsilon(1e-6));
  CHECK(v[1] == doctest::Approx(0.02 * 16).epsilon(1e-6));
}

TEST_CASE("adamw optimizer: a non-finite gradient skips the update") {
  auto s = store_of({1, 1, 1, 1, 1});
  optim::AdamW<float, Cpu> opt(s, {.max_grad_norm = 1.0f});
  set_grads(s, {3, 4, 0, 0, 0});
  auto r = opt.step(0.1f);
  CHECK_FALSE(r.skipped);
  auto before = s.values().to_vector();
  const auto m_before = opt.first_moment().to_vector(), v_before = opt.second_moment().to_vector();
  set_grads(s, {NAN, 1, 1, 1, 1});
  r = opt.step(0.1f);
  CHECK(r.skipped);
  CHECK(opt.steps_skipped() == 1);
  CHECK(opt.steps_taken() == 1);
  CHECK(s.values().to_vector() == before);
  CHECK(opt.first_moment().to_vector() == m_before);  // the moments are untouched too
  CHECK(opt.second_moment().to_vector() == v_before);
}

TEST_CASE("adamw optimizer: parameters without a gradient this step see a zero gradient") {
  auto s = store_of({1, 1, 1, 1, 1});
  optim::AdamW<float, Cpu> opt(s, {});
  s.grads().copy_from(Tensor<float, Cpu>::from(Shape{5}, {9, 9, 9, 9, 9}));  // stale values
  auto r = opt.step(0.1f);                                                    // nothing written
  CHECK(r.grad_norm == 0.0);
  CHECK(s.values().to_vector() == std::vector<float>{1, 1, 1, 1, 1});
}
