// CPU reference of the gated grouped RMSNorm (Mamba-2's norm after the gate): known values,
// gradients in double with z as a column block of a fused buffer, gradient write modes, bad
// arguments.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/gated_rmsnorm.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {
double silu(double z) { return z / (1 + std::exp(-z)); }
}  // namespace

TEST_CASE("gated rmsnorm: known values - each group normalised on its own") {
  // silu(40) == 40 in double (1 + e^-40 rounds to 1), so v = 40 x exactly.
  // group 0: v = {120, 160}: mean v^2 = 20000;  group 1: v = {80, 80}: mean v^2 = 6400.
  GatedNormShape s{.rows = 1, .dim = 4, .group_size = 2, .eps = 1e-5f};
  std::vector<double> x{3, 4, 2, 2}, z{40, 40, 40, 40}, w{1, -2, 0.5, 3}, out(4);
  std::vector<double> rstd(2);
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), s);
  const double eps = double(1e-5f);
  const double r0 = 1 / std::sqrt(20000 + eps), r1 = 1 / std::sqrt(6400 + eps);
  CHECK(rstd[0] == doctest::Approx(r0).epsilon(1e-14));
  CHECK(rstd[1] == doctest::Approx(r1).epsilon(1e-14));
  CHECK(out[0] == doctest::Approx(120 * r0).epsilon(1e-14));  // ~0.8485
  CHECK(out[1] == doctest::Approx(-320 * r0).epsilon(1e-14));
  CHECK(out[2] == doctest::Approx(40 * r1).epsilon(1e-14));  // ~0.5
  CHECK(out[3] == doctest::Approx(240 * r1).epsilon(1e-14));  // ~3
  CHECK(out[3] == doctest::Approx(3.0).epsilon(1e-8));
}

TEST_CASE("gated rmsnorm: a closed gate gives zeros and rstd 1 over sqrt(eps)") {
  // silu(0) = 0: v = 0, so the group's mean square is 0.
  GatedNormShape s{.rows = 1, .dim = 3, .group_size = 3, .eps = 0.25f};
  std::vector<float> x{1, -2, 3}, z{0, 0, 0}, w{1, 1, 1}, out(3, 9.f), rstd(1);
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), s);
  CHECK(rstd[0] == 2.f);
  for (float o : out) CHECK(o == 0.f);
}

TEST_CASE("gated rmsnorm: matches an independent formula with a strided z") {
  GatedNormShape s{.rows = 4, .dim = 12, .group_size = 4, .z_stride = 15, .eps = 1e-5f};
  auto x = random_vector(size_t(s.rows * s.dim), 1, -2.f, 2.f);
  auto zbuf = random_vector(size_t(s.rows * s.zs()), 2, -3.f, 3.f);
  auto w = random_vector(size_t(s.dim), 3, 0.5f, 1.5f);
  const int64_t zoff = 2;  // z at columns 2..13 of the 15-wide buffer
  std::vector<double> out(x.size()), rstd(size_t(s.rows * 3));
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), zbuf.data() + zoff, w.data(), s);
  std::vector<double> ref(x.size()), rref(rstd.size());
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t g = 0; g < 3; ++g) {
      double ss = 0;
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t j = g * 4 + i;
        const double v = x[size_t(r * 12 + j)] * silu(zbuf[size_t(r * 15 + zoff + j)]);
        ss += v * v;
      }
      const double rs = 1 / std::sqrt(ss / 4 + double(s.eps));
      rref[size_t(r * 3 + g)] = rs;
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t j = g * 4 + i;
        ref[size_t(r * 12 + j)] =
            x[size_t(r * 12 + j)] * silu(zbuf[size_t(r * 15 + zoff + j)]) * rs * w[size_t(j)];
      }
    }
  test::require_close("gated rmsnorm out", out, ref, 1e-13);
  test::require_close("gated rmsnorm rstd", rstd, rref, 1e-13);
}

TEST_CASE("gated rmsnorm: gradient check of x z and w in double - z in a fused buffer") {
  GatedNormShape s{.rows = 3, .dim = 6, .group_size = 3, .z_stride = 9, .eps = 1e-5f};
  const int64_t zoff = 1;  // z at columns 1..6 of the 9-wide buffer: 0, 7, 8 are padding
  auto x = random_vector(size_t(s.rows * s.dim), 4, -2.f, 2.f);
  auto zbuf = random_vector(size_t(s.rows * s.zs()), 5, -3.f, 3.f);
  auto w = random_vector(size_t(s.dim), 6, 0.5f, 1.5f);
  auto g = random_vector(size_t(s.rows * s.dim), 7);
  std::vector<double> out(x.size()), rstd(size_t(s.rows * s.groups()));
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), zbuf.data() + zoff, w.data(), s);
  const double sentinel = -3.5;
  std::vector<double> dx(x.size()), dzbuf(zbuf.size(), sentinel), dw(w.size());
  cpu::gated_rmsnorm_backward(dx.data(), dzbuf.data() + zoff, dw.data(), g.data(), x.data(),
                              zbuf.data() + zoff, w.data(), rstd.data(), s, false, false);
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t j : {int64_t(0), int64_t(7), int64_t(8)}) {
      CHECK(dzbuf[size_t(r * s.zs() + j)] == sentinel);
      dzbuf[size_t(r * s.zs() + j)] = 0;  // not read by the forward
    }
  auto forward = [&] {
    std::vector<double> o(x.size());
    cpu::gated_rmsnorm_forward<double>(o.data(), nullptr, x.data(), zbuf.data() + zoff, w.data(), s);
    return o;
  };
  test::check_gradients("gated rmsnorm", {{"x", &x, &dx}, {"z", &zbuf, &dzbuf}, {"w", &w, &dw}},
                        forward, g);
}

TEST_CASE("gated rmsnorm: gradient check with one group per row and large gate values") {
  GatedNormShape s{.rows = 2, .dim = 5, .group_size = 5, .eps = 1e-3f};
  auto x = random_vector(size_t(s.rows * s.dim), 8, -1.f, 1.f);
  auto z = random_vector(size_t(s.rows * s.dim), 9, -12.f, 12.f);
  auto w = random_vector(size_t(s.dim), 10, -1.5f, 1.5f);
  auto g = random_vector(size_t(s.rows * s.dim), 11);
  std::vector<double> out(x.size()), rstd(2), dx(x.size()), dz(z.size()), dw(w.size());
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), s);
  cpu::gated_rmsnorm_backward(dx.data(), dz.data(), dw.data(), g.data(), x.data(), z.data(),
                              w.data(), rstd.data(), s, false, false);
  auto forward = [&] {
    std::vector<double> o(x.size());
    cpu::gated_rmsnorm_forward<double>(o.data(), nullptr, x.data(), z.data(), w.data(), s);
    return o;
  };
  test::check_gradients("gated rmsnorm one group", {{"x", &x, &dx}, {"z", &z, &dz}, {"w", &w, &dw}},
                        forward, g);
}

TEST_CASE("gated rmsnorm: backward overwrites or accumulates into pre-filled gradients") {
  GatedNormShape s{.rows = 4, .dim = 8, .group_size = 4, .z_stride = 10};
  auto x = random_vector(size_t(s.rows * s.dim), 12, -2.f, 2.f);
  auto z = random_vector(size_t(s.rows * s.zs()), 13, -3.f, 3.f);
  auto w = random_vector(size_t(s.dim), 14);
  auto g = random_vector(size_t(s.rows * s.dim), 15);
  std::vector<double> out(x.size()), rstd(size_t(s.rows * 2));
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), s);
  std::vector<double> dx_ref(x.size(), 0.0), dz_ref(z.size(), 0.0), dw_ref(w.size(), 0.0);
  cpu::gated_rmsnorm_backward(dx_ref.data(), dz_ref.data(), dw_ref.data(), g.data(), x.data(),
                              z.data(), w.data(), rstd.data(), s, true, true);
  for (bool acc_in : {false, true})
    for (bool acc_w : {false, true}) {
      CAPTURE(acc_in);
      CAPTURE(acc_w);
      std::vector<double> dx(x.size(), 0.5), dz(z.size(), 0.25), dw(w.size(), -1.5);
      cpu::gated_rmsnorm_backward(dx.data(), dz.data(), dw.data(), g.data(), x.data(), z.data(),
                                  w.data(), rstd.data(), s, acc_in, acc_w);
      for (size_t i = 0; i < dx.size(); ++i)
        CHECK(dx[i] == doctest::Approx(dx_ref[i] + (acc_in ? 0.5 : 0.0)).epsilon(1e-14));
      for (int64_t r = 0; r < s.rows; ++r)
        for (int64_t j = 0; j < s.zs(); ++j) {
          const size_t i = size_t(r * s.zs() + j);
          if (j < s.dim)
            CHECK(dz[i] == doctest::Approx(dz_ref[i] + (acc_in ? 0.25 : 0.0)).epsilon(1e-14));
          else
            CHECK(dz[i] == 0.25);  // padding columns of z's stride are never written
        }
      for (size_t i = 0; i < dw.size(); ++i)
        CHECK(dw[i] == doctest::Approx(dw_ref[i] + (acc_w ? -1.5 : 0.0)).epsilon(1e-14));
    }
}

TEST_CASE("gated rmsnorm: a frozen weight (dw == nullptr) gives the same dx and dz") {
  GatedNormShape s{.rows = 3, .dim = 6, .group_size = 2};
  auto x = random_vector<float>(size_t(s.rows * s.dim), 16, -2.f, 2.f);
  auto z = random_vector<float>(size_t(s.rows * s.dim), 17, -3.f, 3.f);
  auto w = random_vector<float>(size_t(s.dim), 18);
  auto g = random_vector<float>(size_t(s.rows * s.dim), 19);
  std::vector<float> out(x.size()), rstd(size_t(s.rows * 3));
  cpu::gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), s);
  std::vector<float> dx(x.size()), dz(z.size()), dw(w.size());
  cpu::gated_rmsnorm_backward(dx.data(), dz.data(), dw.data(), g.data(), x.data(), z.data(),
                              w.data(), rstd.data(), s, false, false);
  std::vector<float> dx2(x.size(), 7.f), dz2(z.size(), 7.f);
  cpu::gated_rmsnorm_backward<float>(dx2.data(), dz2.data(), nullptr, g.data(), x.data(), z.data(),
                                     w.data(), rstd.data(), s, false, false);
  CHECK(dx2 == dx);
  CHECK(dz2 == dz);
}

TEST_CASE("gated rmsnorm: zero rows need no rstd and only reset an overwritten dw") {
  GatedNormShape s{.rows = 0, .dim = 3, .group_size = 3};
  std::vector<float> w{1, 2, 3}, dw(3, 4.f);
  float* none = nullptr;
  cpu::gated_rmsnorm_forward<float>(none, nullptr, none, none, w.data(), s);
  cpu::gated_rmsnorm_backward<float>(none, none, dw.data(), none, none, none, w.data(), nullptr, s,
                                     false, true);
  CHECK(dw == std::vector<float>(3, 4.f));
  cpu::gated_rmsnorm_backward<float>(none, none, dw.data(), none, none, none, w.data(), nullptr, s,
                                     false, false);
  CHECK(dw == std::vector<float>(3, 0.f));
}

TEST_CASE("gated rmsnorm: float and bf16 instantiations agree with double") {
  GatedNormShape s{.rows = 5, .dim = 32, .group_size = 16, .z_stride = 40};
  auto xf = test::round_to_bf16(random_vector<float>(size_t(s.rows * s.dim), 20, -2.f, 2.f));
  auto zf = test::round_to_bf16(random_vector<float>(size_t(s.rows * s.zs()), 21, -3.f, 3.f));
  auto wf = test::round_to_bf16(random_vector<float>(size_t(s.dim), 22, 0.5f, 1.5f));
  auto gf = test::round_to_bf16(random_vector<float>(size_t(s.rows * s.dim), 23));
  auto xd = test::cast_vector<double>(xf), zd = test::cast_vector<double>(zf),
       wd = test::cast_vector<double>(wf), gd = test::cast_vector<double>(gf);
  const size_t nr = size_t(s.rows * s.groups());
  std::vector<double> out_d(xf.size()), rstd_d(nr), dx_d(xf.size()), dz_d(zf.size()), dw_d(wf.size());
  cpu::gated_rmsnorm_forward(out_d.data(), rstd_d.data(), xd.data(), zd.data(), wd.data(), s);
  cpu::gated_rmsnorm_backward(dx_d.data(), dz_d.data(), dw_d.data(), gd.data(), xd.data(),
                              zd.data(), wd.data(), rstd_d.data(), s, false, false);

  std::vector<float> out_f(xf.size()), rstd_f(nr), dx_f(xf.size()), dz_f(zf.size()), dw_f(wf.size());
  cpu::gated_rmsnorm_forward(out_f.data(), rstd_f.data(), xf.data(), zf.data(), wf.data(), s);
  cpu::gated_rmsnorm_backward(dx_f.data(), dz_f.data(), dw_f.data(), gf.data(), xf.data(),
                              zf.data(), wf.data(), rstd_f.data(), s, false, false);
  test::require_close("gated rmsnorm float out", out_f, out_d, 1e-6);
  test::require_close("gated rmsnorm float rstd", rstd_f, rstd_d, 1e-6);
  test::require_close("gated rmsnorm float dx", dx_f, dx_d, 1e-5);
  test::require_close("gated rmsnorm float dz", dz_f, dz_d, 1e-5);
  test::require_close("gated rmsnorm float dw", dw_f, dw_d, 1e-5);

  auto xb = test::cast_vector<bf16>(xf), zb = test::cast_vector<bf16>(zf),
       wb = test::cast_vector<bf16>(wf), gb = test::cast_vector<bf16>(gf);
  std::vector<bf16> out_b(xf.size()), dx_b(xf.size()), dz_b(zf.size()), dw_b(wf.size());
  std::vector<float> rstd_b(nr);
  cpu::gated_rmsnorm_forward(out_b.data(), rstd_b.data(), xb.data(), zb.data(), wb.data(), s);
  cpu::gated_rmsnorm_backward(dx_b.data(), dz_b.data(), dw_b.data(), gb.data(), xb.data(),
                              zb.data(), wb.data(), rstd_b.data(), s, false, false);
  test::require_close("gated rmsnorm bf16 out", out_b, out_d, 1e-2);
  test::require_close("gated rmsnorm bf16 dx", dx_b, dx_d, 1e-2);
  test::require_close("gated rmsnorm bf16 dz", dz_b, dz_d, 1e-2);
  test::require_close("gated rmsnorm bf16 dw", dw_b, dw_d, 1e-2);
}

TEST_CASE("gated rmsnorm: bad arguments are errors") {
  std::vector<float> a(64, 1.f), o(64), r(16);
  auto both_throw = [&](GatedNormShape s) {
    CHECK_THROWS_AS(cpu::gated_rmsnorm_forward(o.data(), r.data(), a.data(), a.data(), a.data(), s),
                    Error);
    CHECK_THROWS_AS(cpu::gated_rmsnorm_backward(o.data(), o.data(), o.data(), a.data(), a.data(),
                                                a.data(), a.data(), r.data(), s, false, false),
                    Error);
  };
  both_throw({.rows = -1, .dim = 4, .group_size = 2});
  both_throw({.rows = 2, .dim = 0, .group_size = 2});
  both_throw({.rows = 2, .dim = 4, .group_size = 0});
  both_throw({.rows = 2, .dim = 6, .group_size = 4});  // dim not a multiple of the group size
  both_throw({.rows = 2, .dim = 4, .group_size = 2, .z_stride = 3});
  both_throw({.rows = 2, .dim = 4, .group_size = 2, .eps = 0.f});
  both_throw({.rows = 2, .dim = 4, .group_size = 2, .eps = -1e-5f});
  both_throw({.rows = 2, .dim = 4, .group_size = 2, .eps = NAN});
  both_throw({.rows = 2, .dim = 4, .group_size = 2, .eps = INFINITY});
  GatedNormShape ok{.rows = 2, .dim = 4, .group_size = 2};
  CHECK_THROWS_AS(cpu::gated_rmsnorm_backward<float>(o.data(), o.data(), o.data(), a.data(), a.data(),
                                                     a.data(), a.data(), nullptr, ok, false, false),
                  Error);  // rstd is required when there are rows
  CHECK_NOTHROW(cpu::gated_rmsnorm_forward(o.data(), r.data(), a.data(), a.data(), a.data(), ok));
}
