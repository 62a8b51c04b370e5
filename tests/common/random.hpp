#pragma once
// Fresh random test inputs from the project's Philox streams (reproducible, never zeros).
#include <cstdint>
#include <type_traits>
#include <vector>

#include <mil/core/rng.hpp>

namespace mil::test {

template <class T = double>
std::vector<T> random_vector(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = T(rng::uniform(seed, 0, i, lo, hi));
  return v;
}

// Values rounded through bf16, so a bf16 GPU kernel and a float CPU reference see equal inputs.
inline std::vector<float> round_to_bf16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = float(bf16(v[i]));
  return r;
}
// Random values representable in T (rounded through bf16 when T is bf16), as floats: a GPU kernel
// in T and a CPU reference in float or double see the same numbers.
template <class T>
std::vector<float> representable(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  auto v = random_vector<float>(n, seed, lo, hi);
  return std::is_same_v<T, bf16> ? round_to_bf16(v) : v;
}
template <class T, class S>
std::vector<T> cast_vector(const std::vector<S>& v) {
  std::vector<T> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = T(to_acc(v[i]));
  return r;
}

}  // namespace mil::test
