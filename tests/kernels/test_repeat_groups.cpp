// CPU reference of the GQA-style group repeat: known values, strided input, gradients in double,
// gradient write modes, bad arguments.
#include <doctest/doctest.h>

#include <vector>

#include <mil/kernels/repeat_groups.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

TEST_CASE("repeat groups: known values with a strided input") {
  // 2 rows of 2 groups of 3, read from rows of 8 (2 padding columns), each group repeated twice.
  RepeatGroupsShape s{.rows = 2, .groups = 2, .group_size = 3, .repeat = 2, .in_stride = 8};
  std::vector<double> in{1, 2, 3, 4, 5, 6, -1, -1,  //
                         7, 8, 9, 10, 11, 12, -1, -1};
  std::vector<double> out(12 * 2, test::poison<double>());
  cpu::repeat_groups_forward(out.data(), in.data(), s);
  const std::vector<double> expect{1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6,  //
                                   7, 8, 9, 7, 8, 9, 10, 11, 12, 10, 11, 12};
  CHECK(out == expect);
  CHECK(s.out_width() == 12);
  CHECK(s.in_width() == 6);
}

TEST_CASE("repeat groups: backward sums the repeats and leaves padding columns alone") {
  RepeatGroupsShape s{.rows = 1, .groups = 2, .group_size = 2, .repeat = 3, .in_stride = 5};
  // out group k = 0..5 reads in group k / 3
  std::vector<double> dout{1, 2, 10, 20, 100, 200, 3, 4, 30, 40, 300, 400};
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    std::vector<double> din{0.5, 0.5, 0.5, 0.5, 99};
    cpu::repeat_groups_backward(din.data(), dout.data(), s, accumulate);
    const double base = accumulate ? 0.5 : 0.0;
    CHECK(din[0] == base + 111);
    CHECK(din[1] == base + 222);
    CHECK(din[2] == base + 333);
    CHECK(din[3] == base + 444);
    CHECK(din[4] == 99);  // padding
  }
}

TEST_CASE("repeat groups: repeat 1 is a copy of the row block") {
  RepeatGroupsShape s{.rows = 3, .groups = 4, .group_size = 2, .repeat = 1, .in_stride = 11};
  auto in = random_vector(size_t(s.rows * s.is()), 1);
  std::vector<double> out(size_t(s.rows * s.out_width()));
  cpu::repeat_groups_forward(out.data(), in.data(), s);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j = 0; j < 8; ++j) CHECK(out[size_t(r * 8 + j)] == in[size_t(r * 11 + j)]);
}

TEST_CASE("repeat groups: gradient check in double of a strided input") {
  RepeatGroupsShape s{.rows = 3, .groups = 3, .group_size = 2, .repeat = 3, .in_stride = 9};
  // The input block starts at column 1 of a 9-wide fused buffer: columns 0, 7, 8 are padding.
  const int64_t off = 1;
  auto buf = random_vector(size_t(s.rows * s.is()), 2);
  auto g = random_vector(size_t(s.rows * s.out_width()), 3);
  const double sentinel = 12.5;
  std::vector<double> dbuf(buf.size(), sentinel);
  cpu::repeat_groups_backward(dbuf.data() + off, g.data(), s, false);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j : {int64_t(0), int64_t(7), int64_t(8)}) {
      CHECK(dbuf[size_t(r * s.is() + j)] == sentinel);
      dbuf[size_t(r * s.is() + j)] = 0;  // the forward does not read them
    }
  auto forward = [&] {
    std::vector<double> o(size_t(s.rows * s.out_width()));
    cpu::repeat_groups_forward(o.data(), buf.data() + off, s);
    return o;
  };
  test::check_gradients("repeat groups", {{"in", &buf, &dbuf}}, forward, g);
}

TEST_CASE("repeat groups: backward overwrites or accumulates into pre-filled gradients") {
  RepeatGroupsShape s{.rows = 4, .groups = 2, .group_size = 5, .repeat = 4};
  auto dout = random_vector(size_t(s.rows * s.out_width()), 4);
  std::vector<double> ref(size_t(s.rows * s.in_width()), 0.0);
  cpu::repeat_groups_backward(ref.data(), dout.data(), s, true);  // into zeros: the clean gradient
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    std::vector<double> din(ref.size(), -0.75);
    cpu::repeat_groups_backward(din.data(), dout.data(), s, accumulate);
    for (size_t i = 0; i < din.size(); ++i)
      CHECK(din[i] == doctest::Approx(ref[i] + (accumulate ? -0.75 : 0.0)).epsilon(1e-14));
  }
}

TEST_CASE("repeat groups: zero rows touch nothing") {
  RepeatGroupsShape s{.rows = 0, .groups = 2, .group_size = 2, .repeat = 2};
  std::vector<float> in(1, 1.f), out(1, 3.f);
  cpu::repeat_groups_forward(out.data(), in.data(), s);
  cpu::repeat_groups_backward(in.data(), out.data(), s, false);
  CHECK(out[0] == 3.f);
  CHECK(in[0] == 1.f);
}

TEST_CASE("repeat groups: float and bf16 instantiations agree with double") {
  RepeatGroupsShape s{.rows = 5, .groups = 3, .group_size = 7, .repeat = 3, .in_stride = 23};
  auto inf = test::round_to_bf16(random_vector<float>(size_t(s.rows * s.is()), 5));
  auto gf = test::round_to_bf16(random_vector<float>(size_t(s.rows * s.out_width()), 6));
  auto ind = test::cast_vector<double>(inf), gd = test::cast_vector<double>(gf);
  std::vector<double> out_d(gf.size()), din_d(inf.size(), 0.0);
  cpu::repeat_groups_forward(out_d.data(), ind.data(), s);
  cpu::repeat_groups_backward(din_d.data(), gd.data(), s, false);

  std::vector<float> out_f(gf.size()), din_f(inf.size(), 0.f);
  cpu::repeat_groups_forward(out_f.data(), inf.data(), s);
  cpu::repeat_groups_backward(din_f.data(), gf.data(), s, false);
  CHECK(test::cast_vector<double>(out_f) == out_d);  // a copy is exact
  test::require_close("repeat groups float din", din_f, din_d, 1e-6);

  auto inb = test::cast_vector<bf16>(inf), gb = test::cast_vector<bf16>(gf);
  std::vector<bf16> out_b(gf.size()), din_b(inf.size(), bf16(0.f));
  cpu::repeat_groups_forward(out_b.data(), inb.data(), s);
  cpu::repeat_groups_backward(din_b.data(), gb.data(), s, false);
  CHECK(test::cast_vector<double>(out_b) == out_d);
  test::require_close("repeat groups bf16 din", din_b, din_d, 1e-2);
}

TEST_CASE("repeat groups: bad arguments are errors") {
  std::vector<float> a(64, 1.f), b(64);
  auto both_throw = [&](RepeatGroupsShape s) {
    CHECK_THROWS_AS(cpu::repeat_groups_forward(b.data(), a.data(), s), Error);
    CHECK_THROWS_AS(cpu::repeat_groups_backward(a.data(), b.data(), s, false), Error);
  };
  both_throw({.rows = -1, .groups = 2, .group_size = 2, .repeat = 2});
  both_throw({.rows = 2, .groups = 0, .group_size = 2, .repeat = 2});
  both_throw({.rows = 2, .groups = 2, .group_size = 0, .repeat = 2});
  both_throw({.rows = 2, .groups = 2, .group_size = 2, .repeat = 0});
  both_throw({.rows = 2, .groups = 2, .group_size = 2, .repeat = 2, .in_stride = 3});
  // in_stride == in_width is fine
  RepeatGroupsShape ok{.rows = 2, .groups = 2, .group_size = 2, .repeat = 2, .in_stride = 4};
  CHECK_NOTHROW(cpu::repeat_groups_forward(b.data(), a.data(), ok));
}
