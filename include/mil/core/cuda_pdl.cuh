#pragma once
// Programmatic dependent launch (Hopper, sm_90): a kernel launched with launch_dependent() may
// start while the kernel before it on the stream is still finishing, so its launch latency and its
// independent prologue (loading weights, which no kernel of a decode step writes) overlap the
// other's tail. Such a kernel must call grid_dependency_wait() in every block before it reads
// anything an earlier kernel wrote, and before any block exits: the wait returns once the earlier
// grid has completed and its memory is visible. CUDA graphs capture these launches as
// programmatic edges. On older GPUs, or with MIL_PDL=0 in the environment, launch_dependent() is
// an ordinary launch and the wait is a no-op.
#include "config.hpp"
#if !MIL_CUDA_ENABLED
#error "mil/core/cuda_pdl.cuh needs a CUDA build: compile with nvcc and -DMIL_CUDA_ENABLED=1"
#endif

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "cuda_check.hpp"
#include "cuda_launch.hpp"

namespace mil::cuda {

__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next kernel on the stream be scheduled now (it still waits for this grid's completion
// in its own grid_dependency_wait()).
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether launches on the current device may overlap their predecessor: compute capability 9.0 or
// later, and MIL_PDL not set to 0 (asked once per process; for A/B measurements).
inline bool dependent_launch_enabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("MIL_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return env_on && device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 9;
}

// Whether `kernel` was compiled for sm_90 or later (its griddepcontrol.wait is real, not a PTX
// build for an older architecture run on a newer GPU), asked once per kernel.
inline bool waits_for_dependencies(const void* kernel) {
  static std::mutex mutex;
  static std::unordered_map<const void*, bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(kernel);
  if (it != known.end()) return it->second;
  cudaFuncAttributes attr{};
  MIL_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  return known[kernel] = attr.binaryVersion >= 90 && attr.ptxVersion >= 90;
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch where enabled.
template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  if (dependent_launch_enabled() && waits_for_dependencies(reinterpret_cast<const void*>(kernel))) {
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  MIL_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace mil::cuda
