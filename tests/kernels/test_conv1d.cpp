// CPU reference of the causal depthwise conv1d (Mamba's short convolution): known values,
// gradients in double on column blocks of a fused buffer, gradient write modes, the ring state
// (chunked prefill, decode, independent slots, roll-back) and bad arguments.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <mil/kernels/conv1d.hpp>

#include "common/compare.hpp"
#include "common/gradcheck.hpp"
#include "common/random.hpp"

using namespace mil;
using mil::test::random_vector;

namespace {

double silu(double a) { return a / (1 + std::exp(-a)); }

// Independent formula: y[b, t, c] = act(bias[c] + sum_{j < K, t - j >= 0} w[c, K-1-j] x[b, t-j, c]).
std::vector<double> conv_ref(const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>* bias, int64_t batch, int64_t seq,
                             int64_t C, int64_t K, int64_t xs, bool act) {
  std::vector<double> y(size_t(batch * seq * C));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double a = bias ? (*bias)[size_t(c)] : 0.0;
        for (int64_t j = 0; j < K && t - j >= 0; ++j)
          a += w[size_t(c * K + K - 1 - j)] * x[size_t((b * seq + t - j) * xs + c)];
        y[size_t((b * seq + t) * C + c)] = act ? silu(a) : a;
      }
  return y;
}

// Rows [t0, t0 + n) of a packed [seq, C] sequence.
std::vector<double> rows_of(const std::vector<double>& x, int64_t t0, int64_t n, int64_t C) {
  return {x.begin() + t0 * C, x.begin() + (t0 + n) * C};
}

// Runs one sequence through the ring in chunks (slot 0 of a fresh ring of `len` rows, optionally
// pre-filled with garbage) and returns the concatenated outputs.
std::vector<double> run_chunks(const std::vector<double>& x, const std::vector<int64_t>& chunks,
                               const std::vector<double>& w, const std::vector<double>& bias,
                               int64_t C, int64_t K, int64_t len, std::vector<double>& ring_data) {
  std::vector<double> y;
  int32_t slot = 0, pos = 0;
  Conv1dRing<double> ring{ring_data.data(), len, 1, &slot, &pos};
  for (int64_t n : chunks) {
    Conv1dShape s{.batch = 1, .seq = n, .channels = C, .kernel = K};
    auto xc = rows_of(x, pos, n, C);
    std::vector<double> yc(size_t(n * C));
    cpu::conv1d_forward(yc.data(), xc.data(), w.data(), bias.data(), s, ring);
    y.insert(y.end(), yc.begin(), yc.end());
    pos += int32_t(n);
  }
  return y;
}

}  // namespace

TEST_CASE("conv1d: known values of a tiny example without activation") {
  // channel 0: x = 1 2 3 4, w = 1 10 100 (w[K-1] takes the current token), bias 0.5
  // channel 1: an impulse reproduces the taps in reverse: w = -1 2 -3, bias 0
  Conv1dShape s{.batch = 1, .seq = 4, .channels = 2, .kernel = 3, .silu = false};
  std::vector<double> x{1, 1, 2, 0, 3, 0, 4, 0}, w{1, 10, 100, -1, 2, -3}, bias{0.5, 0};
  std::vector<double> y(8, test::poison<double>());
  cpu::conv1d_forward(y.data(), x.data(), w.data(), bias.data(), s);
  const std::vector<double> expect{100.5, -3, 210.5, 2, 321.5, -1, 432.5, 0};
  CHECK(y == expect);
  // Without a bias
  std::vector<double> y2(8);
  cpu::conv1d_forward<double>(y2.data(), x.data(), w.data(), nullptr, s);
  const std::vector<double> expect2{100, -3, 210, 2, 321, -1, 432, 0};
  CHECK(y2 == expect2);
}

TEST_CASE("conv1d: known values with SiLU") {
  Conv1dShape s{.batch = 1, .seq = 3, .channels = 1, .kernel = 2, .silu = true};
  std::vector<double> x{1, -2, 0.5}, w{0.5, 2}, bias{-1}, y(3);
  cpu::conv1d_forward(y.data(), x.data(), w.data(), bias.data(), s);
  // pre-activations: -1 + 2 = 1;  -1 + 0.5 - 4 = -4.5;  -1 - 1 + 1 = -1
  CHECK(y[0] == doctest::Approx(1 / (1 + std::exp(-1.0))).epsilon(1e-14));
  CHECK(y[1] == doctest::Approx(-4.5 / (1 + std::exp(4.5))).epsilon(1e-14));
  CHECK(y[2] == doctest::Approx(-1 / (1 + std::exp(1.0))).epsilon(1e-14));
}

TEST_CASE("conv1d: known backward values of the tiny example") {
  Conv1dShape s{.batch = 1, .seq = 4, .channels = 2, .kernel = 3, .silu = false};
  std::vector<double> x{1, 1, 2, 0, 3, 0, 4, 0}, w{1, 10, 100, -1, 2, -3}, bias{0.5, 0};
  // channel 0: dy at t = 0 only; channel 1: dy at t = 3 only
  std::vector<double> dy{1, 0, 0, 0, 0, 0, 0, 1};
  std::vector<double> dx(8), dw(6), db(2);
  cpu::conv1d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), bias.data(),
                       s, false, false);
  // dx[t] = sum_k w[k] dy[t + K-1-k]: ch0 only t = 0 via w[2] = 100; ch1 t = 1, 2, 3 via w[0..2]
  const std::vector<double> dx_expect{100, 0, 0, -1, 0, 2, 0, -3};
  CHECK(dx == dx_expect);
  // dw[k] = sum_t dy[t] x[t - (K-1) + k]: ch0 only k = 2 meets x[0] = 1; ch1 x[1..3] = 0
  const std::vector<double> dw_expect{0, 0, 1, 0, 0, 0};
  CHECK(dw == dw_expect);
  CHECK(db == std::vector<double>{1, 1});
}

TEST_CASE("conv1d: matches an independent formula with strided input and output") {
  for (bool act : {false, true})
    for (int64_t K : {1, 2, 4, 8}) {
      CAPTURE(act);
      CAPTURE(K);
      const int64_t batch = 2, seq = 11, C = 5, xs = 9, ys = 7;
      Conv1dShape s{.batch = batch, .seq = seq, .channels = C, .kernel = K, .x_stride = xs,
                    .y_stride = ys, .silu = act};
      auto x = random_vector(size_t(batch * seq * xs), 1, -2.f, 2.f);
      auto w = random_vector(size_t(C * K), 2), bias = random_vector(size_t(C), 3);
      const double sentinel = 4.25;
      std::vector<double> y(size_t(batch * seq * ys), sentinel);
      cpu::conv1d_forward(y.data(), x.data(), w.data(), bias.data(), s);
      auto ref = conv_ref(x, w, &bias, batch, seq, C, K, xs, act);
      std::vector<double> yp(ref.size());
      for (int64_t r = 0; r < batch * seq; ++r)
        for (int64_t c = 0; c < ys; ++c) {
          if (c < C)
            yp[size_t(r * C + c)] = y[size_t(r * ys + c)];
          else
            CHECK(y[size_t(r * ys + c)] == sentinel);  // padding of the output rows untouched
        }
      test::require_close("conv1d out", yp, ref, 1e-14);
    }
}

TEST_CASE("conv1d: gradient check of x w and bias in double - x a column block") {
  for (bool act : {false, true}) {
    CAPTURE(act);
    // x at columns 2..7 of a 10-wide fused buffer; dy packed.
    const int64_t batch = 2, seq = 7, C = 6, K = 4, xs = 10, off = 2;
    Conv1dShape s{.batch = batch, .seq = seq, .channels = C, .kernel = K, .x_stride = xs,
                  .silu = act};
    auto xbuf = random_vector(size_t(batch * seq * xs), 4, -2.f, 2.f);
    auto w = random_vector(size_t(C * K), 5), bias = random_vector(size_t(C), 6);
    auto g = random_vector(size_t(batch * seq * C), 7);
    const double sentinel = -6.5;
    std::vector<double> dxbuf(xbuf.size(), sentinel), dw(w.size()), db(bias.size());
    cpu::conv1d_backward(dxbuf.data() + off, dw.data(), db.data(), g.data(), xbuf.data() + off,
                         w.data(), bias.data(), s, false, false);
    for (int64_t r = 0; r < batch * seq; ++r)
      for (int64_t c = 0; c < xs; ++c)
        if (c < off || c >= off + C) {
          CHECK(dxbuf[size_t(r * xs + c)] == sentinel);
          dxbuf[size_t(r * xs + c)] = 0;  // the forward does not read padding
        }
    auto forward = [&] {
      std::vector<double> o(size_t(batch * seq * C));
      cpu::conv1d_forward(o.data(), xbuf.data() + off, w.data(), bias.data(), s);
      return o;
    };
    test::check_gradients("conv1d", {{"x", &xbuf, &dxbuf}, {"w", &w, &dw}, {"bias", &bias, &db}},
                          forward, g);
  }
}

TEST_CASE("conv1d: gradient check with a strided dy and no bias") {
  const int64_t batch = 1, seq = 9, C = 3, K = 3, ys = 5;
  Conv1dShape s{.batch = batch, .seq = seq, .channels = C, .kernel = K, .y_stride = ys};
  auto x = random_vector(size_t(seq * C), 8, -3.f, 3.f), w = random_vector(size_t(C * K), 9);
  auto gbuf = random_vector(size_t(seq * ys), 10);
  std::vector<double> g(size_t(seq * ys));  // the cotangent seen by the strided output
  for (int64_t r = 0; r < seq; ++r)
    for (int64_t c = 0; c < C; ++c) g[size_t(r * ys + c)] = gbuf[size_t(r * ys + c)];
  std::vector<double> dx(x.size()), dw(w.size());
  // dy's padding holds garbage (gbuf): the backward must not read it
  cpu::conv1d_backward<double>(dx.data(), dw.data(), nullptr, gbuf.data(), x.data(), w.data(),
                               nullptr, s, false, false);
  auto forward = [&] {
    std::vector<double> o(size_t(seq * ys), 0.0);
    cpu::conv1d_forward<double>(o.data(), x.data(), w.data(), nullptr, s);
    return o;
  };
  test::check_gradients("conv1d strided dy", {{"x", &x, &dx}, {"w", &w, &dw}}, forward, g);
}

TEST_CASE("conv1d: backward overwrites or accumulates into pre-filled gradients") {
  const int64_t batch = 2, seq = 6, C = 4, K = 4;
  Conv1dShape s{.batch = batch, .seq = seq, .channels = C, .kernel = K};
  auto x = random_vector(size_t(batch * seq * C), 11, -2.f, 2.f);
  auto w = random_vector(size_t(C * K), 12), bias = random_vector(size_t(C), 13);
  auto g = random_vector(size_t(batch * seq * C), 14);
  std::vector<double> dx_ref(x.size(), 0.0), dw_ref(w.size(), 0.0), db_ref(bias.size(), 0.0);
  cpu::conv1d_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), g.data(), x.data(), w.data(),
                       bias.data(), s, true, true);  // into zeros: the clean gradient
  for (bool acc_dx : {false, true})
    for (bool acc_dw : {false, true}) {
      CAPTURE(acc_dx);
      CAPTURE(acc_dw);
      std::vector<double> dx(x.size(), 0.5), dw(w.size(), -0.25), db(bias.size(), 2.0);
      cpu::conv1d_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(),
                           bias.data(), s, acc_dx, acc_dw);
      for (size_t i = 0; i < dx.size(); ++i)
        CHECK(dx[i] == doctest::Approx(dx_ref[i] + (acc_dx ? 0.5 : 0.0)).epsilon(1e-14));
      for (size_t i = 0; i < dw.size(); ++i)
        CHECK(dw[i] == doctest::Approx(dw_ref[i] + (acc_dw ? -0.25 : 0.0)).epsilon(1e-14));
      for (size_t i = 0; i < db.size(); ++i)
        CHECK(db[i] == doctest::Approx(db_ref[i] + (acc_dw ? 2.0 : 0.0)).epsilon(1e-14));
    }
}

TEST_CASE("conv1d: frozen weight and bias (null dw and dbias) give the same dx") {
  const int64_t seq = 8, C = 3, K = 4;
  Conv1dShape s{.batch = 1, .seq = seq, .channels = C, .kernel = K};
  auto x = random_vector<float>(size_t(seq * C), 15, -2.f, 2.f);
  auto w = random_vector<float>(size_t(C * K), 16), bias = random_vector<float>(size_t(C), 17);
  auto g = random_vector<float>(size_t(seq * C), 18);
  std::vector<float> dx(x.size()), dw(w.size()), db(bias.size());
  cpu::conv1d_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), bias.data(),
                       s, false, false);
  std::vector<float> dx1(x.size(), 3.f), dx2(x.size(), 3.f), db1(bias.size(), 3.f),
      dw2(w.size(), 3.f);
  cpu::conv1d_backward<float>(dx1.data(), nullptr, db1.data(), g.data(), x.data(), w.data(),
                              bias.data(), s, false, false);
  cpu::conv1d_backward<float>(dx2.data(), dw2.data(), nullptr, g.data(), x.data(), w.data(),
                              bias.data(), s, false, false);
  CHECK(dx1 == dx);
  CHECK(dx2 == dx);
  CHECK(db1 == db);
  CHECK(dw2 == dw);
  std::vector<float> dx3(x.size(), 3.f);
  cpu::conv1d_backward<float>(dx3.data(), nullptr, nullptr, g.data(), x.data(), w.data(),
                              bias.data(), s, false, false);
  CHECK(dx3 == dx);
}

TEST_CASE("conv1d: ring - chunks and decode steps equal one call") {
  const int64_t C = 5, K = 4, T = 37;
  auto x = random_vector(size_t(T * C), 19, -2.f, 2.f);
  auto w = random_vector(size_t(C * K), 20), bias = random_vector(size_t(C), 21);
  std::vector<double> ref(size_t(T * C));
  Conv1dShape s{.batch = 1, .seq = T, .channels = C, .kernel = K};
  cpu::conv1d_forward(ref.data(), x.data(), w.data(), bias.data(), s);
  for (int64_t len : {K - 1, int64_t(8), int64_t(40)})
    for (const std::vector<int64_t>& chunks :
         {std::vector<int64_t>{5, 1, 1, 30}, std::vector<int64_t>{1, 2, 34},
          std::vector<int64_t>{37}, std::vector<int64_t>(37, 1)}) {
      CAPTURE(len);
      CAPTURE(chunks.size());
      // garbage in the ring: a fresh sequence (position 0) must not read it
      auto ring = random_vector(size_t(len * C), 22, 50.f, 60.f);
      auto y = run_chunks(x, chunks, w, bias, C, K, len, ring);
      CHECK(y == ref);  // same operands in the same order: bitwise equal
      // the ring holds the last len inputs (all of them when len > T) at row p % len
      for (int64_t p = std::max<int64_t>(0, T - len); p < T; ++p)
        for (int64_t c = 0; c < C; ++c)
          CHECK(ring[size_t((p % len) * C + c)] == x[size_t(p * C + c)]);
    }
}

TEST_CASE("conv1d: ring - kernel 1 needs no history") {
  const int64_t C = 3, T = 6;
  auto x = random_vector(size_t(T * C), 23), w = random_vector(size_t(C), 24),
       bias = random_vector(size_t(C), 25);
  std::vector<double> ref(size_t(T * C));
  Conv1dShape s{.batch = 1, .seq = T, .channels = C, .kernel = 1};
  cpu::conv1d_forward(ref.data(), x.data(), w.data(), bias.data(), s);
  for (int64_t len : {0, 2}) {
    CAPTURE(len);
    std::vector<double> ring(size_t(std::max<int64_t>(len, 1) * C), 0.0);
    CHECK(run_chunks(x, {2, 1, 3}, w, bias, C, 1, len, ring) == ref);
  }
}

TEST_CASE("conv1d: ring - two slots do not interfere") {
  const int64_t C = 4, K = 4, T = 12, len = 3;
  auto xa = random_vector(size_t(T * C), 26), xb = random_vector(size_t(T * C), 27);
  auto w = random_vector(size_t(C * K), 28), bias = random_vector(size_t(C), 29);
  Conv1dShape full{.batch = 1, .seq = T, .channels = C, .kernel = K};
  std::vector<double> ra(size_t(T * C)), rb(size_t(T * C));
  cpu::conv1d_forward(ra.data(), xa.data(), w.data(), bias.data(), full);
  cpu::conv1d_forward(rb.data(), xb.data(), w.data(), bias.data(), full);
  // 3 slots: sequence a in slot 2, b in slot 0, slot 1 unused; both advance together in chunks.
  const double sentinel = 1234.5;
  std::vector<double> ring(size_t(3 * len * C), sentinel), ya, yb;
  int32_t slots[2] = {2, 0}, pos[2] = {0, 0};
  Conv1dRing<double> r{ring.data(), len, 3, slots, pos};
  for (int64_t n : {5, 1, 1, 5}) {
    std::vector<double> xc = rows_of(xa, pos[0], n, C), xbc = rows_of(xb, pos[1], n, C);
    xc.insert(xc.end(), xbc.begin(), xbc.end());
    std::vector<double> yc(size_t(2 * n * C));
    Conv1dShape s{.batch = 2, .seq = n, .channels = C, .kernel = K};
    cpu::conv1d_forward(yc.data(), xc.data(), w.data(), bias.data(), s, r);
    ya.insert(ya.end(), yc.begin(), yc.begin() + n * C);
    yb.insert(yb.end(), yc.begin() + n * C, yc.end());
    pos[0] += int32_t(n);
    pos[1] += int32_t(n);
  }
  CHECK(ya == ra);
  CHECK(yb == rb);
  for (int64_t i = 0; i < len * C; ++i) CHECK(ring[size_t(len * C + i)] == sentinel);
}

TEST_CASE("conv1d: ring - slots at different positions in one call") {
  // Row 0 continues sequence a at position 7; row 1 starts sequence b afresh in a dirty slot.
  const int64_t C = 3, K = 4, len = 5, n = 4;
  auto xa = random_vector(size_t(11 * C), 30), xb = random_vector(size_t(n * C), 31);
  auto w = random_vector(size_t(C * K), 32), bias = random_vector(size_t(C), 33);
  std::vector<double> ra(size_t(11 * C)), rb(size_t(n * C));
  cpu::conv1d_forward(ra.data(), xa.data(), w.data(), bias.data(),
                      Conv1dShape{.batch = 1, .seq = 11, .channels = C, .kernel = K});
  cpu::conv1d_forward(rb.data(), xb.data(), w.data(), bias.data(),
                      Conv1dShape{.batch = 1, .seq = n, .channels = C, .kernel = K});
  std::vector<double> ring = random_vector(size_t(2 * len * C), 34, 10.f, 20.f);
  int32_t slot_a = 1, pos_a = 0;
  std::vector<double> y7(size_t(7 * C));
  cpu::conv1d_forward(y7.data(), xa.data(), w.data(), bias.data(),
                      Conv1dShape{.batch = 1, .seq = 7, .channels = C, .kernel = K},
                      Conv1dRing<double>{ring.data(), len, 2, &slot_a, &pos_a});
  int32_t slots[2] = {1, 0}, pos[2] = {7, 0};
  auto xc = rows_of(xa, 7, n, C);
  xc.insert(xc.end(), xb.begin(), xb.end());
  std::vector<double> yc(size_t(2 * n * C));
  cpu::conv1d_forward(yc.data(), xc.data(), w.data(), bias.data(),
                      Conv1dShape{.batch = 2, .seq = n, .channels = C, .kernel = K},
                      Conv1dRing<double>{ring.data(), len, 2, slots, pos});
  CHECK(std::vector<double>(yc.begin(), yc.begin() + n * C) == rows_of(ra, 7, n, C));
  CHECK(std::vector<double>(yc.begin() + n * C, yc.end()) == rb);
}

TEST_CASE("conv1d: ring - rolling a sequence back by lowering its position") {
  // Feed 10 tokens, reject the last r and re-feed different ones: equal to a fresh run over the
  // kept prefix plus the new tokens, for every ring with len >= K - 1 + r.
  const int64_t C = 3, K = 4, T = 10;
  auto x = random_vector(size_t(T * C), 35), w = random_vector(size_t(C * K), 36);
  auto bias = random_vector(size_t(C), 37);
  for (int64_t r : {1, 2, 4})
    for (int64_t extra : {0, 3}) {
      const int64_t len = K - 1 + r + extra, kept = T - r, m = r + 2;  // re-feed m tokens
      CAPTURE(r);
      CAPTURE(len);
      auto fresh = random_vector(size_t(m * C), 38 + uint64_t(r));
      std::vector<double> ring(size_t(len * C), 0.0);
      run_chunks(x, {6, T - 6}, w, bias, C, K, len, ring);  // positions 0..9 seen
      int32_t slot = 0, pos = int32_t(kept);
      std::vector<double> y(size_t(m * C));
      cpu::conv1d_forward(y.data(), fresh.data(), w.data(), bias.data(),
                          Conv1dShape{.batch = 1, .seq = m, .channels = C, .kernel = K},
                          Conv1dRing<double>{ring.data(), len, 1, &slot, &pos});
      auto xn = rows_of(x, 0, kept, C);
      xn.insert(xn.end(), fresh.begin(), fresh.end());
      std::vector<double> ref(size_t((kept + m) * C));
      cpu::conv1d_forward(ref.data(), xn.data(), w.data(), bias.data(),
                          Conv1dShape{.batch = 1, .seq = kept + m, .channels = C, .kernel = K});
      CHECK(y == rows_of(ref, kept, m, C));
    }
}

TEST_CASE("conv1d: float and bf16 instantiations agree with double") {
  const int64_t batch = 2, seq = 13, C = 24, K = 4;
  Conv1dShape s{.batch = batch, .seq = seq, .channels = C, .kernel = K};
  const size_t n = size_t(batch * seq * C);
  auto xf = test::round_to_bf16(random_vector<float>(n, 39, -2.f, 2.f));
  auto wf = test::round_to_bf16(random_vector<float>(size_t(C * K), 40));
  auto bf = test::round_to_bf16(random_vector<float>(size_t(C), 41));
  auto gf = test::round_to_bf16(random_vector<float>(n, 42));
  auto xd = test::cast_vector<double>(xf), wd = test::cast_vector<double>(wf),
       bd = test::cast_vector<double>(bf), gd = test::cast_vector<double>(gf);
  std::vector<double> y_d(n), dx_d(n), dw_d(wd.size()), db_d(bd.size());
  cpu::conv1d_forward(y_d.data(), xd.data(), wd.data(), bd.data(), s);
  cpu::conv1d_backward(dx_d.data(), dw_d.data(), db_d.data(), gd.data(), xd.data(), wd.data(),
                       bd.data(), s, false, false);

  std::vector<float> y_f(n), dx_f(n), dw_f(wf.size()), db_f(bf.size());
  cpu::conv1d_forward(y_f.data(), xf.data(), wf.data(), bf.data(), s);
  cpu::conv1d_backward(dx_f.data(), dw_f.data(), db_f.data(), gf.data(), xf.data(), wf.data(),
                       bf.data(), s, false, false);
  test::require_close("conv1d float y", y_f, y_d, 1e-6);
  test::require_close("conv1d float dx", dx_f, dx_d, 1e-6);
  test::require_close("conv1d float dw", dw_f, dw_d, 1e-6);
  test::require_close("conv1d float dbias", db_f, db_d, 1e-6);

  auto xb = test::cast_vector<bf16>(xf), wb = test::cast_vector<bf16>(wf),
       bb = test::cast_vector<bf16>(bf), gb = test::cast_vector<bf16>(gf);
  std::vector<bf16> y_b(n), dx_b(n), dw_b(wb.size()), db_b(bb.size());
  cpu::conv1d_forward(y_b.data(), xb.data(), wb.data(), bb.data(), s);
  cpu::conv1d_backward(dx_b.data(), dw_b.data(), db_b.data(), gb.data(), xb.data(), wb.data(),
                       bb.data(), s, false, false);
  test::require_close("conv1d bf16 y", y_b, y_d, 1e-2);
  test::require_close("conv1d bf16 dx", dx_b, dx_d, 1e-2);
  test::require_close("conv1d bf16 dw", dw_b, dw_d, 1e-2);
  test::require_close("conv1d bf16 dbias", db_b, db_d, 1e-2);

  // A bf16 ring in chunks gives the bf16 one-call result exactly.
  Conv1dShape one{.batch = 1, .seq = seq, .channels = C, .kernel = K};
  std::vector<bf16> y1(size_t(seq * C)), yc(size_t(seq * C)), ring(size_t(3 * C));
  cpu::conv1d_forward(y1.data(), xb.data(), wb.data(), bb.data(), one);
  int32_t slot = 0, pos = 0;
  Conv1dRing<bf16> rg{ring.data(), 3, 1, &slot, &pos};
  for (int64_t chunk : {4, 9}) {
    Conv1dShape cs{.batch = 1, .seq = chunk, .channels = C, .kernel = K};
    cpu::conv1d_forward(yc.data() + pos * C, xb.data() + pos * C, wb.data(), bb.data(), cs, rg);
    pos += int32_t(chunk);
  }
  CHECK(test::bytes_of(yc) == test::bytes_of(y1));
}

TEST_CASE("conv1d: bad arguments are errors") {
  std::vector<float> a(256, 1.f), o(256), ring(64);
  auto both_throw = [&](Conv1dShape s) {
    CHECK_THROWS_AS(cpu::conv1d_forward(o.data(), a.data(), a.data(), a.data(), s), Error);
    CHECK_THROWS_AS(cpu::conv1d_backward(o.data(), o.data(), o.data(), a.data(), a.data(),
                                         a.data(), a.data(), s, false, false),
                    Error);
  };
  both_throw({.batch = -1, .seq = 2, .channels = 4});
  both_throw({.batch = 1, .seq = -1, .channels = 4});
  both_throw({.batch = 1, .seq = 2, .channels = 0});
  both_throw({.batch = 1, .seq = 2, .channels = 4, .kernel = 0});
  both_throw({.batch = 1, .seq = 2, .channels = 4, .kernel = 9});
  both_throw({.batch = 1, .seq = 2, .channels = 4, .x_stride = 3});
  both_throw({.batch = 1, .seq = 2, .channels = 4, .y_stride = 3});

  Conv1dShape s{.batch = 1, .seq = 2, .channels = 4, .kernel = 4};
  int32_t slot = 0, pos = 0, bad_slot = 2, neg_slot = -1, neg_pos = -1;
  auto fwd = [&](Conv1dRing<float> r) {
    cpu::conv1d_forward(o.data(), a.data(), a.data(), a.data(), s, r);
  };
  CHECK_THROWS_AS(fwd({ring.data(), 2, 1, &slot, &pos}), Error);        // ring shorter than K - 1
  CHECK_THROWS_AS(fwd({ring.data(), 3, 0, &slot, &pos}), Error);        // no slots
  CHECK_THROWS_AS(fwd({ring.data(), 3, 1, nullptr, &pos}), Error);      // slots missing
  CHECK_THROWS_AS(fwd({ring.data(), 3, 1, &slot, nullptr}), Error);     // positions missing
  CHECK_THROWS_AS(fwd({ring.data(), 3, 2, &bad_slot, &pos}), Error);    // slot == n_slots
  CHECK_THROWS_AS(fwd({ring.data(), 3, 2, &neg_slot, &pos}), Error);    // slot < 0
  CHECK_THROWS_AS(fwd({ring.data(), 3, 2, &slot, &neg_pos}), Error);    // position < 0
  CHECK_NOTHROW(fwd({ring.data(), 3, 2, &slot, &pos}));
}
