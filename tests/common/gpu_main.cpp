// The doctest main of the GPU test program. In the GPU-required mode (MIL_REQUIRE_GPU=1) it
// refuses to run without a usable device: it prints why and exits with 2 before any case runs, so
// that a run on a machine without a working GPU cannot look like a result, not even one whose
// filter selects no case.
// Help, version and listing need no device (ctest lists the cases right after the build).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "gpu_required.hpp"

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  if (!context.shouldExit() && mil::test::gpu_required()) {
    if (!mil::test::why_no_gpu().empty()) {
      std::fprintf(stderr, "%s: the GPU tests cannot run here\n",
                   mil::test::gpu_required_failure().c_str());
      return 2;
    }
  }
  return context.run();
}
