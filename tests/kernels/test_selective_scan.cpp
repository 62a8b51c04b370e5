// CPU reference of the Mamba-1 selective scan (S6) with grouped B and C: known values, a closed
// form at two tokens and the quadratic form in general, gradients in double of every input and
// parameter (column blocks of one fused buffer, fewer B groups than C groups), gradient write
// modes, states across calls and slots, bad arguments, float and bf16.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <mil/kernels/selective_scan.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {

double softplus_ref(double v) { return std::log1p(std::exp(v)); }
double silu_ref(double v) { return v / (1 + std::exp(-v)); }

// One problem: u, delta, B, C and z are column blocks of one fused buffer [rows, W] laid out as
// [pad | u (Ch) | delta (Ch) | B (bg*N) | C (cg*N) | z (Ch) | pad]; the parameters are separate.
template <class T>
struct Sel {
  SelectiveScanShape s;
  int64_t W = 0, ou = 0, od = 0, ob = 0, oc = 0, oz = 0;
  std::vector<T> buf, delta_bias, A_log, D;
  bool use_z = true, use_D = true, use_bias = true;

  int64_t rows() const { return s.batch * s.seq; }
  const T* u() const { return buf.data() + ou; }
  const T* delta() const { return buf.data() + od; }
  const T* B() const { return buf.data() + ob; }
  const T* C() const { return buf.data() + oc; }
  const T* z() const { return use_z ? buf.data() + oz : nullptr; }
  const T* bias() const { return use_bias ? delta_bias.data() : nullptr; }
  const T* Dp() const { return use_D ? D.data() : nullptr; }
  // Which block a column is in: 0 u, 1 delta, 2 B, 3 C, 4 z, -1 padding.
  int block(int64_t col) const {
    if (col < ou || col >= oz + s.channels) return -1;
    return col < od ? 0 : col < ob ? 1 : col < oc ? 2 : col < oz ? 3 : 4;
  }
  template <class U>
  Sel<U> as() const {
    return {s, W, ou, od, ob, oc, oz, test::cast_vector<U>(buf), test::cast_vector<U>(delta_bias),
            test::cast_vector<U>(A_log), test::cast_vector<U>(D), use_z, use_D, use_bias};
  }
};

Sel<double> make_sel(int64_t batch, int64_t seq, int64_t Ch, int64_t N, int64_t bg, int64_t cg,
                     uint64_t seed, float bias_scale = 1.f, float alog_lo = -1.f,
                     float alog_hi = 1.f) {
  Sel<double> c;
  c.ou = 1;
  c.od = c.ou + Ch;
  c.ob = c.od + Ch;
  c.oc = c.ob + bg * N;
  c.oz = c.oc + cg * N;
  c.W = c.oz + Ch + 2;
  c.s = SelectiveScanShape{.batch = batch, .seq = seq, .channels = Ch, .d_state = N,
                           .b_groups = bg, .c_groups = cg, .u_stride = c.W, .delta_stride = c.W,
                           .b_stride = c.W, .c_stride = c.W, .z_stride = c.W,
                           .bias_scale = bias_scale};
  c.buf = random_vector(size_t(batch * seq * c.W), seed, -1.5f, 1.5f);
  c.delta_bias = random_vector(size_t(Ch), seed + 1, -1.f, 0.5f);
  c.A_log = random_vector(size_t(Ch * N), seed + 2, alog_lo, alog_hi);
  c.D = random_vector(size_t(Ch), seed + 3);
  return c;
}

template <class T>
std::vector<T> forward(const Sel<T>& c, const SelectiveStates& st = {}) {
  std::vector<T> y(size_t(c.rows() * c.s.channels), test::poison<T>());
  cpu::selective_scan_forward(y.data(), c.u(), c.delta(), c.bias(), c.A_log.data(), c.B(), c.C(),
                              c.Dp(), c.z(), c.s, st);
  return y;
}

template <class T>
struct Grads {
  std::vector<T> dbuf, ddelta_bias, dA_log, dD;
};

// Backward with the gradients pre-filled with `fill`; `mask` bit k enables field k of
// (du, ddelta, dB, dC, dz, ddelta_bias, dA_log, dD).
template <class T>
Grads<T> backward(const Sel<T>& c, const std::vector<T>& dy, T fill = T(0), bool acc_in = false,
                  bool acc_par = false, unsigned mask = 0xff) {
  Grads<T> g{std::vector<T>(c.buf.size(), fill), std::vector<T>(c.delta_bias.size(), fill),
             std::vector<T>(c.A_log.size(), fill), std::vector<T>(c.D.size(), fill)};
  auto on = [&](int k, T* p) { return (mask >> k) & 1u ? p : nullptr; };
  SelectiveScanGrads<T> gr{.du = on(0, g.dbuf.data() + c.ou), .ddelta = on(1, g.dbuf.data() + c.od),
                           .dB = on(2, g.dbuf.data() + c.ob), .dC = on(3, g.dbuf.data() + c.oc),
                           .dz = on(4, g.dbuf.data() + c.oz), .ddelta_bias = on(5, g.ddelta_bias.data()),
                           .dA_log = on(6, g.dA_log.data()), .dD = on(7, g.dD.data()),
                           .accumulate_inputs = acc_in, .accumulate_params = acc_par};
  cpu::selective_scan_backward(gr, dy.data(), c.u(), c.delta(), c.bias(), c.A_log.data(), c.B(),
                               c.C(), c.Dp(), c.z(), c.s);
  return g;
}

// The quadratic form, in double, from an optional initial state h0 [batch, channels, N]:
//   y_t = (sum_n C_tn [sum_{s<=t} exp(a_n sum_{r=s+1..t} dt_r) dt_s B_sn u_s
//                      + exp(a_n sum_{r<=t} dt_r) h0_n] + D u_t) silu(z_t)
// with channel c reading B group c / (channels / b_groups) and C group c / (channels / c_groups).
std::vector<double> quadratic_form(const Sel<double>& c, const std::vector<double>* h0 = nullptr) {
  const SelectiveScanShape& s = c.s;
  const int64_t Ch = s.channels, N = s.d_state;
  std::vector<double> y(size_t(c.rows() * Ch));
  auto at = [&](int64_t b, int64_t t, int64_t col) { return c.buf[size_t((b * s.seq + t) * c.W + col)]; };
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t ch = 0; ch < Ch; ++ch) {
      const int64_t gb = ch * s.b_groups / Ch, gc = ch * s.c_groups / Ch;
      const double bias = c.use_bias ? double(s.bias_scale) * c.delta_bias[size_t(ch)] : 0.0;
      std::vector<double> dt(size_t(s.seq));
      for (int64_t t = 0; t < s.seq; ++t) dt[size_t(t)] = softplus_ref(at(b, t, c.od + ch) + bias);
      for (int64_t t = 0; t < s.seq; ++t) {
        double out = c.use_D ? c.D[size_t(ch)] * at(b, t, c.ou + ch) : 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const double a = -std::exp(c.A_log[size_t(ch * N + n)]);
          double h = 0;
          for (int64_t u = 0; u <= t; ++u) {
            double sum_dt = 0;
            for (int64_t v = u + 1; v <= t; ++v) sum_dt += dt[size_t(v)];
            h += std::exp(a * sum_dt) * dt[size_t(u)] * at(b, u, c.ob + gb * N + n) * at(b, u, c.ou + ch);
          }
          if (h0) {
            double sum_dt = 0;
            for (int64_t v = 0; v <= t; ++v) sum_dt += dt[size_t(v)];
            h += std::exp(a * sum_dt) * (*h0)[size_t((b * Ch + ch) * N + n)];
          }
          out += at(b, t, c.oc + gc * N + n) * h;
        }
        y[size_t((b * s.seq + t) * Ch + ch)] = c.use_z ? out * silu_ref(at(b, t, c.oz + ch)) : out;
      }
    }
  return y;
}

// Gradient check of every input and parameter; padding columns of the fused gradient buffer (and
// the z block when z is absent) keep their pre-filled value.
void gradcheck(Sel<double> c, const char* what) {
  auto g = random_vector(size_t(c.rows() * c.s.channels), 98);
  const double sentinel = -41.5;
  Grads<double> d = backward(c, g, sentinel);
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t col = 0; col < c.W; ++col)
      if (c.block(col) < 0 || (!c.use_z && c.block(col) == 4)) {
        CHECK(d.dbuf[size_t(r * c.W + col)] == sentinel);
        d.dbuf[size_t(r * c.W + col)] = 0;  // the forward does not read these
      }
  std::vector<test::GradInput> inputs{{"u delta B C z", &c.buf, &d.dbuf},
                                      {"A_log", &c.A_log, &d.dA_log}};
  if (c.use_bias) inputs.push_back({"delta_bias", &c.delta_bias, &d.ddelta_bias});
  if (c.use_D) inputs.push_back({"D", &c.D, &d.dD});
  auto fwd = [&] { return forward(c); };
  test::check_gradients(what, inputs, fwd, g);
}

}  // namespace

TEST_CASE("selective scan: known values without decay are exact - doubled dt bias") {
  // A_log = -1000: a = -0 and the decay is 1. delta 19 + bias_scale x bias 2 is past the softplus
  // threshold: dt = 23 with bias_scale 2 and 21 with bias_scale 1.
  SelectiveScanShape s{.batch = 1, .seq = 2, .channels = 1, .d_state = 1, .b_groups = 1,
                       .c_groups = 1, .bias_scale = 2.f};
  std::vector<double> u{1, -2}, delta{19, 19}, bias{2}, A_log{-1000}, B{1, 0.5}, C{2, 3}, D{0.5};
  std::vector<double> y(2);
  cpu::selective_scan_forward<double>(y.data(), u.data(), delta.data(), bias.data(), A_log.data(),
                                      B.data(), C.data(), D.data(), nullptr, s);
  // h = 23, 23 - 23 = 0:  y = 2 x 23 + 0.5 = 46.5,  3 x 0 - 1 = -1
  CHECK(y == std::vector<double>{46.5, -1});
  s.bias_scale = 1.f;  // h = 21, 0
  cpu::selective_scan_forward<double>(y.data(), u.data(), delta.data(), bias.data(), A_log.data(),
                                      B.data(), C.data(), D.data(), nullptr, s);
  CHECK(y == std::vector<double>{42.5, -1});
  // a gate z = 40: silu(40) == 40 in double
  std::vector<double> z{40, 40};
  cpu::selective_scan_forward<double>(y.data(), u.data(), delta.data(), bias.data(), A_log.data(),
                                      B.data(), C.data(), D.data(), z.data(), s);
  CHECK(y == std::vector<double>{1700, -40});
  // no D: 42 and 0
  cpu::selective_scan_forward<double>(y.data(), u.data(), delta.data(), bias.data(), A_log.data(),
                                      B.data(), C.data(), nullptr, nullptr, s);
  CHECK(y == std::vector<double>{42, 0});
}

TEST_CASE("selective scan: known values with two states and a decay of one half") {
  // dt = 21 (no bias); a = -ln 2 / 21 for state 0 (decay 1/2) and -2 ln 2 / 21 (decay 1/4).
  SelectiveScanShape s{.batch = 1, .seq = 2, .channels = 1, .d_state = 2, .b_groups = 1,
                       .c_groups = 1};
  const double l = std::log(std::log(2.0) / 21);
  std::vector<double> u{2, 1}, delta{21, 21}, A_log{l, l + std::log(2.0)}, B{1, 2, 4, 0},
      C{1, 1, 1, -1}, y(2);
  cpu::selective_scan_forward<double>(y.data(), u.data(), delta.data(), nullptr, A_log.data(),
                                      B.data(), C.data(), nullptr, nullptr, s);
  // h_1 = 21 x 2 x (1, 2) = (42, 84): y = 126
  // h_2 = (21, 21) + 21 x 1 x (4, 0) = (105, 21): y = 105 - 21 = 84
  CHECK(y[0] == doctest::Approx(126).epsilon(1e-14));
  CHECK(y[1] == doctest::Approx(84).epsilon(1e-13));
}

TEST_CASE("selective scan: closed form at two tokens with grouped B and C") {
  // 8 channels, B in 2 groups (channels 0-3, 4-7), C in 4 groups (pairs of channels)
  auto c = make_sel(2, 2, 8, 3, 2, 4, 10, 2.f);
  auto y = forward(c);
  const int64_t gB[8] = {0, 0, 0, 0, 1, 1, 1, 1}, gC[8] = {0, 0, 1, 1, 2, 2, 3, 3};
  const int64_t N = 3;
  std::vector<double> ref(y.size());
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t ch = 0; ch < 8; ++ch) {
      auto at = [&](int64_t t, int64_t col) { return c.buf[size_t((b * 2 + t) * c.W + col)]; };
      const double u1 = at(0, c.ou + ch), u2 = at(1, c.ou + ch);
      const double dt1 = softplus_ref(at(0, c.od + ch) + 2 * c.delta_bias[size_t(ch)]);
      const double dt2 = softplus_ref(at(1, c.od + ch) + 2 * c.delta_bias[size_t(ch)]);
      double y1 = c.D[size_t(ch)] * u1, y2 = c.D[size_t(ch)] * u2;
      for (int64_t n = 0; n < N; ++n) {
        const double a = -std::exp(c.A_log[size_t(ch * N + n)]);
        const double h1 = dt1 * at(0, c.ob + gB[ch] * N + n) * u1;
        const double h2 = std::exp(dt2 * a) * h1 + dt2 * at(1, c.ob + gB[ch] * N + n) * u2;
        y1 += at(0, c.oc + gC[ch] * N + n) * h1;
        y2 += at(1, c.oc + gC[ch] * N + n) * h2;
      }
      ref[size_t((b * 2) * 8 + ch)] = y1 * silu_ref(at(0, c.oz + ch));
      ref[size_t((b * 2 + 1) * 8 + ch)] = y2 * silu_ref(at(1, c.oz + ch));
    }
  test::require_close("selective scan seq 2", y, ref, 1e-13);
}

TEST_CASE("selective scan: matches the quadratic form with and without z D and bias") {
  for (int variant = 0; variant < 4; ++variant) {
    CAPTURE(variant);
    auto c = make_sel(2, 9, 12, 4, 3, 6, 20 + uint64_t(variant), variant == 1 ? 2.f : 1.f);
    c.use_z = variant != 2;
    c.use_D = variant != 3;
    c.use_bias = variant != 3;
    test::require_close("selective scan vs quadratic form", forward(c), quadratic_form(c), 1e-12);
  }
  // Packed inputs and a strided output give the same values.
  auto c = make_sel(1, 5, 4, 2, 1, 2, 30);
  SelectiveScanShape packed = c.s;
  packed.u_stride = packed.delta_stride = packed.b_stride = packed.c_stride = packed.z_stride = 0;
  packed.y_stride = 6;
  std::vector<double> blocks[5];
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t col = 0; col < c.W; ++col)
      if (c.block(col) >= 0) blocks[c.block(col)].push_back(c.buf[size_t(r * c.W + col)]);
  std::vector<double> y(size_t(c.rows() * 6), 8.5);
  cpu::selective_scan_forward(y.data(), blocks[0].data(), blocks[1].data(), c.delta_bias.data(),
                              c.A_log.data(), blocks[2].data(), blocks[3].data(), c.D.data(),
                              blocks[4].data(), packed);
  const auto ref = forward(c);
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t j = 0; j < 6; ++j)
      CHECK(y[size_t(r * 6 + j)] == (j < 4 ? ref[size_t(r * 4 + j)] : 8.5));
}

TEST_CASE("selective scan: gradient check in double - fused buffer and b_groups below c_groups") {
  gradcheck(make_sel(2, 6, 8, 3, 2, 4, 40, 2.f), "selective scan bias_scale 2");
  gradcheck(make_sel(1, 7, 6, 2, 1, 3, 41), "selective scan one B group");
  gradcheck(make_sel(2, 5, 4, 2, 4, 4, 42), "selective scan ungrouped");
  auto bare = make_sel(2, 6, 8, 3, 2, 4, 43);
  bare.use_z = bare.use_D = bare.use_bias = false;
  gradcheck(bare, "selective scan without z D and bias");
}

TEST_CASE("selective scan: gradient check in double over a long sequence") {
  gradcheck(make_sel(1, 80, 4, 2, 1, 2, 50, 1.f, -4.f, -2.f), "selective scan seq 80");
}

TEST_CASE("selective scan: backward overwrites or accumulates into pre-filled gradients") {
  auto c = make_sel(2, 7, 8, 3, 2, 4, 60, 2.f);
  auto dy = random_vector(size_t(c.rows() * 8), 61);
  Grads<double> ref = backward(c, dy, 0.0, true, true);  // into zeros: the clean gradient
  for (bool acc_in : {false, true})
    for (bool acc_par : {false, true}) {
      CAPTURE(acc_in);
      CAPTURE(acc_par);
      const double fill = 0.375;
      Grads<double> d = backward(c, dy, fill, acc_in, acc_par);
      for (int64_t r = 0; r < c.rows(); ++r)
        for (int64_t col = 0; col < c.W; ++col) {
          const size_t i = size_t(r * c.W + col);
          const bool pad = c.block(col) < 0;
          CHECK(d.dbuf[i] == doctest::Approx(ref.dbuf[i] + (pad || acc_in ? fill : 0.0)).epsilon(1e-14));
        }
      const double add = acc_par ? fill : 0.0;
      for (size_t i = 0; i < ref.dA_log.size(); ++i)
        CHECK(d.dA_log[i] == doctest::Approx(ref.dA_log[i] + add).epsilon(1e-14));
      for (size_t i = 0; i < ref.dD.size(); ++i) {
        CHECK(d.dD[i] == doctest::Approx(ref.dD[i] + add).epsilon(1e-14));
        CHECK(d.ddelta_bias[i] == doctest::Approx(ref.ddelta_bias[i] + add).epsilon(1e-14));
      }
    }
}

TEST_CASE("selective scan: null gradients are skipped and the others unchanged") {
  auto c = make_sel(1, 6, 4, 2, 1, 2, 70);
  auto dy = random_vector(size_t(c.rows() * 4), 71);
  const double fill = -2.25;
  Grads<double> full = backward(c, dy, fill);
  Grads<double> none = backward(c, dy, fill, false, false, 0u);
  CHECK(none.dbuf == std::vector<double>(c.buf.size(), fill));
  CHECK(none.ddelta_bias == std::vector<double>(4, fill));
  CHECK(none.dA_log == std::vector<double>(8, fill));
  CHECK(none.dD == std::vector<double>(4, fill));
  for (int k = 0; k < 8; ++k) {
    CAPTURE(k);
    Grads<double> one = backward(c, dy, fill, false, false, 1u << k);
    for (int64_t r = 0; r < c.rows(); ++r)
      for (int64_t col = 0; col < c.W; ++col) {
        const size_t i = size_t(r * c.W + col);
        CHECK(one.dbuf[i] == (c.block(col) == k ? full.dbuf[i] : fill));
      }
    CHECK(one.ddelta_bias == (k == 5 ? full.ddelta_bias : std::vector<double>(4, fill)));
    CHECK(one.dA_log == (k == 6 ? full.dA_log : std::vector<double>(8, fill)));
    CHECK(one.dD == (k == 7 ? full.dD : std::vector<double>(4, fill)));
  }
}

TEST_CASE("selective scan: zero tokens reset overwritten parameter gradients and keep accumulated ones") {
  auto c = make_sel(1, 0, 4, 2, 1, 2, 80);
  std::vector<double> dy;
  Grads<double> keep = backward(c, dy, 3.0, true, true);
  CHECK(keep.dA_log == std::vector<double>(8, 3.0));
  CHECK(keep.dD == std::vector<double>(4, 3.0));
  Grads<double> over = backward(c, dy, 3.0, false, false);
  CHECK(over.dA_log == std::vector<double>(8, 0.0));
  CHECK(over.dD == std::vector<double>(4, 0.0));
  CHECK(over.ddelta_bias == std::vector<double>(4, 0.0));
  CHECK(forward(c).empty());
}

TEST_CASE("selective scan: states - a sequence split into calls equals one call") {
  const int64_t T = 37;
  auto c = make_sel(1, T, 8, 4, 2, 4, 90, 2.f);
  const auto ref = forward(c);
  std::vector<float> state_one(size_t(c.s.state_size()), 0.f);
  int32_t slot = 0;
  CHECK(forward(c, SelectiveStates{state_one.data(), 1, &slot}) == ref);
  auto run = [&](auto cc, const std::vector<int64_t>& chunks, std::vector<float>& state) {
    std::vector<typename decltype(cc.buf)::value_type> y;
    int64_t t0 = 0;
    for (int64_t n : chunks) {
      auto part = cc;  // rows [t0, t0 + n) of the same buffer
      part.s.seq = n;
      part.buf.erase(part.buf.begin(), part.buf.begin() + t0 * cc.W);
      part.buf.resize(size_t(n * cc.W));
      auto yc = forward(part, SelectiveStates{state.data(), 1, &slot});
      y.insert(y.end(), yc.begin(), yc.end());
      t0 += n;
    }
    return y;
  };
  for (const std::vector<int64_t>& chunks :
       {std::vector<int64_t>{5, 1, 1, 30}, std::vector<int64_t>{1, 36}, std::vector<int64_t>(37, 1)}) {
    CAPTURE(chunks.size());
    std::vector<float> state(size_t(c.s.state_size()), 0.f);
    auto y = run(c, chunks, state);
    test::require_close("selective scan chunked", y, ref, 1e-6);  // fp32 state between calls
    test::require_close("selective scan chunked final state", state, state_one, 1e-6);
  }
  // in float and bf16 (fp32 accumulation) the state is stored exactly: bitwise equal
  auto exact = [&](auto cf) {
    std::vector<float> s1(size_t(c.s.state_size()), 0.f), s2(s1);
    auto yf = forward(cf, SelectiveStates{s1.data(), 1, &slot});
    auto ycf = run(cf, {5, 1, 1, 30}, s2);
    CHECK(test::bytes_of(ycf) == test::bytes_of(yf));
    CHECK(test::bytes_of(s2) == test::bytes_of(s1));
    test::require_close("selective scan low precision with states", yf, ref, 1e-2);
  };
  exact(c.as<float>());
  exact(c.as<bf16>());
}

TEST_CASE("selective scan: states - an initial state decays into the output") {
  auto c = make_sel(2, 6, 8, 3, 2, 4, 100, 2.f);
  const size_t ss = size_t(c.s.state_size());
  auto h0 = random_vector<float>(2 * ss, 101);
  auto h0d = test::cast_vector<double>(h0);
  std::vector<double> h0_rows(h0d.size());  // batch row 0 uses slot 1, row 1 slot 0
  std::copy(h0d.begin() + ss, h0d.end(), h0_rows.begin());
  std::copy(h0d.begin(), h0d.begin() + ss, h0_rows.begin() + ss);
  int32_t slots[2] = {1, 0};
  auto y = forward(c, SelectiveStates{h0.data(), 2, slots});
  test::require_close("selective scan from a state", y, quadratic_form(c, &h0_rows), 1e-12);
}

TEST_CASE("selective scan: states - two slots do not interfere") {
  const int64_t T = 12;
  auto c = make_sel(2, T, 4, 2, 1, 2, 110);
  const auto ref = forward(c);
  const int64_t ss = c.s.state_size();
  const float sentinel = -99.f;
  std::vector<float> states(size_t(3 * ss), 0.f);
  std::fill(states.begin() + ss, states.begin() + 2 * ss, sentinel);  // slot 1 unused
  int32_t slots[2] = {0, 2};
  std::vector<double> y0, y1;
  int64_t t0 = 0;
  for (int64_t n : {5, 1, 1, 5}) {
    auto part = c;
    part.s.seq = n;
    part.buf.clear();
    for (int64_t b = 0; b < 2; ++b)
      part.buf.insert(part.buf.end(), c.buf.begin() + (b * T + t0) * c.W,
                      c.buf.begin() + (b * T + t0 + n) * c.W);
    auto yc = forward(part, SelectiveStates{states.data(), 3, slots});
    y0.insert(y0.end(), yc.begin(), yc.begin() + n * 4);
    y1.insert(y1.end(), yc.begin() + n * 4, yc.end());
    t0 += n;
  }
  test::require_close("selective scan slot sequence 0", y0,
                      std::vector<double>(ref.begin(), ref.begin() + T * 4), 1e-6);
  test::require_close("selective scan slot sequence 1", y1,
                      std::vector<double>(ref.begin() + T * 4, ref.end()), 1e-6);
  for (int64_t i = 0; i < ss; ++i) CHECK(states[size_t(ss + i)] == sentinel);
}

TEST_CASE("selective scan: float and bf16 instantiations agree with double") {
  auto c = make_sel(2, 20, 32, 16, 2, 4, 120, 2.f);
  for (std::vector<double>* v : {&c.buf, &c.delta_bias, &c.A_log, &c.D})
    *v = test::cast_vector<double>(test::cast_vector<bf16>(*v));
  auto dy = test::cast_vector<double>(test::cast_vector<bf16>(random_vector(size_t(c.rows() * 32), 121)));
  auto y_d = forward(c);
  auto g_d = backward(c, dy);
  auto cf = c.as<float>();
  auto y_f = forward(cf);
  auto g_f = backward(cf, test::cast_vector<float>(dy));
  test::require_close("selective scan float y", y_f, y_d, 1e-5);
  test::require_close("selective scan float du ddelta dB dC dz", g_f.dbuf, g_d.dbuf, 1e-5);
  test::require_close("selective scan float ddelta_bias", g_f.ddelta_bias, g_d.ddelta_bias, 1e-5);
  test::require_close("selective scan float dA_log", g_f.dA_log, g_d.dA_log, 1e-5);
  test::require_close("selective scan float dD", g_f.dD, g_d.dD, 1e-5);
  auto cb = c.as<bf16>();
  auto y_b = forward(cb);
  auto g_b = backward(cb, test::cast_vector<bf16>(dy));
  test::require_close("selective scan bf16 y", y_b, y_d, 1e-2);
  test::require_close("selective scan bf16 du ddelta dB dC dz", g_b.dbuf, g_d.dbuf, 1e-2);
  test::require_close("selective scan bf16 ddelta_bias", g_b.ddelta_bias, g_d.ddelta_bias, 1e-2);
  test::require_close("selective scan bf16 dA_log", g_b.dA_log, g_d.dA_log, 1e-2);
  test::require_close("selective scan bf16 dD", g_b.dD, g_d.dD, 1e-2);
}

TEST_CASE("selective scan: bad arguments are errors") {
  std::vector<float> a(512, 0.5f), o(512), st(512);
  auto both_throw = [&](SelectiveScanShape s) {
    CHECK_THROWS_AS(cpu::selective_scan_forward(o.data(), a.data(), a.data(), a.data(), a.data(),
                                                a.data(), a.data(), a.data(), a.data(), s),
                    Error);
    SelectiveScanGrads<float> gr{.du = o.data()};
    CHECK_THROWS_AS(cpu::selective_scan_backward(gr, a.data(), a.data(), a.data(), a.data(),
                                                 a.data(), a.data(), a.data(), a.data(), a.data(), s),
                    Error);
  };
  const SelectiveScanShape ok{.batch = 1, .seq = 2, .channels = 8, .d_state = 2, .b_groups = 2,
                              .c_groups = 4};
  auto with = [&](auto change) {
    SelectiveScanShape s = ok;
    change(s);
    return s;
  };
  using S = SelectiveScanShape;
  both_throw(with([](S& s) { s.batch = -1; }));
  both_throw(with([](S& s) { s.seq = -1; }));
  both_throw(with([](S& s) { s.channels = 0; }));
  both_throw(with([](S& s) { s.d_state = 0; }));
  both_throw(with([](S& s) { s.b_groups = 0; }));
  both_throw(with([](S& s) { s.c_groups = 0; }));
  both_throw(with([](S& s) { s.b_groups = 3; }));   // 8 channels not a multiple of 3 B groups
  both_throw(with([](S& s) { s.c_groups = 16; }));  // more C groups than channels
  both_throw(with([](S& s) { s.u_stride = 7; }));
  both_throw(with([](S& s) { s.delta_stride = 7; }));
  both_throw(with([](S& s) { s.b_stride = 3; }));   // < b_groups * d_state = 4
  both_throw(with([](S& s) { s.c_stride = 7; }));   // < c_groups * d_state = 8
  both_throw(with([](S& s) { s.z_stride = 7; }));
  both_throw(with([](S& s) { s.y_stride = 7; }));
  both_throw(with([](S& s) { s.bias_scale = INFINITY; }));
  both_throw(with([](S& s) { s.bias_scale = NAN; }));
  auto fwd = [&](SelectiveStates states) {
    cpu::selective_scan_forward(o.data(), a.data(), a.data(), a.data(), a.data(), a.data(),
                                a.data(), a.data(), a.data(), ok, states);
  };
  int32_t slot0 = 0, slot2 = 2, slot_neg = -1;
  CHECK_THROWS_AS(fwd({st.data(), 0, &slot0}), Error);     // no slots
  CHECK_THROWS_AS(fwd({st.data(), 2, nullptr}), Error);    // slots missing
  CHECK_THROWS_AS(fwd({st.data(), 2, &slot2}), Error);     // slot == n_slots
  CHECK_THROWS_AS(fwd({st.data(), 2, &slot_neg}), Error);  // slot < 0
  CHECK_NOTHROW(fwd({st.data(), 2, &slot0}));
  CHECK_NOTHROW(fwd({}));
}
