#pragma once
// Comparisons used by every kernel test: normalised error ||out - ref|| / ||ref|| in double,
// NaN never passes, an all-zero output never passes, and a failure prints the worst elements.
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

// Checks out against ref with a normalised-error tolerance; prints the worst elements on failure.
template <class A, class B>
void require_close(const std::string& what, const std::vector<A>& out_v, const std::vector<B>& ref_v,
                   double tol) {
  auto out = as_double(out_v);
  auto ref = as_double(ref_v);
  double err = normalised_error(out, ref);
  bool any_nonzero = std::any_of(ref.begin(), ref.end(), [](double x) { return x != 0; });
  bool out_nonzero = std::any_of(out.begin(), out.end(), [](double x) { return x != 0; });
  if (!(err <= tol) || (any_nonzero && !out_nonzero)) {
    std::vector<size_t> idx(out.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    size_t k = std::min<size_t>(8, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](size_t a, size_t b) {
      double ea = std::isfinite(out[a]) ? std::fabs(out[a] - ref[a]) : INFINITY;
      double eb = std::isfinite(out[b]) ? std::fabs(out[b] - ref[b]) : INFINITY;
      return ea > eb;
    });
    std::printf("%s: normalised error %.3g (tol %.3g), worst elements:\n", what.c_str(), err, tol);
    for (size_t j = 0; j < k; ++j)
      std::printf("  [%zu] out %.8g ref %.8g\n", idx[j], out[idx[j]], ref[idx[j]]);
  }
  INFO(what, ": normalised error ", err, " tolerance ", tol);
  CHECK(err <= tol);
  if (any_nonzero) CHECK_MESSAGE(out_nonzero, what, ": output is all zero");
}

// A value no kernel computes by accident: written into outputs before a kernel runs so that
// elements it fails to write show up as errors.
template <class T> T poison() { return T(-7.77e3f); }

// Normalised-error tolerance of a GPU result stored in T against the CPU reference on the same
// (T-rounded) inputs: bf16 1e-2, fp32 1e-5.
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
