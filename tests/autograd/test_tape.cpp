#include <doctest/doctest.h>

#include <mil/autograd/ops.hpp>

#include "common/compare.hpp"
#include "common/random.hpp"

using namespace mil;
using V = ag::Var<double, Cpu>;

namespace {
struct NodeWithoutBackward {
  V x;
};
struct NodeWithBackward {
  V x;
  void backward() {}
};
V var(const std::vector<double>& values, Shape s, bool grad = true) {
  return V(Tensor<double, Cpu>::from(s, values), grad);
}
}  // namespace

static_assert(!ag::Differentiable<NodeWithoutBackward>, "an op without backward must not record");
static_assert(ag::Differentiable<NodeWithBackward>);

TEST_CASE("tape: a variable used twice receives the sum of both gradients") {
  ag::Tape tape;
  V x = var({1, 2, 3}, Shape{1, 3});
  V y = ag::add(tape, x, x);  // y = 2x
  auto targets = Tensor<int32_t, Cpu>::from(Shape{1}, {2});
  auto loss = ag::cross_entropy(tape, y, targets);
  tape.backward();
  REQUIRE(x.has_grad());
  // d loss / d y = softmax(y) - onehot; d/dx = 2 * that.
  std::vector<double> yv{2, 4, 6}, expect(3);
  double z = std::exp(2.) + std::exp(4.) + std::exp(6.);
  for (int i = 0; i < 3; ++i) expect[i] = 2 * (std::exp(yv[i]) / z - (i == 2));
  test::require_close("dx", x.grad().to_vector(), expect, 1e-12);
  CHECK(loss.count == 1);
  CHECK(loss.mean() == doctest::Approx(std::log(z) - 6));
}

TEST_CASE("tape: no-grad scope records nothing and frozen inputs get no gradient") {
  ag::Tape tape;
  V x = var({1, 2, 3, 4}, Shape{2, 2});
  V w = var({1, 0, 0, 1}, Shape{2, 2}, false);
  {
    ag::NoGrad ng(tape);
    (void)ag::linear(tape, x, w);
    CHECK(tape.size() == 0);
  }
  V y = ag::linear(tape, x, w);
  CHECK(tape.size() == 1);
  auto targets = Tensor<int32_t, Cpu>::from(Shape{2}, {0, 1});
  (void)ag::cross_entropy(tape, y, targets);
  tape.backward();
  CHECK(x.has_grad());
  CHECK_FALSE(w.has_grad());
  CHECK_FALSE(w.grad().defined());
  CHECK(tape.size() == 0);
}

TEST_CASE("tape: ignored targets and a target outside the vocabulary") {
  ag::Tape tape;
  V x = var({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  auto ok = Tensor<int32_t, Cpu>::from(Shape{2}, {-100, 1});
  auto loss = ag::cross_entropy(tape, x, ok);
  CHECK(loss.count == 1);
  auto bad = Tensor<int32_t, Cpu>::from(Shape{2}, {0, 3});
  CHECK_THROWS_AS(ag::cross_entropy(tape, x, bad), Error);
  auto wrong_count = Tensor<int32_t, Cpu>::from(Shape{3}, {0, 1, 2});
  CHECK_THROWS_AS(ag::cross_entropy(tape, x, wrong_count), Error);
}

TEST_CASE("tape: linear rejects mismatched shapes with a clear error") {
  ag::Tape tape;
  V x = var({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  V w = var({1, 2, 3, 4}, Shape{2, 2});
  CHECK_THROWS_WITH_AS(ag::linear(tape, x, w), doctest::Contains("linear: input has 3 features"),
                       Error);
}
