#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/add.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;

TEST_CASE("add: known values - and out may alias an input") {
  std::vector<float> a{1, 2, 3}, b{10, 20, 30.5f}, out(3, test::poison<float>());
  cpu::add(out.data(), a.data(), b.data(), 3);
  CHECK(out == std::vector<float>{11, 22, 33.5f});
  cpu::add(a.data(), a.data(), b.data(), 3);
  CHECK(a == out);
  cpu::add(b.data(), a.data(), b.data(), 3);
  CHECK(b == std::vector<float>{21, 42, 64});
  CHECK_THROWS_AS(cpu::add(out.data(), a.data(), b.data(), -1), Error);
}

TEST_CASE("add: bf16 sums in float and rounds once") {
  auto a = test::cast_vector<bf16>(test::random_vector<float>(257, 3, -4.f, 4.f));
  auto b = test::cast_vector<bf16>(test::random_vector<float>(257, 4, -4.f, 4.f));
  std::vector<bf16> out(257);
  cpu::add(out.data(), a.data(), b.data(), 257);
  for (size_t i = 0; i < out.size(); ++i)
    CHECK(out[i].bits == bf16(float(a[i]) + float(b[i])).bits);
}

TEST_CASE("add: add_into copies or accumulates over a pre-filled buffer") {
  auto src = test::random_vector<float>(37, 5);
  std::vector<float> dst(37, 0.5f);
  cpu::add_into(dst.data(), src.data(), 37, true);
  for (size_t i = 0; i < dst.size(); ++i) CHECK(dst[i] == 0.5f + src[i]);
  cpu::add_into(dst.data(), src.data(), 37, false);
  CHECK(dst == src);
  cpu::add_into(dst.data(), dst.data(), 37, false);  // copy onto itself: unchanged
  CHECK(dst == src);
  cpu::add_into(dst.data(), dst.data(), 37, true);  // doubles
  for (size_t i = 0; i < dst.size(); ++i) CHECK(dst[i] == 2 * src[i]);
}

TEST_CASE("add: gradient check in double (backward is add_into of the output gradient)") {
  const int64_t n = 11;
  auto a = test::random_vector(n, 1), b = test::random_vector(n, 2), g = test::random_vector(n, 3);
  auto forward = [&] {
    std::vector<double> out(n);
    cpu::add(out.data(), a.data(), b.data(), n);
    return out;
  };
  std::vector<double> da(n, std::nan("")), db(n, 0.25);
  cpu::add_into(da.data(), g.data(), n, false);  // overwrite
  cpu::add_into(db.data(), g.data(), n, true);   // accumulate onto 0.25
  for (double& x : db) x -= 0.25;
  test::check_gradients("add", {{"a", &a, &da}, {"b", &b, &db}}, forward, g);
}
