// CPU reference of RMSNorm: known values, gradients in double, gradient write modes.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/rmsnorm.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

TEST_CASE("rmsnorm: a constant row normalises to sign(c) x w") {
  const int64_t dim = 6;
  std::vector<double> w = random_vector(dim, 11, 0.5f, 2.f);
  for (double c : {3.0, -0.25}) {
    std::vector<double> x(dim, c), out(dim);
    double rstd = 0;
    cpu::rmsnorm_forward(out.data(), &rstd, x.data(), w.data(), 1, dim, 0.f);
    CHECK(rstd == doctest::Approx(1.0 / std::fabs(c)).epsilon(1e-14));
    for (int64_t i = 0; i < dim; ++i)
      CHECK(out[i] == doctest::Approx((c > 0 ? 1 : -1) * w[i]).epsilon(1e-14));
  }
}

TEST_CASE("rmsnorm: known values of a small row - eps inside the square root") {
  // mean(x^2) = (1 + 4 + 9 + 16) / 4 = 7.5
  const float eps = 0.5f;
  std::vector<float> x{1, 2, 3, 4}, w{1, 0.5f, 2, -1}, out(4);
  float rstd = 0;
  cpu::rmsnorm_forward(out.data(), &rstd, x.data(), w.data(), 1, 4, eps);
  const double r = 1.0 / std::sqrt(8.0);
  CHECK(rstd == doctest::Approx(r).epsilon(1e-6));
  const double expect[4] = {1 * r, 2 * r * 0.5, 3 * r * 2, -4 * r};
  for (int i = 0; i < 4; ++i) CHECK(out[i] == doctest::Approx(expect[i]).epsilon(1e-6));
  // rstd may be left out.
  std::vector<float> out2(4);
  cpu::rmsnorm_forward<float>(out2.data(), nullptr, x.data(), w.data(), 1, 4, eps);
  CHECK(out2 == out);
}

TEST_CASE("rmsnorm: gradient check of x and w in double") {
  const int64_t rows = 3, dim = 7;
  const float eps = 1e-5f;
  std::vector<double> x = random_vector(rows * dim, 1), w = random_vector(dim, 2, 0.5f, 1.5f);
  std::vector<double> g = random_vector(rows * dim, 3);
  std::vector<double> rstd(rows), out(rows * dim), dx(rows * dim), dw(dim);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, dim, eps);
  cpu::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), rows, dim,
                        false, false);
  auto forward = [&] {
    std::vector<double> o(rows * dim);
    cpu::rmsnorm_forward<double>(o.data(), nullptr, x.data(), w.data(), rows, dim, eps);
    return o;
  };
  test::check_gradients("rmsnorm", {{"x", &x, &dx}, {"w", &w, &dw}}, forward, g);
}

TEST_CASE("rmsnorm: backward overwrites or accumulates into pre-filled gradients") {
  const int64_t rows = 4, dim = 9;
  std::vector<double> x = random_vector(rows * dim, 4), w = random_vector(dim, 5);
  std::vector<double> g = random_vector(rows * dim, 6);
  std::vector<double> rstd(rows), out(rows * dim);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6f);
  std::vector<double> dx_ref(rows * dim, 0.0), dw_ref(dim, 0.0);
  cpu::rmsnorm_backward(dx_ref.data(), dw_ref.data(), g.data(), x.data(), w.data(), rstd.data(),
                        rows, dim, true, true);  // accumulate into zeros: the clean gradient
  for (bool acc_dx : {false, true})
    for (bool acc_dw : {false, true}) {
      CAPTURE(acc_dx);
      CAPTURE(acc_dw);
      std::vector<double> dx(rows * dim, 0.5), dw(dim, -0.25);
      cpu::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), rows,
                            dim, acc_dx, acc_dw);
      for (int64_t i = 0; i < rows * dim; ++i)
        CHECK(dx[i] == doctest::Approx(dx_ref[i] + (acc_dx ? 0.5 : 0.0)).epsilon(1e-14));
      for (int64_t i = 0; i < dim; ++i)
        CHECK(dw[i] == doctest::Approx(dw_ref[i] + (acc_dw ? -0.25 : 0.0)).epsilon(1e-14));
    }
}

TEST_CASE("rmsnorm: a frozen weight (dw == nullptr) gives the same dx") {
  const int64_t rows = 5, dim = 8;
  std::vector<float> x = random_vector<float>(rows * dim, 7), w = random_vector<float>(dim, 8);
  std::vector<float> g = random_vector<float>(rows * dim, 9);
  std::vector<float> rstd(rows), out(rows * dim), dx(rows * dim), dx_frozen(rows * dim, 3.f);
  std::vector<float> dw(dim);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6f);
  cpu::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), rows, dim,
                        false, false);
  cpu::rmsnorm_backward<float>(dx_frozen.data(), nullptr, g.data(), x.data(), w.data(), rstd.data(),
                               rows, dim, false, false);
  CHECK(dx_frozen == dx);
}

TEST_CASE("rmsnorm: zero rows write a zero dw when overwriting and keep it when accumulating") {
  std::vector<float> w{1, 2, 3}, dw(3, 4.f), rstd(1);
  float* none = nullptr;
  cpu::rmsnorm_backward<float>(none, dw.data(), none, none, w.data(), rstd.data(), 0, 3, false,
                               true);
  CHECK(dw == std::vector<float>(3, 4.f));
  cpu::rmsnorm_backward<float>(none, dw.data(), none, none, w.data(), rstd.data(), 0, 3, false,
                               false);
  CHECK(dw == std::vector<float>(3, 0.f));
}

TEST_CASE("rmsnorm: float and bf16 instantiations agree with double") {
  const int64_t rows = 6, dim = 33;
  auto xd = random_vector(rows * dim, 12, -2.f, 2.f), wd = random_vector(dim, 13);
  auto gd = random_vector(rows * dim, 14);
  // bf16-representable inputs so that all three precisions see the same numbers
  auto xf = test::round_to_bf16(test::cast_vector<float>(xd));
  auto wf = test::round_to_bf16(test::cast_vector<float>(wd));
  auto gf = test::round_to_bf16(test::cast_vector<float>(gd));
  auto xr = test::cast_vector<double>(xf), wr = test::cast_vector<double>(wf),
       gr = test::cast_vector<double>(gf);
  std::vector<double> out_d(rows * dim), rstd_d(rows), dx_d(rows * dim), dw_d(dim);
  cpu::rmsnorm_forward(out_d.data(), rstd_d.data(), xr.data(), wr.data(), rows, dim, 1e-5f);
  cpu::rmsnorm_backward(dx_d.data(), dw_d.data(), gr.data(), xr.data(), wr.data(), rstd_d.data(),
                        rows, dim, false, false);

  std::vector<float> out_f(rows * dim), rstd_f(rows), dx_f(rows * dim), dw_f(dim);
  cpu::rmsnorm_forward(out_f.data(), rstd_f.data(), xf.data(), wf.data(), rows, dim, 1e-5f);
  cpu::rmsnorm_backward(dx_f.data(), dw_f.data(), gf.data(), xf.data(), wf.data(), rstd_f.data(),
                        rows, dim, false, false);
  test::require_close("rmsnorm float out", out_f, out_d, 1e-6);
  test::require_close("rmsnorm float rstd", rstd_f, rstd_d, 1e-6);
  test::require_close("rmsnorm float dx", dx_f, dx_d, 1e-6);
  test::require_close("rmsnorm float dw", dw_f, dw_d, 1e-6);

  auto xb = test::cast_vector<bf16>(xf), wb = test::cast_vector<bf16>(wf),
       gb = test::cast_vector<bf16>(gf);
  std::vector<bf16> out_b(rows * dim), dx_b(rows * dim), dw_b(dim);
  std::vector<float> rstd_b(rows);
  cpu::rmsnorm_forward(out_b.data(), rstd_b.data(), xb.data(), wb.data(), rows, dim, 1e-5f);
  cpu::rmsnorm_backward(dx_b.data(), dw_b.data(), gb.data(), xb.data(), wb.data(), rstd_b.data(),
                        rows, dim, false, false);
  test::require_close("rmsnorm bf16 out", out_b, out_d, 1e-2);
  test::require_close("rmsnorm bf16 dx", dx_b, dx_d, 1e-2);
  test::require_close("rmsnorm bf16 dw", dw_b, dw_d, 1e-2);
}

TEST_CASE("rmsnorm: bad arguments are errors") {
  std::vector<float> x(4, 1.f), w(4, 1.f), out(4), rstd(1);
  CHECK_THROWS_AS(cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), 1, 0, 1e-5f),
                  Error);
  CHECK_THROWS_AS(cpu::rmsnorm_backward<float>(out.data(), nullptr, x.data(), x.data(), w.data(),
                                               nullptr, 1, 4, false, false),
                  Error);
}
