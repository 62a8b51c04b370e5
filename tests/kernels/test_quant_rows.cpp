// cpu::quant_linear_rows, the inference product on weights in their ggml block format: values of
// every path (portable, AVX2, AVX-512) against a double-precision product of io::dequantize_row's weights
// with a per-element rounding bound, and the linear_rows contract that a row's bits depend neither
// on the other rows of the call nor on the thread count.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/io/dequantize.hpp>
#include <mil/kernels/quant_rows.hpp>

#include "common/error_of.hpp"
#include "common/random_blocks.hpp"
#include "common/random.hpp"

using namespace mil;
using io::GgmlType;
using cpu::QuantRowsPath;

namespace {

using test::Bytes;
using test::put_half;
using test::random_weights;
using test::Reference;
using test::dequantised;

const GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K,
                           GgmlType::Q6_K, GgmlType::F16,  GgmlType::BF16};

struct ThreadsGuard {
  int saved = cpu::threads();
  ~ThreadsGuard() { cpu::set_threads(saved); }
};

// The paths this CPU runs; AVX2 and AVX-512 are skipped with a message where the CPU lacks them.
std::vector<QuantRowsPath> paths() {
  std::vector<QuantRowsPath> p{QuantRowsPath::portable};
  if (cpu::quant_rows_avx2_supported()) p.push_back(QuantRowsPath::avx2);
  if (cpu::quant_rows_avx512_supported()) p.push_back(QuantRowsPath::avx512);
  static bool told = false;
  if (!told && p.size() < 3)
    MESSAGE("this CPU lacks ", cpu::quant_rows_avx2_supported() ? "AVX-512F" : "AVX2/FMA/F16C",
            ": the paths it cannot run are not tested");
  told = true;
  return p;
}
const char* path_name(QuantRowsPath p) {
  return p == QuantRowsPath::avx512 ? "avx512" : p == QuantRowsPath::avx2 ? "avx2" : "portable";
}

// The product's unit of `in`: a block, or 32 values of F16 / BF16.
int64_t block_size(GgmlType t) { return cpu::quant_rows_block(t); }

// y = x W^T (+ y0) against the double-precision product of the reference weights. Per element:
// |y - ref| <= 1.01 c eps (sum_i |x_i| magnitude_i + |y0|), eps = 2^-24, c = in / 16 + 9: in / 16
// additions per lane, 4 in the lanes' tree, 1 for y0, 1 for each product, and 3 for the weight
// itself (the kernel's and the reference decoder's roundings of d q + m); the pair step adds no
// depth (its product and addition are the ones counted). Also the normalised
// error sqrt(sum err^2 / sum ref^2) < 1e-5 (float's 6e-8 times a few sqrt(in)).
void check_values(GgmlType type, QuantRowsPath path, int64_t rows, int64_t out, int64_t in,
                  bool accumulate, uint32_t seed) {
  CAPTURE(io::ggml_type_info_or_throw(type).name);
  CAPTURE(path_name(path));
  CAPTURE(rows);
  CAPTURE(out);
  CAPTURE(in);
  CAPTURE(accumulate);
  const Bytes q = random_weights(type, out, in, seed);
  const Reference ref = dequantised(type, q, out, in);
  const auto x = test::random_vector<float>(size_t(rows * in), seed + 1);
  const auto y0 = test::random_vector<float>(size_t(rows * out), seed + 2, -4.f, 4.f);
  // Not accumulating, y starts as NaN: it must be overwritten, never read.
  std::vector<float> y = accumulate ? y0 : std::vector<float>(y0.size(), std::nanf(""));
  cpu::quant_linear_rows(type, q.data(), out, in, x.data(), rows, y.data(), accumulate, path);
  const double eps = std::ldexp(1.0, -24), c = double(in / 16 + 9);
  double err2 = 0, ref2 = 0;
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double want = accumulate ? double(y0[size_t(r * out + o)]) : 0.0;
      double magnitude = std::abs(want);
      for (int64_t i = 0; i < in; ++i) {
        const double xi = double(x[size_t(r * in + i)]);
        want += xi * double(ref.w[size_t(o * in + i)]);
        magnitude += std::abs(xi) * double(ref.magnitude[size_t(o * in + i)]);
      }
      const double got = double(y[size_t(r * out + o)]), err = std::abs(got - want);
      const double bound = 1.01 * c * eps * magnitude;
      err2 += err * err, ref2 += want * want;
      if (!(err <= bound) && bad++ < 5)
        FAIL_CHECK("y[", r, ",", o, "] = ", got, ", reference ", want, ", bound ", bound);
    }
  CHECK(bad == 0);
  CHECK(std::sqrt(err2 / ref2) < 1e-5);
}

bool same_bits(const float* a, const float* b, int64_t n) {
  return std::memcmp(a, b, size_t(n) * sizeof(float)) == 0;
}

}  // namespace

// Catches a wrong layout in either path's decoder (nibble order, Q4_1's min ignored, Q4_K's
// scale/min packing, Q6_K's ql/qh/scale indexing, a wrong block stride within or between rows),
// a weight row skipped or repeated (out = 1, 7, 33: one, several and past-32 rows), row tiles past
// 8 (rows = 9), and y read when not accumulating (NaN start).
TEST_CASE("quant_linear_rows: values within the rounding bound - every type, every path") {
  uint32_t seed = 100;
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths())
      for (int64_t blocks : {1, 3})
        for (int64_t out : {1, 7, 33})
          for (int64_t rows = 1; rows <= 9; ++rows) {
            check_values(type, path, rows, out, blocks * block_size(type), rows % 2 == 0, seed);
            seed += 7;
          }
}

// Catches accumulate ignored (y overwritten) or applied twice, for every row tile size.
TEST_CASE("quant_linear_rows: accumulate adds to y") {
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths())
      for (int64_t rows : {1, 2, 5, 8}) check_values(type, path, rows, 5, block_size(type), true, 7 + uint32_t(rows));
}

// Catches a summation order that depends on the row tile (e.g. a tile of 5 rows pairing or adding
// its lanes in another order than a tile of 1, or extra accumulators for small tiles):
// speculative verification of k tokens must equal k single decode steps.
TEST_CASE("quant_linear_rows: a row's bits do not depend on the rows computed with it") {
  const int64_t out = 70, max_rows = 9;  // two column blocks of 64, remainders after every tile
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths()) {
      const int64_t in = 2 * block_size(type);
      const Bytes q = random_weights(type, out, in, 300);
      const auto x = test::random_vector<float>(size_t(max_rows * in), 301);
      const auto y0 = test::random_vector<float>(size_t(max_rows * out), 302);
      for (bool accumulate : {false, true}) {
        std::vector<float> alone = y0;
        for (int64_t r = 0; r < max_rows; ++r)
          cpu::quant_linear_rows(type, q.data(), out, in, x.data() + r * in, 1,
                                 alone.data() + r * out, accumulate, path);
        for (int64_t rows : {2, 5, 9})
          for (int64_t first = 0; first + rows <= max_rows; first += 2) {
            CAPTURE(io::ggml_type_info_or_throw(type).name);
            CAPTURE(path_name(path));
            CAPTURE(accumulate);
            CAPTURE(rows);
            CAPTURE(first);
            std::vector<float> together = y0;
            cpu::quant_linear_rows(type, q.data(), out, in, x.data() + first * in, rows,
                                   together.data() + first * out, accumulate, path);
            for (int64_t r = first; r < first + rows; ++r)
              if (!same_bits(together.data() + r * out, alone.data() + r * out, out))
                FAIL_CHECK("row ", r, " differs computed among ", rows, " rows from ", first);
          }
      }
    }
}

// Catches threads that split `in` (partial sums added in a schedule-dependent order) or share an
// accumulator: the result must be bitwise the same for 1 to 4 threads.
TEST_CASE("quant_linear_rows: bits do not depend on the thread count") {
  ThreadsGuard guard;
  const int64_t rows = 5, out = 300;
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths()) {
      const int64_t in = 2 * block_size(type);
      const Bytes q = random_weights(type, out, in, 400);
      const auto x = test::random_vector<float>(size_t(rows * in), 401);
      std::vector<float> one(size_t(rows * out)), many(size_t(rows * out));
      cpu::set_threads(1);
      cpu::quant_linear_rows(type, q.data(), out, in, x.data(), rows, one.data(), false, path);
      for (int n : {2, 3, 4}) {
        cpu::set_threads(n);
        cpu::quant_linear_rows(type, q.data(), out, in, x.data(), rows, many.data(), false, path);
        CAPTURE(io::ggml_type_info_or_throw(type).name);
        CAPTURE(path_name(path));
        CAPTURE(n);
        CHECK(same_bits(one.data(), many.data(), rows * out));
      }
    }
}

// Catches aligned loads of the weights (a crash, or under UBSan a misaligned access): rows start
// at any byte in a file. The result must equal the aligned copy's bit for bit.
TEST_CASE("quant_linear_rows: weights at an odd address") {
  const int64_t rows = 3, out = 9;
  for (GgmlType type : kTypes)
    for (QuantRowsPath path : paths()) {
      const int64_t in = block_size(type);
      const Bytes q = random_weights(type, out, in, 500);
      Bytes shifted(q.size() + 1);
      std::memcpy(shifted.data() + 1, q.data(), q.size());
      const auto x = test::random_vector<float>(size_t(rows * in), 501);
      std::vector<float> aligned(size_t(rows * out)), odd(size_t(rows * out));
      cpu::quant_linear_rows(type, q.data(), out, in, x.data(), rows, aligned.data(), false, path);
      cpu::quant_linear_rows(type, shifted.data() + 1, out, in, x.data(), rows, odd.data(), false, path);
      CAPTURE(io::ggml_type_info_or_throw(type).name);
      CAPTURE(path_name(path));
      CHECK(same_bits(aligned.data(), odd.data(), rows * out));
    }
}

// Catches the automatic choice ignoring the CPU: it must be the widest SIMD path the CPU has, and
// run it (the same bits as asking for that path).
TEST_CASE("quant_linear_rows: automatic takes the widest SIMD path the CPU has") {
  const QuantRowsPath widest = cpu::quant_rows_avx512_supported() ? QuantRowsPath::avx512
                               : cpu::quant_rows_avx2_supported() ? QuantRowsPath::avx2
                                                                  : QuantRowsPath::portable;
  CHECK(cpu::quant_rows_path_for(QuantRowsPath::automatic) == widest);
  CHECK(cpu::quant_rows_path_for(QuantRowsPath::portable) == QuantRowsPath::portable);
  const int64_t rows = 2, out = 5, in = 256;
  const Bytes q = random_weights(GgmlType::Q4_K, out, in, 600);
  const auto x = test::random_vector<float>(size_t(rows * in), 601);
  std::vector<float> a(size_t(rows * out)), b(size_t(rows * out));
  cpu::quant_linear_rows(GgmlType::Q4_K, q.data(), out, in, x.data(), rows, a.data());
  cpu::quant_linear_rows(GgmlType::Q4_K, q.data(), out, in, x.data(), rows, b.data(), false, widest);
  CHECK(same_bits(a.data(), b.data(), rows * out));
}

// Catches an AVX-512 decoder or lane order that differs from the AVX2 path's (a weight decoded by
// another formula, elements 0-15 and 16-31 paired otherwise, the lanes summed in another tree): the
// two must give the same bits for every type, tile and accumulate, so a model's outputs do not
// depend on which of the two a CPU has.
TEST_CASE("quant_linear_rows: the AVX-512 and AVX2 paths give the same bits") {
  if (!cpu::quant_rows_avx512_supported()) {
    MESSAGE("this CPU lacks AVX-512F: skipped");
    return;
  }
  const int64_t out = 70, rows = 9;
  for (GgmlType type : kTypes)
    for (bool accumulate : {false, true}) {
      const int64_t in = 3 * block_size(type);
      const Bytes q = random_weights(type, out, in, 700);
      const auto x = test::random_vector<float>(size_t(rows * in), 701);
      const auto y0 = test::random_vector<float>(size_t(rows * out), 702);
      for (int64_t n = 1; n <= rows; ++n) {
        std::vector<float> a = y0, b = y0;
        cpu::quant_linear_rows(type, q.data(), out, in, x.data(), n, a.data(), accumulate,
                               QuantRowsPath::avx2);
        cpu::quant_linear_rows(type, q.data(), out, in, x.data(), n, b.data(), accumulate,
                               QuantRowsPath::avx512);
        CAPTURE(io::ggml_type_info_or_throw(type).name);
        CAPTURE(accumulate);
        CAPTURE(n);
        CHECK(same_bits(a.data(), b.data(), n * out));
      }
    }
}

// Catches a decoder run on a type it does not know (garbage, or reading past a row) and a partial
// last block read past the row; empty sizes must touch nothing and in = 0 writes zeros.
TEST_CASE("quant_linear_rows: unsupported types, partial blocks and bad sizes throw clearly") {
  std::vector<float> x(512, 1.f), y(8, 0.f);
  Bytes w(4096, 0);
  auto call = [&](GgmlType t, int64_t out, int64_t in, int64_t rows) {
    return test::error_of([&] { cpu::quant_linear_rows(t, w.data(), out, in, x.data(), rows, y.data()); });
  };
  CHECK(call(GgmlType::Q5_0, 1, 32, 1).find("Q5_0 is not supported") != std::string::npos);
  CHECK(call(GgmlType::F32, 1, 32, 1).find("F32 is not supported") != std::string::npos);
  CHECK(call(GgmlType(uint32_t(4)), 1, 32, 1).find("unknown ggml tensor type 4") != std::string::npos);
  CHECK(call(GgmlType::Q8_0, 1, 48, 1).find("48 is not a whole number of Q8_0 blocks of 32") !=
        std::string::npos);
  CHECK(call(GgmlType::Q4_K, 1, 32, 1).find("32 is not a whole number of Q4_K blocks of 256") !=
        std::string::npos);
  CHECK(call(GgmlType::Q8_0, -1, 32, 1).find("negative size") != std::string::npos);
  CHECK(test::error_of([&] {
          cpu::quant_linear_rows(GgmlType::Q8_0, nullptr, 1, 32, x.data(), 1, y.data());
        }).find("null operand") != std::string::npos);
  CHECK(y == std::vector<float>(8, 0.f));  // a rejected call writes nothing
  for (QuantRowsPath path : paths()) {
    std::vector<float> z{1, 2, 3, 4};
    cpu::quant_linear_rows(GgmlType::Q4_1, nullptr, 2, 0, nullptr, 2, z.data(), true, path);
    CHECK(z == std::vector<float>{1, 2, 3, 4});
    cpu::quant_linear_rows(GgmlType::Q4_1, nullptr, 2, 0, nullptr, 2, z.data(), false, path);
    CHECK(z == std::vector<float>(4, 0.f));
  }
  cpu::quant_linear_rows(GgmlType::Q8_0, nullptr, 0, 32, nullptr, 3, nullptr);  // out = 0
}
