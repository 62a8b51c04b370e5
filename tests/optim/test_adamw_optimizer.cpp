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

TEST_CASE("adamw optimizer: clipping - and a non-finite gradient skips the update") {
  auto s = store_of({1, 1, 1, 1, 1});
  optim::AdamW<float, Cpu> opt(s, {.max_grad_norm = 1.0f});
  set_grads(s, {3, 4, 0, 0, 0});
  auto r = opt.step(0.1f);
  CHECK(r.grad_norm == doctest::Approx(5.0));
  auto before = s.values().to_vector();
  set_grads(s, {NAN, 1, 1, 1, 1});
  r = opt.step(0.1f);
  CHECK(r.skipped);
  CHECK(opt.steps_skipped() == 1);
  CHECK(opt.steps_taken() == 1);
  CHECK(s.values().to_vector() == before);
  for (float m : opt.first_moment().to_vector()) CHECK(std::isfinite(m));
}

TEST_CASE("adamw optimizer: parameters without a gradient this step see a zero gradient") {
  auto s = store_of({1, 1, 1, 1, 1});
  optim::AdamW<float, Cpu> opt(s, {});
  s.grads().copy_from(Tensor<float, Cpu>::from(Shape{5}, {9, 9, 9, 9, 9}));  // stale values
  auto r = opt.step(0.1f);                                                    // nothing written
  CHECK(r.grad_norm == 0.0);
  CHECK(s.values().to_vector() == std::vector<float>{1, 1, 1, 1, 1});
}
