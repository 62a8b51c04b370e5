#include <doctest/doctest.h>

#include <mil/core/tensor.hpp>

using namespace mil;

TEST_CASE("tensor: empty - view and slice share storage") {
  auto t = Tensor<float, Cpu>::zeros(Shape{4, 3});
  CHECK(t.numel() == 12);
  CHECK(t.rank() == 2);
  for (int64_t i = 0; i < 12; ++i) t[i] = float(i);
  auto v = t.view(Shape{2, 6});
  CHECK(v.shares_storage_with(t));
  CHECK(v.size(1) == 6);
  auto s = t.slice(1, 3);
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s[0] == 3.f);
  s[0] = 42.f;
  CHECK(t[3] == 42.f);
  CHECK_THROWS_AS(t.view(Shape{5, 3}), Error);
  CHECK_THROWS_AS(t.slice(2, 5), Error);
}

TEST_CASE("tensor: clone is a deep copy") {
  auto t = Tensor<int32_t, Cpu>::from(Shape{3}, {1, 2, 3});
  auto c = t.clone();
  c[0] = 7;
  CHECK(t[0] == 1);
  CHECK(c.to_vector() == std::vector<int32_t>{7, 2, 3});
}

TEST_CASE("shape: overflowing element counts are an error - not a wrap-around") {
  Shape s{int64_t(1) << 40, int64_t(1) << 40};
  CHECK_THROWS_AS(s.numel(), Error);
  CHECK_THROWS_AS((Shape{1, 2, 3, 4, 5}), Error);
  CHECK_THROWS_AS((Shape{-1}), Error);
}
