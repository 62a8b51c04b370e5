// Row bias: forward values, backward column sums in both write modes, and the autograd op's
// gradient against central differences.
#include <doctest/doctest.h>

#include <mil/autograd/ops.hpp>
#include <mil/kernels/bias.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

TEST_CASE("bias: forward adds the bias to every row and backward sums the columns") {
  const int64_t rows = 5, cols = 7;
  auto y = test::random_vector<double>(size_t(rows * cols), 1);
  const auto b = test::random_vector<double>(size_t(cols), 2);
  auto out = y;
  cpu::bias_add(out.data(), b.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) CHECK(out[r * cols + c] == y[r * cols + c] + b[c]);
  std::vector<double> db(size_t(cols), 100.0), expected(size_t(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) expected[c] += y[r * cols + c];
  cpu::bias_backward(db.data(), y.data(), rows, cols, false);
  test::require_close("bias db overwrite", db, expected, 1e-15);
  cpu::bias_backward(db.data(), y.data(), rows, cols, true);
  for (auto& e : expected) e *= 2;
  test::require_close("bias db accumulate", db, expected, 1e-15);
  CHECK_THROWS_WITH_AS(cpu::bias_add(out.data(), b.data(), -1, cols), doctest::Contains("negative"),
                       Error);
}

TEST_CASE("bias: autograd op gradient matches central differences") {
  const int64_t rows = 4, cols = 3;
  auto xv = test::random_vector<double>(size_t(rows * cols), 3);
  auto bv = test::random_vector<double>(size_t(cols), 4);
  const auto g = test::random_vector<double>(size_t(rows * cols), 5);
  auto run = [&](bool grad, std::vector<double>* dx, std::vector<double>* db) {
    ag::Var<double, Cpu> x(Tensor<double, Cpu>::from(Shape{rows, cols}, xv), grad);
    ag::Var<double, Cpu> b(Tensor<double, Cpu>::from(Shape{cols}, bv), grad);
    ag::Tape tape;
    auto y = ag::bias_add(tape, x, b);
    if (grad) {
      auto [gy, acc] = y.grad_for_write();  // seed the cotangent
      gy.copy_from(Tensor<double, Cpu>::from(Shape{rows, cols}, g));
      tape.backward();
      *dx = x.grad().to_vector();
      *db = b.grad().to_vector();
    }
    return y.value().to_vector();
  };
  std::vector<double> dx, db;
  run(true, &dx, &db);
  test::check_gradients("bias_add", {{"x", &xv, &dx}, {"b", &bv, &db}},
                        [&] { return run(false, nullptr, nullptr); }, g);
}
