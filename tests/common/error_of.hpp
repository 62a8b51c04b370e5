#pragma once
// The message of the mil::Error that `f` throws, or "<no error>": tests of refusals compare it
// with the phrase the error must contain.
#include <functional>
#include <string>

#include <mil/core/error.hpp>

namespace mil::test {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mil::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace mil::test
