// cpu::quant_linear_rows_q8, the block products with activations quantised to 8 bits: the
// quantiser's codes and scales, the integer products against a double-precision product of the
// same dequantised operands (so only float rounding separates them), the error against float
// activations within the quantisation bound, the same bits on the portable and AVX2 paths, and
// the row-invariance contract.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/io/dequantize.hpp>
#include <mil/kernels/quant_rows_q8.hpp>

#include "common/random.hpp"
#include "common/random_blocks.hpp"

using namespace mil;
using io::GgmlType;
using cpu::QuantRowsPath;

namespace {

using test::Bytes;
using test::random_weights;

const GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K};

int64_t block_size(GgmlType t) { return io::ggml_type_info_or_throw(t).block_size; }

// Activations whose groups of 32 span magnitudes from 1e-3 to 30, as a residual stream's do.
std::vector<float> activations(int64_t rows, int64_t in, uint32_t seed) {
  auto x = test::random_vector<float>(size_t(rows * in), seed);
  for (int64_t g = 0; g < rows * in / 32; ++g) {
    const float scale = std::pow(10.f, float(g % 5) - 3.f) * 3.f;
    for (int i = 0; i < 32; ++i) x[size_t(32 * g + i)] *= scale;
  }
  return x;
}

// The paths this CPU runs (the SIMD ones it lacks are skipped with a message).
std::vector<QuantRowsPath> paths() {
  std::vector<QuantRowsPath> p{QuantRowsPath::portable};
  if (cpu::quant_rows_avx2_supported()) p.push_back(QuantRowsPath::avx2);
  if (cpu::cpu_has_avx512_vnni()) p.push_back(QuantRowsPath::avx512);
  static bool told = false;
  if (!told && p.size() < 3) MESSAGE("this CPU lacks AVX2 or AVX-512 VNNI: the paths it cannot run are not tested");
  told = true;
  return p;
}

struct ThreadsGuard {
  int saved = cpu::threads();
  ~ThreadsGuard() { cpu::set_threads(saved); }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

// Catches a scale off by the wrong divisor (amax / 128, 1 / amax), truncation instead of rounding
// (error up to d, not d / 2), codes past +-127 (which the SIMD path's sign trick cannot take), a
// sum without the scale, and a non-finite group that would turn into codes (UB) instead of NaN.
TEST_CASE("Q8Rows: codes, scales and sums of each group of 32") {
  const int64_t rows = 3, in = 96;  // 9 groups
  auto x = activations(rows, in, 5);
  std::fill(x.begin() + 32, x.begin() + 64, 0.f);  // an all-zero group
  x[70] = -100.f;                                  // a group whose largest magnitude is negative
  for (int i = 0; i < 32; ++i) x[size_t(96 + i)] = i % 3 == 0 ? 0.f : float(i - 16) * 1e-39f;  // 127 / amax overflows
  for (int i = 0; i < 32; ++i) x[size_t(128 + i)] = i == 5 ? 1e-44f : 0.f;  // the scale underflows to 0
  cpu::Q8Rows q;
  q.quantize(x.data(), rows, in);
  REQUIRE(q.rows == rows);
  REQUIRE(q.in == in);
  for (int64_t g = 0; g < rows * in / 32; ++g) {
    CAPTURE(g);
    float amax = 0;
    int total = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[size_t(32 * g + i)]));
    const float d = q.d[size_t(g)];
    CHECK(d == amax / 127.f);
    for (int i = 0; i < 32; ++i) {
      const int code = q.q[size_t(32 * g + i)];
      total += code;
      CHECK(std::abs(code) <= 127);
      CHECK(std::fabs(x[size_t(32 * g + i)] - d * float(code)) <= 0.5f * d * (1 + 1e-5f) + 1e-30f);
      if (std::fabs(x[size_t(32 * g + i)]) == amax && d > 0) CHECK(std::abs(code) == 127);
    }
    CHECK(q.sum[size_t(g)] == d * float(total));
  }
  CHECK(q.d[1] == 0.f);
  CHECK(q.q[70] == -127);
  CHECK(q.d[3] > 0.f);
  CHECK(q.q[96 + 31] == 127);  // the largest magnitude of the tiny group still maps to 127
  CHECK(q.d[4] == 0.f);
  CHECK(std::all_of(q.q.begin() + 128, q.q.begin() + 160, [](int8_t c) { return c == 0; }));

  x[5] = std::numeric_limits<float>::infinity();
  x[40] = std::nanf("");
  q.quantize(x.data(), rows, in);
  CHECK(std::isnan(q.d[0]));
  CHECK(std::isnan(q.d[1]));
  CHECK(std::isnan(q.sum[0]));
  CHECK(std::all_of(q.q.begin(), q.q.begin() + 64, [](int8_t c) { return c == 0; }));
  CHECK(q.d[2] > 0.f);

  CHECK_THROWS_WITH_AS(q.quantize(x.data(), 1, 40), doctest::Contains("whole groups of 32"), Error);
}

// Against the double product of the same dequantised weights and of the activations' own d q: only
// float rounding may separate them (per element 1.01 c eps sum |d q| (|scale part| + |min part|)
// of each weight, c = in / 16 + 12), so a wrong nibble half, Q4_0's centre, Q4_1 / Q4_K's minimum (its sign, or applied to the
// wrong group), Q4_K's sub-block scales, Q6_K's 16-element scales (lanes 0-3 vs 4-7), a block
// stride, an int16 overflow of the SIMD pairs (Q8_0's -128 weights), or a wrong row of x would
// each be far outside it.
TEST_CASE("quant_linear_rows_q8: integer products equal the dequantised operands' product") {
  uint32_t seed = 40;
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths())
      for (int64_t blocks : {1, 3})
        for (int64_t rows : {1, 3, 8, 9}) {
          const int64_t out = 37, in = blocks * block_size(type);
          CAPTURE(io::ggml_type_info_or_throw(type).name);
          CAPTURE(int(path));
          CAPTURE(rows);
          CAPTURE(in);
          const Bytes wq = random_weights(type, out, in, seed++);
          const test::Reference ref = test::dequantised(type, wq, out, in);
          const auto x = activations(rows, in, seed++);
          cpu::Q8Rows q;
          q.quantize(x.data(), rows, in);
          std::vector<float> y(size_t(rows * out), std::nanf(""));
          cpu::quant_linear_rows_q8(type, wq.data(), out, q, y.data(), false, path);
          const double eps = std::ldexp(1.0, -24), c = double(in / 16 + 12);
          int bad = 0;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < out; ++o) {
              double want = 0, magnitude = 0;
              for (int64_t i = 0; i < in; ++i) {
                const double xi = double(q.d[size_t((r * in + i) / 32)]) * double(q.q[size_t(r * in + i)]);
                want += xi * double(ref.w[size_t(o * in + i)]);
                magnitude += std::abs(xi) * double(ref.magnitude[size_t(o * in + i)]);
              }
              const double got = y[size_t(r * out + o)], bound = 1.01 * c * eps * magnitude;
              if (!(std::abs(got - want) <= bound) && bad++ < 5)
                FAIL_CHECK("y[", r, ",", o, "] = ", got, ", reference ", want, ", bound ", bound);
            }
          CHECK(bad == 0);
        }
}

// The option's cost in accuracy, against float activations: per element |y_q8 - y| <= sum_i |w_i|
// dx(i) / 2 (each activation moves by at most half its group's step) plus float rounding; the
// normalised error is printed, the figure docs/PERFORMANCE.md quotes.
TEST_CASE("quant_linear_rows_q8: error against float activations within the quantisation bound") {
  const int64_t rows = 4, out = 64;
  for (GgmlType type : kTypes) {
    const int64_t in = 2 * std::max<int64_t>(block_size(type), 256);
    CAPTURE(io::ggml_type_info_or_throw(type).name);
    const Bytes wq = random_weights(type, out, in, 9);
    const auto w = test::dequantised(type, wq, out, in).w;
    const auto x = test::random_vector<float>(size_t(rows * in), 10);
    cpu::Q8Rows q;
    q.quantize(x.data(), rows, in);
    std::vector<float> y8(size_t(rows * out)), yf(size_t(rows * out));
    cpu::quant_linear_rows_q8(type, wq.data(), out, q, y8.data());
    cpu::quant_linear_rows(type, wq.data(), out, in, x.data(), rows, yf.data());
    double err2 = 0, ref2 = 0, worst = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double bound = 0, magnitude = 0;
        for (int64_t i = 0; i < in; ++i) {
          const double wi = std::abs(double(w[size_t(o * in + i)]));
          bound += wi * 0.5 * double(q.d[size_t((r * in + i) / 32)]);
          magnitude += wi * std::abs(double(x[size_t(r * in + i)]));
        }
        bound += 1e-5 * magnitude;  // both products' float rounding
        const double err = std::abs(double(y8[size_t(r * out + o)]) - double(yf[size_t(r * out + o)]));
        CHECK(err <= bound);
        worst = std::max(worst, err / bound);
        err2 += err * err, ref2 += double(yf[size_t(r * out + o)]) * double(yf[size_t(r * out + o)]);
      }
    const double normalised = std::sqrt(err2 / ref2);
    MESSAGE(io::ggml_type_info_or_throw(type).name, ": normalised error ", normalised,
            ", worst element at ", worst, " of its bound");
    CHECK(normalised < 0.02);
    CHECK(normalised > 0);  // the option does change the result: a test that it runs at all
  }
}

// Catches a SIMD path that orders its float operations differently from the contract (lanes
// converted or scaled in another grouping, even and odd groups mixed, the minimum folded into the
// lanes, another tree, the AVX-512 path's lone last group), and accumulate / y_stride handled
// differently between paths. Widths of 1, 2 and 3 blocks give odd group counts; 8448 values (264
// groups) and one block less cross the minima's 256-group chunk with a partial last one; a NaN
// activation must reach the same outputs on every path.
TEST_CASE("quant_linear_rows_q8: every path gives the portable path's bits") {
  const int64_t out = 70, ldy = 75;
  for (QuantRowsPath path : paths()) {
    if (path == QuantRowsPath::portable) continue;
    for (GgmlType type : kTypes)
      for (int64_t blocks : {int64_t(1), int64_t(2), int64_t(3), 8448 / block_size(type) - 1, 8448 / block_size(type)})
        for (int64_t rows = 1; rows <= 9; ++rows) {
          if (blocks > 3 && rows != 1 && rows != 9) continue;  // rows past 256 groups: 1 and a full tile + 1
          const bool accumulate = rows % 2 == 0;
          CAPTURE(int(path));
          CAPTURE(io::ggml_type_info_or_throw(type).name);
          CAPTURE(blocks);
          CAPTURE(rows);
          const int64_t in = blocks * block_size(type);
          const Bytes wq = random_weights(type, out, in, uint32_t(rows + 10 * blocks) + 60);
          cpu::Q8Rows q;
          const auto x = activations(rows, in, uint32_t(rows) + 61);
          q.quantize(x.data(), rows, in);
          const auto y0 = test::random_vector<float>(size_t(rows * ldy), 62);
          auto a = y0, b = y0;
          cpu::quant_linear_rows_q8(type, wq.data(), out, q, a.data(), accumulate, QuantRowsPath::portable, ldy);
          cpu::quant_linear_rows_q8(type, wq.data(), out, q, b.data(), accumulate, path, ldy);
          CHECK(same_bits(a, b));
          if (rows == 9) {  // a non-finite activation makes its row NaN on every path, the others unchanged
            auto bad = x;
            bad[size_t(4 * in + 7)] = std::nanf("");
            cpu::Q8Rows qb;
            qb.quantize(bad.data(), rows, in);
            auto c = y0, e = y0;
            cpu::quant_linear_rows_q8(type, wq.data(), out, qb, c.data(), accumulate, QuantRowsPath::portable, ldy);
            cpu::quant_linear_rows_q8(type, wq.data(), out, qb, e.data(), accumulate, path, ldy);
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t j = 0; j < out; ++j) {
                const size_t at = size_t(r * ldy + j);
                CHECK(std::isnan(c[at]) == (r == 4));
                CHECK(std::isnan(e[at]) == (r == 4));
                if (r != 4) CHECK(c[at] == e[at]);
              }
          }
          for (int64_t r = 0; r < rows; ++r)  // columns past out untouched
            for (int64_t j = out; j < ldy; ++j) CHECK(a[size_t(r * ldy + j)] == y0[size_t(r * ldy + j)]);
        }
  }
}

// Catches a row's result depending on its row tile or on the thread count: speculative
// verification of k tokens must equal k single decode steps with this option too.
TEST_CASE("quant_linear_rows_q8: a row's bits depend neither on the other rows nor on the threads") {
  ThreadsGuard guard;
  const int64_t out = 130, rows = 9;
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths()) {
      CAPTURE(io::ggml_type_info_or_throw(type).name);
      CAPTURE(int(path));
      const int64_t in = block_size(type);
      const Bytes wq = random_weights(type, out, in, 70);
      const auto x = activations(rows, in, 71);
      cpu::Q8Rows all, one;
      all.quantize(x.data(), rows, in);
      cpu::set_threads(1);
      std::vector<float> together(size_t(rows * out));
      cpu::quant_linear_rows_q8(type, wq.data(), out, all, together.data(), false, path);
      for (int64_t r = 0; r < rows; ++r) {
        one.quantize(x.data() + r * in, 1, in);
        std::vector<float> alone(static_cast<size_t>(out));
        cpu::quant_linear_rows_q8(type, wq.data(), out, one, alone.data(), false, path);
        CHECK(std::memcmp(alone.data(), together.data() + r * out, size_t(out) * sizeof(float)) == 0);
      }
      for (int t : {2, 3}) {
        cpu::set_threads(t);
        std::vector<float> again(size_t(rows * out));
        cpu::quant_linear_rows_q8(type, wq.data(), out, all, again.data(), false, path);
        CHECK(same_bits(again, together));
      }
    }
}

TEST_CASE("quant_linear_rows_q8: types without codes and partial blocks throw clearly") {
  cpu::Q8Rows q;
  const std::vector<float> x(64, 1.f);
  q.quantize(x.data(), 1, 64);
  std::vector<float> y(4);
  const Bytes f16(4 * 64 * 2);
  CHECK_THROWS_WITH_AS(cpu::quant_linear_rows_q8(GgmlType::F16, f16.data(), 4, q, y.data()),
                       doctest::Contains("has no integer codes"), Error);
  const Bytes k(4 * 144);
  CHECK_THROWS_WITH_AS(cpu::quant_linear_rows_q8(GgmlType::Q4_K, k.data(), 4, q, y.data()),
                       doctest::Contains("not a whole number of Q4_K blocks"), Error);
  CHECK(cpu::quant_rows_q8_supports(GgmlType::Q6_K));
  CHECK_FALSE(cpu::quant_rows_q8_supports(GgmlType::BF16));
}
