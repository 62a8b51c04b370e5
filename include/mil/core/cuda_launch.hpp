#pragma once
// Host-side launch helpers shared by the kernels' launchers: the SM count of the current device,
// grid sizes of grid-stride loops, and a scope that makes a stream current. Plain C++ (no nvcc
// needed) in a CUDA build.
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "allocator.hpp"
#include "config.hpp"
#include "cuda_check.hpp"

#if MIL_CUDA_ENABLED
namespace mil::cuda {

// A property of the current device, asked of the driver once per device (cached for the first 64
// devices; the attribute's value must not be 0).
template <cudaDeviceAttr Attr>
int device_attribute() {
  constexpr int kCachedDevices = 64;
  static std::atomic<int> cached[kCachedDevices];  // 0 until asked
  int device = 0;
  MIL_CUDA_CHECK(cudaGetDevice(&device));
  std::atomic<int>* slot = device < kCachedDevices ? &cached[device] : nullptr;
  int n = slot ? slot->load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    MIL_CUDA_CHECK(cudaDeviceGetAttribute(&n, Attr, device));
    if (slot) slot->store(n, std::memory_order_relaxed);
  }
  return n;
}

// Streaming multiprocessors of the current device.
inline int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `threads` for a grid-stride loop over `work` items: one item per thread up to
// max_blocks (the default fills any GPU many times over; the loop covers the rest), at least 1.
inline unsigned grid_stride_blocks(int64_t work, int threads, int64_t max_blocks = 65535 * 8) {
  return unsigned(std::clamp<int64_t>(ceil_div(work, threads), 1, max_blocks));
}

// Whether `kernel` can be given `bytes` of dynamic shared memory per block on this device (after
// its static shared memory). If so, its limit is raised to the device's maximum, not to this
// call's size, so concurrent callers cannot lower it under each other, and shared memory is
// preferred over L1 (rows staged in shared memory: two 96 KB rows per SM).
template <class Kernel>
bool opt_in_shared_memory(Kernel kernel, size_t bytes) {
  int device = 0, optin = 0;
  MIL_CUDA_CHECK(cudaGetDevice(&device));
  MIL_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  MIL_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const size_t limit = size_t(optin) - attr.sharedSizeBytes;
  if (bytes > limit) return false;
  MIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
  MIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      int(cudaSharedmemCarveoutMaxShared)));
  return true;
}

// Makes `stream` current while temporaries are allocated, so the caching allocator reuses their
// blocks only for work ordered after this stream's kernels.
struct StreamScope {
  cudaStream_t saved;
  explicit StreamScope(cudaStream_t s) : saved(current_stream()) { current_stream() = s; }
  ~StreamScope() { current_stream() = saved; }
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;
};

}  // namespace mil::cuda
#endif
