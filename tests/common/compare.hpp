#pragma once
// Comparisons used by every kernel test. Two bounds, both required:
//   normalised error  ||out - ref|| / ||ref||                     (the error as a whole)
//   element error     max_i |out_i - ref_i| / max(|ref_i|, rms(ref))  (every single element)
// The first alone lets one wrong element in a million through (its share of the norm is tiny);
// the second catches it, measured against the element itself or, for elements far below the
// typical size (where cancellation makes a relative error meaningless), against the rms.
// Computed in double; NaN never passes, an all-zero output never passes, and a failure prints the
// worst elements.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <mil/core/dtype.hpp>

namespace mil::test {

template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = double(to_acc(v[i]));
  return r;
}
inline std::vector<double> as_double(const std::vector<double>& v) { return v; }

// ||out - ref|| / ||ref||; infinity when any element of out is not finite.
inline double normalised_error(const std::vector<double>& out, const std::vector<double>& ref) {
  REQUIRE(out.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// The two bounds a comparison must meet (see the top of this file).
struct Bound {
  double normalised;
  double element;
};

// Unit roundoff of T: half the distance from 1 to the next value.
template <class T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, bf16>) return 0x1p-8;
  else if constexpr (std::is_same_v<T, fp16>) return 0x1p-11;
  else if constexpr (std::is_same_v<T, float>) return 0x1p-24;
  else return 0x1p-53;
}

// The element bound that goes with a normalised tolerance when the caller names none: 8x the
// normalised one (a correct kernel's error is spread over the elements, so its largest element
// error stays within a small multiple of the rms error; 8 covers the tail of a million roughly
// normal errors, about 5 standard deviations), and never below 4 unit roundoffs of the coarser
// of the two element types (two ulps: the rounding of each side, which no tolerance can beat).
template <class A, class B>
constexpr Bound default_bound(double normalised) {
  return {normalised, std::max(8 * normalised, 4 * std::max(unit_roundoff<A>(), unit_roundoff<B>()))};
}

// The measured errors of one comparison: the verdict the CHECKs use and the helper's own test reads.
struct Closeness {
  double normalised = 0;  // ||out - ref|| / ||ref||
  double element = 0;     // max_i |out_i - ref_i| / max(|ref_i|, rms(ref)); infinite for a NaN
  size_t worst = 0;       // the index of that element
  bool zero_output = false;  // ref has a nonzero element and out has none
  bool within(const Bound& b) const {
    return normalised <= b.normalised && element <= b.element && !zero_output;
  }
};

// The rms of ref, the floor of the element errors' scale (1 for an all-zero ref).
inline double rms_scale(const std::vector<double>& ref) {
  double sum_sq = 0;
  for (double r : ref) sum_sq += r * r;
  return sum_sq > 0 ? std::sqrt(sum_sq / double(ref.size())) : 1.0;
}

// Element i's error relative to max(|ref_i|, rms); infinite when out_i is not finite.
inline double element_error(double out, double ref, double rms) {
  return std::isfinite(out) ? std::fabs(out - ref) / std::max(std::fabs(ref), rms) : INFINITY;
}

inline Closeness closeness(const std::vector<double>& out, const std::vector<double>& ref) {
  Closeness c;
  c.normalised = normalised_error(out, ref);
  const double rms = rms_scale(ref);
  for (size_t i = 0; i < out.size(); ++i) {
    const double e = element_error(out[i], ref[i], rms);
    if (!(e <= c.element)) c.element = e, c.worst = i;  // a NaN error counts as the worst
  }
  const auto nonzero = [](double x) { return x != 0; };
  c.zero_output = std::any_of(ref.begin(), ref.end(), nonzero) &&
                  std::none_of(out.begin(), out.end(), nonzero);
  return c;
}

// Checks out against ref within both bounds; prints the worst elements on failure.
template <class A, class B>
void require_close(const std::string& what, const std::vector<A>& out_v, const std::vector<B>& ref_v,
                   Bound bound) {
  const auto out = as_double(out_v);
  const auto ref = as_double(ref_v);
  const Closeness c = closeness(out, ref);
  if (!c.within(bound)) {
    const double rms = rms_scale(ref);
    std::vector<size_t> idx(out.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    const size_t k = std::min<size_t>(8, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](size_t a, size_t b) {
      return element_error(out[a], ref[a], rms) > element_error(out[b], ref[b], rms);
    });
    std::printf("%s: normalised error %.3g (bound %.3g), element error %.3g at [%zu] (bound %.3g), "
                "worst elements:\n", what.c_str(), c.normalised, bound.normalised, c.element,
                c.worst, bound.element);
    for (size_t j = 0; j < k; ++j)
      std::printf("  [%zu] out %.8g ref %.8g\n", idx[j], out[idx[j]], ref[idx[j]]);
  }
  INFO(what, ": normalised error ", c.normalised, " bound ", bound.normalised, ", element error ",
       c.element, " at [", c.worst, "] bound ", bound.element,
       c.zero_output ? std::string(", output all zero") : std::string());
  CHECK(c.within(bound));
}

// With a normalised tolerance only: the element bound is default_bound's.
template <class A, class B>
void require_close(const std::string& what, const std::vector<A>& out, const std::vector<B>& ref,
                   double tol) {
  require_close(what, out, ref, default_bound<A, B>(tol));
}

// A value no kernel computes by accident: written into outputs before a kernel runs so that
// elements it fails to write show up as errors.
template <class T> T poison() { return T(-7.77e3f); }

// Normalised-error tolerance of a GPU result stored in T against the CPU reference on the same
// (T-rounded) inputs: bf16 1e-2, fp32 1e-5. Through default_bound, each element is then within
// 8e-2 (bf16: about 10 ulps of bf16, so a different rounding of intermediate bf16 values passes
// and a wrong element does not) or 8e-5 (fp32: room for a different summation order over long
// reductions and scans) of max(|ref_i|, rms(ref)).
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, bf16> ? 1e-2 : 1e-5;
}

// The bytes of v from element `from` on, for bitwise comparisons (NaNs and -0 included).
template <class T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v, size_t from = 0) {
  std::vector<uint8_t> r((v.size() - from) * sizeof(T));
  std::memcpy(r.data(), v.data() + from, r.size());
  return r;
}

// Short element type names for messages.
template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

}  // namespace mil::test
