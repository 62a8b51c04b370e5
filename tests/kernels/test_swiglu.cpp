// CPU reference of SwiGLU: known values, gradients in double, fused and separate layouts,
// gradient write modes.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <mil/kernels/swiglu.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {
// [rows, 2 * hidden] with gate in the first half of each row and up in the second.
std::vector<double> fuse(const std::vector<double>& gate, const std::vector<double>& up,
                         int64_t rows, int64_t hidden) {
  std::vector<double> f(size_t(rows * 2 * hidden));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < hidden; ++j) {
      f[size_t(r * 2 * hidden + j)] = gate[size_t(r * hidden + j)];
      f[size_t(r * 2 * hidden + hidden + j)] = up[size_t(r * hidden + j)];
    }
  return f;
}
}  // namespace

TEST_CASE("swiglu: known values - silu(g) x u") {
  std::vector<double> gate{0, 1, -1, 20, -20}, up{3, 2, 1, 0.5, 4}, out(5);
  cpu::swiglu_forward(out.data(), gate.data(), up.data(), 1, 5, 5);
  auto sig = [](double g) { return 1 / (1 + std::exp(-g)); };
  CHECK(out[0] == 0.0);
  CHECK(out[1] == doctest::Approx(2 * 0.7310585786300049).epsilon(1e-14));
  CHECK(out[2] == doctest::Approx(-0.2689414213699951).epsilon(1e-14));
  CHECK(out[3] == doctest::Approx(0.5 * 20 * sig(20)).epsilon(1e-14));
  CHECK(out[4] == doctest::Approx(-20 * sig(-20) * 4).epsilon(1e-12));
}

TEST_CASE("swiglu: large |gate| gives finite values and gradients in float") {
  std::vector<float> gate{-1000, -100, 100, 1000}, up{1, 2, 3, 4}, dout{1, 1, 1, 1}, out(4);
  std::vector<float> dg(4), du(4);
  cpu::swiglu_forward(out.data(), gate.data(), up.data(), 1, 4, 4);
  cpu::swiglu_backward(dg.data(), du.data(), dout.data(), gate.data(), up.data(), 1, 4, 4, false);
  for (int i = 0; i < 4; ++i) {
    CHECK(std::isfinite(out[i]));
    CHECK(std::isfinite(dg[i]));
    CHECK(std::isfinite(du[i]));
  }
  CHECK(out[3] == 4000.f);
  CHECK(dg[3] == 4.f);  // silu'(g) -> 1 for large g
  CHECK(dg[0] == 0.f);
}

TEST_CASE("swiglu: gradient check of gate and up in double - separate buffers") {
  const int64_t rows = 3, hidden = 5;
  auto gate = random_vector(rows * hidden, 1, -4.f, 4.f), up = random_vector(rows * hidden, 2);
  auto g = random_vector(rows * hidden, 3);
  std::vector<double> dgate(gate.size()), dup(up.size());
  cpu::swiglu_backward(dgate.data(), dup.data(), g.data(), gate.data(), up.data(), rows, hidden,
                       hidden, false);
  auto forward = [&] {
    std::vector<double> o(size_t(rows * hidden));
    cpu::swiglu_forward(o.data(), gate.data(), up.data(), rows, hidden, hidden);
    return o;
  };
  test::check_gradients("swiglu", {{"gate", &gate, &dgate}, {"up", &up, &dup}}, forward, g);
}

TEST_CASE("swiglu: gradient check in double - fused [rows - 2 x hidden] buffer") {
  const int64_t rows = 4, hidden = 3;
  auto gu = fuse(random_vector(rows * hidden, 4, -4.f, 4.f), random_vector(rows * hidden, 5), rows,
                 hidden);
  auto g = random_vector(rows * hidden, 6);
  std::vector<double> dgu(gu.size());
  cpu::swiglu_backward(dgu.data(), dgu.data() + hidden, g.data(), gu.data(), gu.data() + hidden,
                       rows, hidden, 2 * hidden, false);
  auto forward = [&] {
    std::vector<double> o(size_t(rows * hidden));
    cpu::swiglu_forward(o.data(), gu.data(), gu.data() + hidden, rows, hidden, 2 * hidden);
    return o;
  };
  test::check_gradients("swiglu fused", {{"gate_up", &gu, &dgu}}, forward, g);
}

TEST_CASE("swiglu: fused and separate layouts give the same results") {
  const int64_t rows = 5, hidden = 7;
  auto gate = random_vector(rows * hidden, 7, -3.f, 3.f), up = random_vector(rows * hidden, 8);
  auto dout = random_vector(rows * hidden, 9);
  auto gu = fuse(gate, up, rows, hidden);
  std::vector<double> out_s(gate.size()), out_f(gate.size(), 9.0);
  cpu::swiglu_forward(out_s.data(), gate.data(), up.data(), rows, hidden, hidden);
  cpu::swiglu_forward(out_f.data(), gu.data(), gu.data() + hidden, rows, hidden, 2 * hidden);
  CHECK(out_s == out_f);
  std::vector<double> dgate(gate.size()), dup(up.size()), dgu(gu.size(), 9.0);
  cpu::swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), rows, hidden,
                       hidden, false);
  cpu::swiglu_backward(dgu.data(), dgu.data() + hidden, dout.data(), gu.data(), gu.data() + hidden,
                       rows, hidden, 2 * hidden, false);
  CHECK(dgu == fuse(dgate, dup, rows, hidden));
}

TEST_CASE("swiglu: backward overwrites or accumulates into pre-filled gradients") {
  const int64_t rows = 3, hidden = 6;
  auto gate = random_vector(rows * hidden, 10, -3.f, 3.f), up = random_vector(rows * hidden, 11);
  auto dout = random_vector(rows * hidden, 12);
  std::vector<double> dg_ref(gate.size(), 0.0), du_ref(up.size(), 0.0);
  cpu::swiglu_backward(dg_ref.data(), du_ref.data(), dout.data(), gate.data(), up.data(), rows,
                       hidden, hidden, true);  // accumulate into zeros: the clean gradient
  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    std::vector<double> dg(gate.size(), 0.5), du(up.size(), -0.75);
    cpu::swiglu_backward(dg.data(), du.data(), dout.data(), gate.data(), up.data(), rows, hidden,
                         hidden, accumulate);
    for (size_t i = 0; i < dg.size(); ++i) {
      CHECK(dg[i] == doctest::Approx(dg_ref[i] + (accumulate ? 0.5 : 0.0)).epsilon(1e-14));
      CHECK(du[i] == doctest::Approx(du_ref[i] + (accumulate ? -0.75 : 0.0)).epsilon(1e-14));
    }
  }
}

TEST_CASE("swiglu: float and bf16 instantiations agree with double") {
  const int64_t rows = 4, hidden = 19;
  auto gf = test::round_to_bf16(random_vector<float>(rows * hidden, 13, -4.f, 4.f));
  auto uf = test::round_to_bf16(random_vector<float>(rows * hidden, 14));
  auto df = test::round_to_bf16(random_vector<float>(rows * hidden, 15));
  auto gd = test::cast_vector<double>(gf), ud = test::cast_vector<double>(uf),
       dd = test::cast_vector<double>(df);
  std::vector<double> out_d(gd.size()), dg_d(gd.size()), du_d(gd.size());
  cpu::swiglu_forward(out_d.data(), gd.data(), ud.data(), rows, hidden, hidden);
  cpu::swiglu_backward(dg_d.data(), du_d.data(), dd.data(), gd.data(), ud.data(), rows, hidden,
                       hidden, false);
  std::vector<float> out_f(gf.size()), dg_f(gf.size()), du_f(gf.size());
  cpu::swiglu_forward(out_f.data(), gf.data(), uf.data(), rows, hidden, hidden);
  cpu::swiglu_backward(dg_f.data(), du_f.data(), df.data(), gf.data(), uf.data(), rows, hidden,
                       hidden, false);
  test::require_close("swiglu float out", out_f, out_d, 1e-6);
  test::require_close("swiglu float dgate", dg_f, dg_d, 1e-6);
  test::require_close("swiglu float dup", du_f, du_d, 1e-6);
  auto gb = test::cast_vector<bf16>(gf), ub = test::cast_vector<bf16>(uf),
       db = test::cast_vector<bf16>(df);
  std::vector<bf16> out_b(gb.size()), dg_b(gb.size()), du_b(gb.size());
  cpu::swiglu_forward(out_b.data(), gb.data(), ub.data(), rows, hidden, hidden);
  cpu::swiglu_backward(dg_b.data(), du_b.data(), db.data(), gb.data(), ub.data(), rows, hidden,
                       hidden, false);
  test::require_close("swiglu bf16 out", out_b, out_d, 1e-2);
  test::require_close("swiglu bf16 dgate", dg_b, dg_d, 1e-2);
  test::require_close("swiglu bf16 dup", du_b, du_d, 1e-2);
}

TEST_CASE("swiglu: in_stride smaller than hidden is an error") {
  std::vector<float> x(8, 1.f), out(8);
  CHECK_THROWS_AS(cpu::swiglu_forward(out.data(), x.data(), x.data(), 2, 4, 3), Error);
}
