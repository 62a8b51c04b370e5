#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/embedding.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

TEST_CASE("embedding: forward copies the rows of the ids (known values)") {
  std::vector<float> table{0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32};  // vocab 4, dim 3
  std::vector<int32_t> ids{2, 0, 2, 3};
  std::vector<float> out(12, test::poison<float>());
  cpu::embedding_forward(out.data(), table.data(), ids.data(), 4, 3, 4);
  CHECK(out == std::vector<float>{20, 21, 22, 0, 1, 2, 20, 21, 22, 30, 31, 32});
}

TEST_CASE(
    "embedding: backward sums repeated ids, overwrites or accumulates a pre-filled gradient") {
  std::vector<int32_t> ids{2, 0, 2, 3, 2};  // row 1 is never hit
  std::vector<float> dout{1, 2, 3, 4, 5, 6, 7, 8, 10, 20, 40, 80, 100, 200, 300};  // (5, 3)
  const std::vector<float> expect{4, 5, 6, 0, 0, 0, 108, 210, 313, 20, 40, 80};
  std::vector<float> dtable(12, 0.5f);
  cpu::embedding_backward(dtable.data(), dout.data(), ids.data(), 5, 3, 4, false);
  CHECK(dtable == expect);
  std::vector<float> acc(12, 0.5f);
  cpu::embedding_backward(acc.data(), dout.data(), ids.data(), 5, 3, 4, true);
  for (size_t i = 0; i < acc.size(); ++i) CHECK(acc[i] == expect[i] + 0.5f);
}

TEST_CASE("embedding: gradient check in double with repeated ids") {
  const int64_t vocab = 5, dim = 3;
  std::vector<int32_t> ids{4, 1, 1, 0, 4, 4, 2};  // id 3 unused: its gradient is 0
  const int64_t n = int64_t(ids.size());
  auto table = test::random_vector(size_t(vocab * dim), 7);
  auto g = test::random_vector(size_t(n * dim), 8);
  auto forward = [&] {
    std::vector<double> out(size_t(n * dim));
    cpu::embedding_forward(out.data(), table.data(), ids.data(), n, dim, vocab);
    return out;
  };
  std::vector<double> dtable(table.size(), std::nan(""));
  cpu::embedding_backward(dtable.data(), g.data(), ids.data(), n, dim, vocab, false);
  test::check_gradients("embedding", {{"table", &table, &dtable}}, forward, g);
}

TEST_CASE("embedding: an out-of-range id throws naming it and its position - and writes nothing") {
  std::vector<float> table(15, 1.f), out(9, test::poison<float>()), dtable(15, 0.5f), dout(9, 1.f);
  for (std::vector<int32_t> ids : {std::vector<int32_t>{1, 5, 0}, std::vector<int32_t>{1, -1, 0}}) {
    std::string id = std::to_string(ids[1]);
    CHECK_THROWS_WITH_AS(cpu::embedding_forward(out.data(), table.data(), ids.data(), 3, 3, 5),
                         doctest::Contains(("token id " + id + " at position 1").c_str()), Error);
    CHECK_THROWS_WITH_AS(
        cpu::embedding_backward(dtable.data(), dout.data(), ids.data(), 3, 3, 5, false),
        doctest::Contains(("token id " + id + " at position 1").c_str()), Error);
  }
  CHECK(out == std::vector<float>(9, test::poison<float>()));
  CHECK(dtable == std::vector<float>(15, 0.5f));
}

TEST_CASE(
    "embedding: no tokens: forward writes nothing, overwriting backward zeroes the gradient") {
  std::vector<float> table(6, 1.f), dtable(6, 0.5f);
  cpu::embedding_forward<float>(nullptr, table.data(), nullptr, 0, 3, 2);
  cpu::embedding_backward<float>(dtable.data(), nullptr, nullptr, 0, 3, 2, true);
  CHECK(dtable == std::vector<float>(6, 0.5f));
  cpu::embedding_backward<float>(dtable.data(), nullptr, nullptr, 0, 3, 2, false);
  CHECK(dtable == std::vector<float>(6, 0.f));
}
