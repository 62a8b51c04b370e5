#pragma once
// Sets the CPU thread count for a scope and restores it when the scope ends (also on a failed
// REQUIRE), so a test's thread count never leaks into the next case.
#include <mil/core/threads.hpp>

namespace mil::test {

struct ThreadsScope {
  int saved = cpu::threads();
  explicit ThreadsScope(int n) { cpu::set_threads(n); }
  ~ThreadsScope() { cpu::set_threads(saved); }
};

}  // namespace mil::test
