#pragma once
// The GPU-required mode of the GPU tests. Without a device a GPU test case reports "skipped", which
// is right on a CPU-only machine and wrong on a machine that is meant to measure: there a missing
// driver or an unreachable card would read as a clean run. MIL_REQUIRE_GPU=1 in the environment
// (scripts/gpu_run.sh sets it) turns every such skip into a failure.
#include <cstdlib>
#include <cstring>
#include <string>

#include <mil/core/cuda_check.hpp>

namespace mil::test {

// On for any value of MIL_REQUIRE_GPU but "" and "0", so that a typo does not switch it off.
inline bool gpu_required() {
  const char* v = std::getenv("MIL_REQUIRE_GPU");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// Why the GPU tests cannot run here, or "" when device 0 is usable: no CUDA in the build, the
// runtime's error for the device count, no device, or the error creating the device's context.
inline std::string why_no_gpu() {
#if MIL_CUDA_ENABLED
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaSuccess && n == 0) return "cudaGetDeviceCount: 0 devices";
  if (err == cudaSuccess) err = cudaFree(nullptr);  // creates the context: a busy card fails here
  if (err == cudaSuccess) return "";
  (void)cudaGetLastError();
  return std::string("CUDA runtime: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
         ")";
#else
  return "mil was built without CUDA";
#endif
}

// The message of a GPU test, or of the test program, that cannot run in the GPU-required mode. It
// must not match "[mil] no CUDA device", which ctest reads as "skipped" (tests/CMakeLists.txt).
inline std::string gpu_required_failure() {
  return "[mil] MIL_REQUIRE_GPU=1, no usable GPU: " + why_no_gpu();
}

}  // namespace mil::test
