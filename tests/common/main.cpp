// The doctest main of the CPU test program (the GPU one has its own: gpu_main.cpp). Started with
// MIL_TEST_CHILD=<name>, it runs that registered child function instead (common/child_process.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "child_process.hpp"

int main(int argc, char** argv) {
  if (const char* child = std::getenv("MIL_TEST_CHILD")) {
    const auto& registry = mil::test::child_registry();
    const auto it = registry.find(child);
    if (it == registry.end()) {
      std::fprintf(stderr, "no test child named '%s'\n", child);
      return 2;
    }
    try {
      return it->second();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "test child '%s': %s\n", child, e.what());
      return 3;
    }
  }
  doctest::Context context(argc, argv);
  return context.run();
}
