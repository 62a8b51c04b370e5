// CPU reference of the Mamba-2 SSD scan: known values, the quadratic attention form, the
// linear-attention limit, gradients in double of every input and parameter (column blocks of one
// fused buffer, GQA, across the backward's 64-step checkpoint segments), gradient write modes,
// states across calls and slots, bad arguments, float and bf16.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <mil/kernels/ssd_scan.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {

double softplus_ref(double v) { return std::log1p(std::exp(v)); }

// One problem: x, B, C and dt are column blocks of one fused buffer [rows, W] laid out as
// [pad | x (G*P) | B (G*N) | C (H*N) | dt (H) | pad]; the parameters are separate.
template <class T>
struct Ssd {
  SsdShape s;
  int64_t W = 0, ox = 0, ob = 0, oc = 0, odt = 0;
  std::vector<T> buf, dt_bias, A_log, D;

  int64_t rows() const { return s.batch * s.seq; }
  const T* x() const { return buf.data() + ox; }
  const T* B() const { return buf.data() + ob; }
  const T* C() const { return buf.data() + oc; }
  const T* dt() const { return buf.data() + odt; }
  // Which block a column of the fused row is in: 0 x, 1 B, 2 C, 3 dt, -1 padding.
  int block(int64_t col) const {
    if (col < ox || col >= odt + s.heads) return -1;
    return col < ob ? 0 : col < oc ? 1 : col < odt ? 2 : 3;
  }
  template <class U>
  Ssd<U> as() const {
    return {s, W, ox, ob, oc, odt, test::cast_vector<U>(buf), test::cast_vector<U>(dt_bias),
            test::cast_vector<U>(A_log), test::cast_vector<U>(D)};
  }
};

Ssd<double> make_ssd(int64_t batch, int64_t seq, int64_t H, int64_t G, int64_t P, int64_t N,
                     uint64_t seed, float alog_lo = -1.f, float alog_hi = 0.5f) {
  Ssd<double> c;
  c.ox = 1;
  c.ob = c.ox + G * P;
  c.oc = c.ob + G * N;
  c.odt = c.oc + H * N;
  c.W = c.odt + H + 1;
  c.s = SsdShape{.batch = batch, .seq = seq, .heads = H, .groups = G, .head_dim = P, .d_state = N,
                 .x_stride = c.W, .b_stride = c.W, .c_stride = c.W, .dt_stride = c.W};
  c.buf = random_vector(size_t(batch * seq * c.W), seed);
  c.dt_bias = random_vector(size_t(H), seed + 1, -1.f, 0.5f);
  c.A_log = random_vector(size_t(H), seed + 2, alog_lo, alog_hi);
  c.D = random_vector(size_t(H), seed + 3);
  return c;
}

template <class T>
std::vector<T> forward(const Ssd<T>& c, const SsdStates& st = {}) {
  std::vector<T> y(size_t(c.rows() * c.s.heads * c.s.head_dim), test::poison<T>());
  cpu::ssd_scan_forward(y.data(), c.x(), c.B(), c.C(), c.dt(), c.dt_bias.data(), c.A_log.data(),
                        c.D.data(), c.s, st);
  return y;
}

// Gradients in the layout of the inputs: x, B, C and dt in a fused buffer like c.buf.
template <class T>
struct Grads {
  std::vector<T> dbuf, ddt_bias, dA_log, dD;
};

// Backward with the gradients pre-filled with `fill`; `mask` bit k enables field k of
// (dx, dB, dC, ddt, ddt_bias, dA_log, dD).
template <class T>
Grads<T> backward(const Ssd<T>& c, const std::vector<T>& dy, T fill = T(0), bool acc_in = false,
                  bool acc_par = false, unsigned mask = 0x7f) {
  Grads<T> g{std::vector<T>(c.buf.size(), fill), std::vector<T>(c.dt_bias.size(), fill),
             std::vector<T>(c.A_log.size(), fill), std::vector<T>(c.D.size(), fill)};
  auto on = [&](int k, T* p) { return (mask >> k) & 1u ? p : nullptr; };
  SsdGrads<T> gr{.dx = on(0, g.dbuf.data() + c.ox), .dB = on(1, g.dbuf.data() + c.ob),
                 .dC = on(2, g.dbuf.data() + c.oc), .ddt = on(3, g.dbuf.data() + c.odt),
                 .ddt_bias = on(4, g.ddt_bias.data()), .dA_log = on(5, g.dA_log.data()),
                 .dD = on(6, g.dD.data()), .accumulate_inputs = acc_in,
                 .accumulate_params = acc_par};
  cpu::ssd_scan_backward(gr, dy.data(), c.x(), c.B(), c.C(), c.dt(), c.dt_bias.data(),
                         c.A_log.data(), c.D.data(), c.s);
  return g;
}

// The quadratic ("attention") form of the scan, in double, from an optional initial state S0
// [batch, heads, P, N]:
//   y_t = sum_{s<=t} (C_t . B_s) exp(a sum_{r=s+1..t} dt_r) dt_s x_s + D x_t
//         + exp(a sum_{r<=t} dt_r) S0 C_t
std::vector<double> attention_form(const Ssd<double>& c, const std::vector<double>* S0 = nullptr) {
  const SsdShape& s = c.s;
  const int64_t P = s.head_dim, N = s.d_state, H = s.heads, r = s.heads / s.groups;
  std::vector<double> y(size_t(c.rows() * H * P));
  auto at = [&](int64_t b, int64_t t, int64_t col) { return c.buf[size_t((b * s.seq + t) * c.W + col)]; };
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / r;
      const double a = -std::exp(c.A_log[size_t(h)]);
      std::vector<double> delta(size_t(s.seq));
      for (int64_t t = 0; t < s.seq; ++t)
        delta[size_t(t)] = softplus_ref(at(b, t, c.odt + h) + c.dt_bias[size_t(h)]);
      for (int64_t t = 0; t < s.seq; ++t)
        for (int64_t p = 0; p < P; ++p) {
          double acc = c.D[size_t(h)] * at(b, t, c.ox + g * P + p);
          for (int64_t u = 0; u <= t; ++u) {
            double cb = 0, sum_dt = 0;
            for (int64_t n = 0; n < N; ++n) cb += at(b, t, c.oc + h * N + n) * at(b, u, c.ob + g * N + n);
            for (int64_t v = u + 1; v <= t; ++v) sum_dt += delta[size_t(v)];
            acc += cb * std::exp(a * sum_dt) * delta[size_t(u)] * at(b, u, c.ox + g * P + p);
          }
          if (S0) {
            double sum_dt = 0;
            for (int64_t v = 0; v <= t; ++v) sum_dt += delta[size_t(v)];
            for (int64_t n = 0; n < N; ++n)
              acc += std::exp(a * sum_dt) * (*S0)[size_t(((b * H + h) * P + p) * N + n)] *
                     at(b, t, c.oc + h * N + n);
          }
          y[size_t(((b * s.seq + t) * H + h) * P + p)] = acc;
        }
    }
  return y;
}

// Gradient check of every input and parameter; padding columns of the fused gradient buffer must
// keep their pre-filled value.
void gradcheck(Ssd<double> c, const char* what) {
  auto g = random_vector(size_t(c.rows() * c.s.heads * c.s.head_dim), 99);
  const double sentinel = 31.25;
  Grads<double> d = backward(c, g, sentinel);
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t col = 0; col < c.W; ++col)
      if (c.block(col) < 0) {
        CHECK(d.dbuf[size_t(r * c.W + col)] == sentinel);
        d.dbuf[size_t(r * c.W + col)] = 0;  // the forward does not read padding
      }
  auto fwd = [&] { return forward(c); };
  test::check_gradients(what,
                        {{"x B C dt", &c.buf, &d.dbuf},
                         {"dt_bias", &c.dt_bias, &d.ddt_bias},
                         {"A_log", &c.A_log, &d.dA_log},
                         {"D", &c.D, &d.dD}},
                        fwd, g);
}

}  // namespace

TEST_CASE("ssd scan: known values without decay are exact") {
  // A_log = -1000: a = -exp(-1000) = -0, so the decay is exp(0) = 1; dt_raw = 21 > 20 makes the
  // softplus the identity. S_t = S_{t-1} + 21 x_t B_t, y_t = S_t C_t + D x_t.
  SsdShape s{.batch = 1, .seq = 3, .heads = 1, .groups = 1, .head_dim = 1, .d_state = 1};
  std::vector<double> x{1, 2, -1}, B{1, 0.5, 2}, C{2, 1, -1}, dt{21, 21, 21};
  std::vector<double> dt_bias{0}, A_log{-1000}, D{0.5}, y(3);
  cpu::ssd_scan_forward(y.data(), x.data(), B.data(), C.data(), dt.data(), dt_bias.data(),
                        A_log.data(), D.data(), s);
  // S = 21, 42, 0
  CHECK(y == std::vector<double>{42.5, 43, -0.5});
}

TEST_CASE("ssd scan: known values with a decay of one half") {
  // dt = 21 (softplus identity past 20) split as dt_raw 20.5 + dt_bias 0.5; a = -ln 2 / 21 so
  // exp(dt a) = 1/2. S = 21;  10.5 + 21 = 31.5;  15.75 - 42 = -26.25.
  SsdShape s{.batch = 1, .seq = 3, .heads = 1, .groups = 1, .head_dim = 1, .d_state = 1};
  std::vector<double> x{1, 2, -1}, B{1, 0.5, 2}, C{2, 1, -1}, dt{20.5, 20.5, 20.5};
  std::vector<double> dt_bias{0.5}, A_log{std::log(std::log(2.0) / 21)}, D{0.5}, y(3);
  cpu::ssd_scan_forward(y.data(), x.data(), B.data(), C.data(), dt.data(), dt_bias.data(),
                        A_log.data(), D.data(), s);
  CHECK(y[0] == doctest::Approx(42.5).epsilon(1e-14));
  CHECK(y[1] == doctest::Approx(32.5).epsilon(1e-13));
  CHECK(y[2] == doctest::Approx(25.75).epsilon(1e-13));
}

TEST_CASE("ssd scan: known values of a two-by-two state with two heads sharing a group") {
  // P = N = 2, heads 2, groups 1, no decay (A_log = -1000), dt = 25: S_t = S_{t-1} + 25 x_t B_t^T.
  // Head 0 reads C = (1, 0), head 1 C = (0, 1); D = (0, 1).
  SsdShape s{.batch = 1, .seq = 2, .heads = 2, .groups = 1, .head_dim = 2, .d_state = 2};
  std::vector<double> x{1, 2, 3, -1}, B{1, 0, 2, 1}, C{1, 0, 0, 1, 1, 0, 0, 1};
  std::vector<double> dt{25, 25, 25, 25}, dt_bias{0, 0}, A_log{-1000, -1000}, D{0, 1};
  std::vector<double> y(8);
  cpu::ssd_scan_forward(y.data(), x.data(), B.data(), C.data(), dt.data(), dt_bias.data(),
                        A_log.data(), D.data(), s);
  // S_1 = 25 [1 2]^T [1 0] = [[25, 0], [50, 0]]
  // S_2 = S_1 + 25 [3 -1]^T [2 1] = [[175, 75], [0, -25]]
  // t=0: head 0 = S_1 (1,0) = (25, 50); head 1 = S_1 (0,1) + x = (0, 0) + (1, 2) = (1, 2)
  // t=1: head 0 = (175, 0); head 1 = (75, -25) + (3, -1) = (78, -26)
  CHECK(y == std::vector<double>{25, 50, 1, 2, 175, 0, 78, -26});
}

TEST_CASE("ssd scan: matches the quadratic attention form with GQA and strided inputs") {
  for (int64_t G : {1, 2}) {
    CAPTURE(G);
    auto c = make_ssd(2, 9, 3 * G, G, 3, 4, 10 * uint64_t(G));
    auto y = forward(c);
    test::require_close("ssd scan vs attention form", y, attention_form(c), 1e-12);
  }
  // A packed layout (strides 0) and a strided output
  auto c = make_ssd(1, 7, 4, 2, 2, 3, 30);
  SsdShape packed = c.s;
  packed.x_stride = packed.b_stride = packed.c_stride = packed.dt_stride = 0;
  packed.y_stride = 11;
  std::vector<double> x, B, C, dt;
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t col = 0; col < c.W; ++col) {
      const double v = c.buf[size_t(r * c.W + col)];
      switch (c.block(col)) {
        case 0: x.push_back(v); break;
        case 1: B.push_back(v); break;
        case 2: C.push_back(v); break;
        case 3: dt.push_back(v); break;
        default: break;
      }
    }
  const double sentinel = 2.5;
  std::vector<double> y(size_t(c.rows() * 11), sentinel);
  cpu::ssd_scan_forward(y.data(), x.data(), B.data(), C.data(), dt.data(), c.dt_bias.data(),
                        c.A_log.data(), c.D.data(), packed);
  std::vector<double> yp;
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t j = 0; j < 11; ++j) {
      if (j < 8)
        yp.push_back(y[size_t(r * 11 + j)]);
      else
        CHECK(y[size_t(r * 11 + j)] == sentinel);
    }
  CHECK(yp == forward(c));
}

TEST_CASE("ssd scan: decay to one and unit dt without D give causal linear attention") {
  // docs/METHOD.md §2: with dt a -> 0 and no skip, y_t = sum_{s<=t} (C_t . B_s) x_s
  // (Q -> C, K -> B, V -> x).
  auto c = make_ssd(2, 11, 6, 2, 4, 5, 40);
  const double inv_softplus_1 = std::log(std::exp(1.0) - 1);  // softplus(this) = 1
  for (int64_t r = 0; r < c.rows(); ++r)
    for (int64_t h = 0; h < 6; ++h) c.buf[size_t(r * c.W + c.odt + h)] = inv_softplus_1 - c.dt_bias[size_t(h)];
  for (auto& v : c.A_log) v = -40;  // a = -4e-18: exp(dt a) rounds to 1
  for (auto& v : c.D) v = 0;
  auto y = forward(c);
  const SsdShape& s = c.s;
  std::vector<double> ref(y.size());
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t t = 0; t < s.seq; ++t)
        for (int64_t p = 0; p < 4; ++p) {
          double acc = 0;
          for (int64_t u = 0; u <= t; ++u) {
            double cb = 0;
            for (int64_t n = 0; n < 5; ++n)
              cb += c.buf[size_t((b * s.seq + t) * c.W + c.oc + h * 5 + n)] *
                    c.buf[size_t((b * s.seq + u) * c.W + c.ob + (h / 3) * 5 + n)];
            acc += cb * c.buf[size_t((b * s.seq + u) * c.W + c.ox + (h / 3) * 4 + p)];
          }
          ref[size_t(((b * s.seq + t) * 6 + h) * 4 + p)] = acc;
        }
  test::require_close("ssd scan linear attention", y, ref, 1e-13);
}

TEST_CASE("ssd scan: gradient check in double - fused buffer and heads per group 3") {
  gradcheck(make_ssd(2, 6, 3, 1, 2, 3, 50), "ssd scan 3 heads 1 group");
  gradcheck(make_ssd(1, 5, 6, 2, 3, 2, 60), "ssd scan 6 heads 2 groups");
  gradcheck(make_ssd(2, 4, 2, 2, 2, 2, 70), "ssd scan 2 heads 2 groups");
}

TEST_CASE("ssd scan: gradient check in double across the 64-step checkpoint segments") {
  // Slow decay (a ~ -0.02 to -0.05) so that gradients reach across segment boundaries.
  gradcheck(make_ssd(1, 130, 3, 1, 2, 2, 80, -4.f, -3.f), "ssd scan seq 130");
  gradcheck(make_ssd(2, 65, 3, 3, 1, 2, 90, -4.f, -3.f), "ssd scan seq 65");
  gradcheck(make_ssd(1, 64, 2, 1, 2, 1, 100, -4.f, -3.f), "ssd scan seq 64");
}

TEST_CASE("ssd scan: gradient check in double past the softplus threshold") {
  auto c = make_ssd(1, 5, 2, 1, 2, 2, 110, -6.f, -5.f);
  for (int64_t r = 0; r < c.rows(); ++r) c.buf[size_t(r * c.W + c.odt)] += 25;  // head 0: v > 20
  gradcheck(c, "ssd scan large dt");
}

TEST_CASE("ssd scan: backward overwrites or accumulates into pre-filled gradients") {
  auto c = make_ssd(2, 7, 6, 2, 3, 4, 120);
  auto dy = random_vector(size_t(c.rows() * 6 * 3), 121);
  Grads<double> ref = backward(c, dy, 0.0, true, true);  // into zeros: the clean gradient
  for (bool acc_in : {false, true})
    for (bool acc_par : {false, true}) {
      CAPTURE(acc_in);
      CAPTURE(acc_par);
      const double fill = -0.625;
      Grads<double> d = backward(c, dy, fill, acc_in, acc_par);
      for (int64_t r = 0; r < c.rows(); ++r)
        for (int64_t col = 0; col < c.W; ++col) {
          const size_t i = size_t(r * c.W + col);
          const bool pad = c.block(col) < 0;
          CHECK(d.dbuf[i] == doctest::Approx(ref.dbuf[i] + (pad || acc_in ? fill : 0.0)).epsilon(1e-14));
        }
      for (int64_t h = 0; h < 6; ++h) {
        const double add = acc_par ? fill : 0.0;
        CHECK(d.ddt_bias[size_t(h)] == doctest::Approx(ref.ddt_bias[size_t(h)] + add).epsilon(1e-14));
        CHECK(d.dA_log[size_t(h)] == doctest::Approx(ref.dA_log[size_t(h)] + add).epsilon(1e-14));
        CHECK(d.dD[size_t(h)] == doctest::Approx(ref.dD[size_t(h)] + add).epsilon(1e-14));
      }
    }
}

TEST_CASE("ssd scan: null gradients are skipped and the others unchanged") {
  auto c = make_ssd(1, 9, 3, 1, 2, 3, 130);
  auto dy = random_vector(size_t(c.rows() * 3 * 2), 131);
  const double fill = 5.5;
  Grads<double> full = backward(c, dy, fill);
  Grads<double> none = backward(c, dy, fill, false, false, 0u);  // everything frozen
  CHECK(none.dbuf == std::vector<double>(c.buf.size(), fill));
  CHECK(none.ddt_bias == std::vector<double>(3, fill));
  CHECK(none.dA_log == std::vector<double>(3, fill));
  CHECK(none.dD == std::vector<double>(3, fill));
  for (int k = 0; k < 7; ++k) {
    CAPTURE(k);
    Grads<double> one = backward(c, dy, fill, false, false, 1u << k);
    for (int64_t r = 0; r < c.rows(); ++r)
      for (int64_t col = 0; col < c.W; ++col) {
        const size_t i = size_t(r * c.W + col);
        CHECK(one.dbuf[i] == (c.block(col) == k ? full.dbuf[i] : fill));
      }
    CHECK(one.ddt_bias == (k == 4 ? full.ddt_bias : std::vector<double>(3, fill)));
    CHECK(one.dA_log == (k == 5 ? full.dA_log : std::vector<double>(3, fill)));
    CHECK(one.dD == (k == 6 ? full.dD : std::vector<double>(3, fill)));
  }
  // D may be absent (no skip): the same as D = 0, with dD still the sum of dy x.
  auto c0 = c;
  for (auto& v : c0.D) v = 0;
  std::vector<double> y_null(c.rows() * 6);
  cpu::ssd_scan_forward<double>(y_null.data(), c.x(), c.B(), c.C(), c.dt(), c.dt_bias.data(),
                                c.A_log.data(), nullptr, c.s);
  CHECK(y_null == forward(c0));
}

TEST_CASE("ssd scan: zero tokens reset overwritten parameter gradients and keep accumulated ones") {
  auto c = make_ssd(1, 0, 2, 1, 2, 2, 140);
  std::vector<double> dy;
  Grads<double> keep = backward(c, dy, 3.0, true, true);
  CHECK(keep.ddt_bias == std::vector<double>(2, 3.0));
  CHECK(keep.dA_log == std::vector<double>(2, 3.0));
  Grads<double> over = backward(c, dy, 3.0, false, false);
  CHECK(over.ddt_bias == std::vector<double>(2, 0.0));
  CHECK(over.dA_log == std::vector<double>(2, 0.0));
  CHECK(over.dD == std::vector<double>(2, 0.0));
  CHECK(forward(c).empty());
}

TEST_CASE("ssd scan: states - a sequence split into calls equals one call") {
  const int64_t T = 37;
  auto c = make_ssd(1, T, 6, 2, 3, 4, 150);
  const auto ref = forward(c);
  // one call with states from zero gives the same output and the final state
  std::vector<float> state_one(size_t(c.s.state_size()), 0.f);
  int32_t slot = 0;
  auto y_one = forward(c, SsdStates{state_one.data(), 1, &slot});
  CHECK(y_one == ref);
  for (const std::vector<int64_t>& chunks :
       {std::vector<int64_t>{5, 1, 1, 30}, std::vector<int64_t>{36, 1}, std::vector<int64_t>(37, 1)}) {
    CAPTURE(chunks.size());
    std::vector<float> state(size_t(c.s.state_size()), 0.f);
    std::vector<double> y;
    int64_t t0 = 0;
    for (int64_t n : chunks) {
      Ssd<double> part = c;  // the same buffer, seen from row t0 with seq n
      part.s.seq = n;
      part.buf.erase(part.buf.begin(), part.buf.begin() + t0 * c.W);
      part.buf.resize(size_t(n * c.W));
      auto yc = forward(part, SsdStates{state.data(), 1, &slot});
      y.insert(y.end(), yc.begin(), yc.end());
      t0 += n;
    }
    // states are fp32 between calls: double results agree to float rounding
    test::require_close("ssd scan chunked", y, ref, 1e-6);
    test::require_close("ssd scan chunked final state", state, state_one, 1e-6);
  }
  // In float and bf16 (fp32 accumulation), where the state is stored exactly, chunked and single
  // calls agree bitwise.
  auto exact = [&](auto cf) {
    std::vector<float> s1(size_t(c.s.state_size()), 0.f), s2(s1);
    auto yf = forward(cf, SsdStates{s1.data(), 1, &slot});
    decltype(yf) yc_all;
    int64_t t0 = 0;
    for (int64_t n : {5, 1, 1, 30}) {
      auto part = cf;
      part.s.seq = n;
      part.buf.erase(part.buf.begin(), part.buf.begin() + t0 * c.W);
      part.buf.resize(size_t(n * c.W));
      auto yc = forward(part, SsdStates{s2.data(), 1, &slot});
      yc_all.insert(yc_all.end(), yc.begin(), yc.end());
      t0 += n;
    }
    CHECK(test::bytes_of(yc_all) == test::bytes_of(yf));
    CHECK(test::bytes_of(s2) == test::bytes_of(s1));
    test::require_close("ssd scan low precision with states", yf, ref, 1e-2);
  };
  exact(c.as<float>());
  exact(c.as<bf16>());
}

TEST_CASE("ssd scan: states - an initial state decays into the output") {
  auto c = make_ssd(2, 6, 6, 2, 3, 4, 160);
  auto S0 = random_vector<float>(size_t(2 * c.s.state_size()), 161);
  auto S0d = test::cast_vector<double>(S0);
  // batch row 0 uses slot 1 and row 1 slot 0: the reference takes S0 per batch row
  std::vector<double> S0_rows(S0d.size());
  const size_t ss = size_t(c.s.state_size());
  std::copy(S0d.begin() + ss, S0d.end(), S0_rows.begin());
  std::copy(S0d.begin(), S0d.begin() + ss, S0_rows.begin() + ss);
  int32_t slots[2] = {1, 0};
  auto y = forward(c, SsdStates{S0.data(), 2, slots});
  test::require_close("ssd scan from a state", y, attention_form(c, &S0_rows), 1e-12);
}

TEST_CASE("ssd scan: states - two slots do not interfere") {
  const int64_t T = 12;
  auto c = make_ssd(2, T, 3, 1, 2, 3, 170);
  const auto ref = forward(c);  // both sequences in one call without states
  const int64_t ss = c.s.state_size(), ycols = 3 * 2;
  const float sentinel = 77.f;
  std::vector<float> states(size_t(3 * ss), sentinel);
  std::fill(states.begin(), states.begin() + ss, 0.f);           // slot 0: sequence 1
  std::fill(states.begin() + 2 * ss, states.end(), 0.f);         // slot 2: sequence 0
  int32_t slots[2] = {2, 0};
  std::vector<double> y0, y1;
  int64_t t0 = 0;
  for (int64_t n : {5, 1, 1, 5}) {
    Ssd<double> part = c;
    part.s.seq = n;
    part.buf.clear();
    for (int64_t b = 0; b < 2; ++b)
      part.buf.insert(part.buf.end(), c.buf.begin() + (b * T + t0) * c.W,
                      c.buf.begin() + (b * T + t0 + n) * c.W);
    auto yc = forward(part, SsdStates{states.data(), 3, slots});
    y0.insert(y0.end(), yc.begin(), yc.begin() + n * ycols);
    y1.insert(y1.end(), yc.begin() + n * ycols, yc.end());
    t0 += n;
  }
  test::require_close("ssd scan slot sequence 0", y0,
                      std::vector<double>(ref.begin(), ref.begin() + T * ycols), 1e-6);
  test::require_close("ssd scan slot sequence 1", y1,
                      std::vector<double>(ref.begin() + T * ycols, ref.end()), 1e-6);
  for (int64_t i = 0; i < ss; ++i) CHECK(states[size_t(ss + i)] == sentinel);  // slot 1 untouched
}

TEST_CASE("ssd scan: float and bf16 instantiations agree with double") {
  auto c = make_ssd(2, 20, 4, 2, 8, 8, 180);
  // bf16-representable inputs so that all precisions see the same numbers
  for (std::vector<double>* v : {&c.buf, &c.dt_bias, &c.A_log, &c.D})
    *v = test::cast_vector<double>(test::cast_vector<bf16>(*v));
  auto dy = test::cast_vector<double>(
      test::cast_vector<bf16>(random_vector(size_t(c.rows() * 4 * 8), 181)));
  auto y_d = forward(c);
  auto g_d = backward(c, dy);
  auto cf = c.as<float>();
  auto y_f = forward(cf);
  auto g_f = backward(cf, test::cast_vector<float>(dy));
  test::require_close("ssd scan float y", y_f, y_d, 1e-5);
  test::require_close("ssd scan float dx dB dC ddt", g_f.dbuf, g_d.dbuf, 1e-5);
  test::require_close("ssd scan float ddt_bias", g_f.ddt_bias, g_d.ddt_bias, 1e-5);
  test::require_close("ssd scan float dA_log", g_f.dA_log, g_d.dA_log, 1e-5);
  test::require_close("ssd scan float dD", g_f.dD, g_d.dD, 1e-5);
  auto cb = c.as<bf16>();
  auto y_b = forward(cb);
  auto g_b = backward(cb, test::cast_vector<bf16>(dy));
  test::require_close("ssd scan bf16 y", y_b, y_d, 1e-2);
  test::require_close("ssd scan bf16 dx dB dC ddt", g_b.dbuf, g_d.dbuf, 1e-2);
  test::require_close("ssd scan bf16 ddt_bias", g_b.ddt_bias, g_d.ddt_bias, 1e-2);
  test::require_close("ssd scan bf16 dA_log", g_b.dA_log, g_d.dA_log, 1e-2);
  test::require_close("ssd scan bf16 dD", g_b.dD, g_d.dD, 1e-2);
}

TEST_CASE("ssd scan: bad arguments are errors") {
  std::vector<float> a(512, 0.5f), o(512), st(512);
  auto both_throw = [&](SsdShape s) {
    CHECK_THROWS_AS(cpu::ssd_scan_forward(o.data(), a.data(), a.data(), a.data(), a.data(),
                                          a.data(), a.data(), a.data(), s),
                    Error);
    SsdGrads<float> gr{.dx = o.data()};
    CHECK_THROWS_AS(cpu::ssd_scan_backward(gr, a.data(), a.data(), a.data(), a.data(), a.data(),
                                           a.data(), a.data(), a.data(), s),
                    Error);
  };
  const SsdShape ok{.batch = 1, .seq = 2, .heads = 4, .groups = 2, .head_dim = 2, .d_state = 3};
  auto with = [&](auto change) {
    SsdShape s = ok;
    change(s);
    return s;
  };
  both_throw(with([](SsdShape& s) { s.batch = -1; }));
  both_throw(with([](SsdShape& s) { s.seq = -1; }));
  both_throw(with([](SsdShape& s) { s.heads = 0; }));
  both_throw(with([](SsdShape& s) { s.groups = 0; }));
  both_throw(with([](SsdShape& s) { s.head_dim = 0; }));
  both_throw(with([](SsdShape& s) { s.d_state = 0; }));
  both_throw(with([](SsdShape& s) { s.groups = 3; }));  // 4 heads are not a multiple of 3 groups
  both_throw(with([](SsdShape& s) { s.heads = 2, s.groups = 4; }));
  both_throw(with([](SsdShape& s) { s.x_stride = 3; }));   // < groups * head_dim = 4
  both_throw(with([](SsdShape& s) { s.b_stride = 5; }));   // < groups * d_state = 6
  both_throw(with([](SsdShape& s) { s.c_stride = 11; }));  // < heads * d_state = 12
  both_throw(with([](SsdShape& s) { s.dt_stride = 3; }));  // < heads
  both_throw(with([](SsdShape& s) { s.y_stride = 7; }));   // < heads * head_dim = 8
  auto fwd = [&](SsdStates states) {
    cpu::ssd_scan_forward(o.data(), a.data(), a.data(), a.data(), a.data(), a.data(), a.data(),
                          a.data(), ok, states);
  };
  int32_t slot0 = 0, slot2 = 2, slot_neg = -1;
  CHECK_THROWS_AS(fwd({st.data(), 0, &slot0}), Error);      // no slots
  CHECK_THROWS_AS(fwd({st.data(), 2, nullptr}), Error);     // slots missing
  CHECK_THROWS_AS(fwd({st.data(), 2, &slot2}), Error);      // slot == n_slots
  CHECK_THROWS_AS(fwd({st.data(), 2, &slot_neg}), Error);   // slot < 0
  CHECK_NOTHROW(fwd({st.data(), 2, &slot0}));
  CHECK_NOTHROW(fwd({}));
}
