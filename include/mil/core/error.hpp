#pragma once
// One exception type whose message says what was wrong and what to do; checked integer arithmetic
// for sizes that come from untrusted input.
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace mil {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[noreturn]] inline void fail(const char* file, int line, Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  os << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

// MIL_CHECK(cond, "message parts", value, ...): throws mil::Error when cond is false.
#define MIL_CHECK(cond, ...) \
  do { if (!(cond)) ::mil::detail::fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define MIL_FAIL(...) ::mil::detail::fail(__FILE__, __LINE__, __VA_ARGS__)

// a * b and a + b for non-negative sizes, throwing instead of wrapping around.
inline int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) MIL_FAIL("size overflow: ", a, " * ", b);
  return r;
}
inline int64_t checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) MIL_FAIL("size overflow: ", a, " + ", b);
  return r;
}

}  // namespace mil
