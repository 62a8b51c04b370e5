// bf16 and fp16 conversions: exhaustive round trips over all 65536 bit patterns, every halfway
// point between neighbours (round to nearest, ties to even), and random floats against a reference
// that rounds by comparing distances in double.
#include <doctest/doctest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <mil/core/dtype.hpp>
#include <mil/core/rng.hpp>

using namespace mil;

namespace {

bool bf16_is_nan(uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x007fu) != 0; }
bool fp16_is_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0; }

// Value of a positive bf16 pattern for rounding: +inf counts as 2^128, the next power of two after
// the largest finite value (IEEE rounds as if the exponent were unbounded, then overflows).
double bf16_magnitude(uint16_t b) {
  if (b == 0x7f80u) return std::ldexp(1.0, 128);
  return double(bits_float(uint32_t(b) << 16));
}

// Value of an fp16 pattern from the format's definition (no bit tricks shared with dtype.hpp).
double fp16_value(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double sign = (h & 0x8000u) ? -1.0 : 1.0;
  if (e == 0) return sign * std::ldexp(double(m), -24);
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  return sign * std::ldexp(double(1024 + m), e - 25);
}
double fp16_magnitude(uint16_t h) { return h == 0x7c00u ? 65536.0 : fp16_value(h); }

// Round-to-nearest-even of |f| among the positive patterns [0, top], where magnitude() is
// increasing; returns the pattern with the sign of f added.
template <class Magnitude>
uint16_t reference_round(float f, uint16_t top, uint16_t sign_bit, Magnitude magnitude) {
  double a = std::fabs(double(f));
  uint16_t sign = std::signbit(f) ? sign_bit : 0;
  if (a >= magnitude(top)) return uint16_t(sign | top);
  uint16_t lo = 0, hi = top;  // invariant: magnitude(lo) <= a < magnitude(hi)
  while (hi - lo > 1) {
    uint16_t mid = uint16_t((lo + hi) / 2);
    (magnitude(mid) <= a ? lo : hi) = mid;
  }
  double below = a - magnitude(lo), above = magnitude(hi) - a;
  uint16_t r = below < above ? lo : above < below ? hi : (lo % 2 == 0 ? lo : hi);
  return uint16_t(sign | r);
}
uint16_t bf16_reference(float f) { return reference_round(f, 0x7f80u, 0x8000u, bf16_magnitude); }
uint16_t fp16_reference(float f) { return reference_round(f, 0x7c00u, 0x8000u, fp16_magnitude); }

// Random float bits from a Philox stream: all exponents when full_range, otherwise exponents
// around fp16's range (2^-30 .. 2^17), so both its subnormal and overflow paths are hit.
float random_float(uint64_t i, bool full_range) {
  rng::U32x4 r = rng::random_block(2024, 5, i);
  uint32_t bits = r.v[0];
  if (!full_range) {
    uint32_t exponent = 127 - 30 + r.v[1] % 48;
    bits = (bits & 0x807fffffu) | (exponent << 23);
  }
  return bits_float(bits);
}

}  // namespace

TEST_CASE("bf16: every bit pattern survives bf16 -> float -> bf16") {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    float f = float(bf16::from_bits(uint16_t(b)));
    CHECK(float_bits(f) == b << 16);  // widening is exact: the pattern becomes the top half
    uint16_t back = bf16(f).bits;
    if (bf16_is_nan(uint16_t(b))) {
      // NaN stays NaN with its sign and payload; a signalling NaN becomes quiet.
      CHECK(back == (b | 0x0040u));
    } else {
      CHECK(back == b);
    }
  }
}

TEST_CASE("bf16: halfway points round to even - points beside them to the nearer value") {
  int checked = 0;
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    if ((b & 0x7f80u) == 0x7f80u) continue;  // inf and NaN have no upper neighbour
    uint32_t halfway = (b << 16) | 0x8000u;    // between b and b + 1 (b + 1 may be inf)
    uint16_t even = uint16_t(b % 2 == 0 ? b : b + 1);
    INFO("bf16 pattern ", b);
    CHECK(bf16(bits_float(halfway)).bits == even);
    CHECK(bf16(bits_float(halfway + 1)).bits == b + 1);
    CHECK(bf16(bits_float(halfway - 1)).bits == b);
    ++checked;
  }
  CHECK(checked == 65536 - 256);
}

TEST_CASE("bf16: random floats round like the double reference") {
  for (uint64_t i = 0; i < 100000; ++i) {
    float f = random_float(i, true);
    if (std::isnan(f)) continue;
    INFO("float bits ", float_bits(f));
    REQUIRE(bf16(f).bits == bf16_reference(f));
  }
}

TEST_CASE("bf16: special and known values") {
  CHECK(bf16(0.0f).bits == 0x0000);
  CHECK(bf16(-0.0f).bits == 0x8000);
  CHECK(bf16(1.0f).bits == 0x3f80);
  CHECK(bf16(-2.0f).bits == 0xc000);
  CHECK(bf16(1.0f / 3.0f).bits == 0x3eab);             // 0x3eaaaaab rounds up
  CHECK(bf16(1.0f + 0x1p-8f).bits == 0x3f80);          // tie: down to the even 1.0
  CHECK(bf16(1.0f + 3 * 0x1p-8f).bits == 0x3f82);      // tie: up to the even neighbour
  CHECK(bf16(INFINITY).bits == 0x7f80);
  CHECK(bf16(-INFINITY).bits == 0xff80);
  CHECK(bf16(FLT_MAX).bits == 0x7f80);                 // beyond bf16's max + half an ulp
  CHECK(bf16(-FLT_MAX).bits == 0xff80);
  CHECK(bf16(bits_float(0x7f7f7fffu)).bits == 0x7f7f); // just below the overflow threshold
  CHECK(bf16(bits_float(0x00000001u)).bits == 0x0000); // float subnormals round like any value
  CHECK(bf16(bits_float(0x007fffffu)).bits == 0x0080); // up to the smallest normal
  CHECK(bf16(bits_float(0x00010000u)).bits == 0x0001); // bf16 subnormals are kept
  // NaN never becomes inf, even when its payload lies only in the bits that are dropped.
  CHECK(bf16_is_nan(bf16(bits_float(0x7f800001u)).bits));
  CHECK(bf16_is_nan(bf16(bits_float(0xff800001u)).bits));
  CHECK((bf16(bits_float(0xff800001u)).bits & 0x8000) != 0);
  CHECK(bf16_is_nan(bf16(std::numeric_limits<float>::quiet_NaN()).bits));
  CHECK(std::isnan(float(bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(float(bf16(-2.5f)) == -2.5f);
}

TEST_CASE("fp16: every bit pattern has its defined value and survives fp16 -> float -> fp16") {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    float f = float(fp16::from_bits(uint16_t(h)));
    INFO("fp16 pattern ", h);
    if (fp16_is_nan(uint16_t(h))) {
      CHECK(std::isnan(f));
      CHECK(std::signbit(f) == ((h & 0x8000u) != 0));
      uint16_t back = fp16(f).bits;
      CHECK(fp16_is_nan(back));
      CHECK((back & 0x8000u) == (h & 0x8000u));
    } else {
      CHECK(double(f) == fp16_value(uint16_t(h)));
      CHECK(std::signbit(f) == ((h & 0x8000u) != 0));  // -0 stays -0
      CHECK(fp16(f).bits == h);
    }
  }
}

TEST_CASE("fp16: halfway points round to even - points beside them to the nearer value") {
  // Every positive finite pattern p and its upper neighbour p + 1 (0x7c00, inf, counts as 65536):
  // normal and subnormal values, the subnormal/normal boundary and the overflow threshold 65520.
  for (uint32_t p = 0; p < 0x7c00u; ++p) {
    float halfway = float((fp16_magnitude(uint16_t(p)) + fp16_magnitude(uint16_t(p + 1))) / 2);
    REQUIRE(double(halfway) * 2 == fp16_magnitude(uint16_t(p)) + fp16_magnitude(uint16_t(p + 1)));
    uint16_t even = uint16_t(p % 2 == 0 ? p : p + 1);
    float above = std::nextafter(halfway, INFINITY), below = std::nextafter(halfway, 0.0f);
    INFO("fp16 pattern ", p, " halfway ", halfway);
    CHECK(fp16(halfway).bits == even);
    CHECK(fp16(above).bits == p + 1);
    CHECK(fp16(below).bits == p);
    CHECK(fp16(-halfway).bits == (0x8000u | even));
    CHECK(fp16(-above).bits == (0x8000u | (p + 1)));
    CHECK(fp16(-below).bits == (0x8000u | p));
  }
}

TEST_CASE("fp16: random floats round like the double reference") {
  for (uint64_t i = 0; i < 100000; ++i) {
    float f = random_float(i, i % 4 == 0);  // mostly exponents near fp16's range
    if (std::isnan(f)) continue;
    INFO("float bits ", float_bits(f));
    REQUIRE(fp16(f).bits == fp16_reference(f));
  }
}

TEST_CASE("fp16: special and known values") {
  CHECK(fp16(0.0f).bits == 0x0000);
  CHECK(fp16(-0.0f).bits == 0x8000);
  CHECK(fp16(1.0f).bits == 0x3c00);
  CHECK(fp16(-2.0f).bits == 0xc000);
  CHECK(fp16(0.1f).bits == 0x2e66);
  CHECK(fp16(65504.0f).bits == 0x7bff);                  // the largest finite value
  CHECK(fp16(65519.996f).bits == 0x7bff);                // just below the overflow threshold
  CHECK(fp16(65520.0f).bits == 0x7c00);                  // tie with 65536: overflows to inf
  CHECK(fp16(1e5f).bits == 0x7c00);
  CHECK(fp16(-1e5f).bits == 0xfc00);
  CHECK(fp16(FLT_MAX).bits == 0x7c00);
  CHECK(fp16(INFINITY).bits == 0x7c00);
  CHECK(fp16(-INFINITY).bits == 0xfc00);
  CHECK(fp16(0x1p-14f).bits == 0x0400);                  // the smallest normal
  CHECK(fp16(1023 * 0x1p-24f).bits == 0x03ff);           // the largest subnormal
  CHECK(fp16(1023.5f * 0x1p-24f).bits == 0x0400);        // tie across the boundary: even
  CHECK(fp16(0x1p-24f).bits == 0x0001);                  // the smallest subnormal
  CHECK(fp16(0x1p-25f).bits == 0x0000);                  // tie with 0: even
  CHECK(fp16(3 * 0x1p-25f).bits == 0x0002);              // tie between 1 and 2 ulps: even
  CHECK(fp16(1e-10f).bits == 0x0000);
  CHECK(fp16(-1e-10f).bits == 0x8000);
  CHECK(fp16(bits_float(0x00000001u)).bits == 0x0000);   // float subnormals flush to zero
  CHECK(fp16_is_nan(fp16(std::numeric_limits<float>::quiet_NaN()).bits));
  CHECK(fp16_is_nan(fp16(bits_float(0x7f800001u)).bits));
  CHECK(fp16::to_float(0x7bff) == 65504.0f);
  CHECK(fp16::to_float(0x0001) == 0x1p-24f);
  CHECK(fp16::to_float(0x7c00) == INFINITY);
  CHECK(fp16::to_float(0xfc00) == -INFINITY);
}

TEST_CASE("dtype: storage types - names and accumulator types") {
  static_assert(sizeof(bf16) == 2 && sizeof(fp16) == 2);
  static_assert(alignof(bf16) == 2 && alignof(fp16) == 2);
  static_assert(std::is_trivially_copyable_v<bf16> && std::is_trivially_copyable_v<fp16>);
  static_assert(std::is_standard_layout_v<bf16> && std::is_standard_layout_v<fp16>);
  static_assert(std::is_same_v<acc_t<bf16>, float> && std::is_same_v<acc_t<fp16>, float>);
  static_assert(std::is_same_v<acc_t<float>, float> && std::is_same_v<acc_t<double>, double>);
  static_assert(dtype_of<bf16>::value == DType::bf16 && dtype_of<fp16>::value == DType::f16);
  static_assert(dtype_of<float>::value == DType::f32 && dtype_of<double>::value == DType::f64);
  static_assert(dtype_of<int32_t>::value == DType::i32);
  static_assert(Element<bf16> && Element<double> && !Element<int64_t> && !Element<char>);
  CHECK(dtype_name(DType::f32) == "f32");
  CHECK(dtype_name(DType::f64) == "f64");
  CHECK(dtype_name(DType::bf16) == "bf16");
  CHECK(dtype_name(DType::f16) == "f16");
  CHECK(dtype_name(DType::i32) == "i32");
  CHECK(to_acc(bf16(1.5f)) == 1.5f);
  CHECK(from_acc<bf16>(2.75f).bits == bf16(2.75f).bits);
  CHECK(to_acc(2.5) == 2.5);
  CHECK(bf16().bits == 0);  // value-initialised storage is +0
}
