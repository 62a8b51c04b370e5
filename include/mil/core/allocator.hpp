#pragma once
// Memory for tensors. CPU: 64-byte aligned heap blocks. CUDA: a stream-ordered caching allocator
// that keeps freed blocks per stream and hands them back to the same stream, so steady-state
// training and decoding make no cudaMalloc and no synchronisation.
#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <utility>

#include "cuda_check.hpp"
#include "device.hpp"
#include "error.hpp"

namespace mil {

inline void* cpu_allocate(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) MIL_FAIL("out of host memory allocating ", bytes, " bytes");
  return p;
}
inline void cpu_deallocate(void* p) { std::free(p); }

#if MIL_CUDA_ENABLED
namespace cuda {

// The stream new CUDA work of this thread goes to (the legacy default stream unless set).
inline cudaStream_t& current_stream() {
  thread_local cudaStream_t stream = nullptr;
  return stream;
}

struct AllocatorStats {
  size_t cuda_malloc_calls = 0;  // calls that reached cudaMalloc
  size_t bytes_reserved = 0;     // held from the driver (in use + cached)
  size_t bytes_in_use = 0;
};

class CachingAllocator {
 public:
  static CachingAllocator& instance() {
    static CachingAllocator a;  // never destroyed before its tensors: function-local static
    return a;
  }

  void* allocate(size_t bytes, cudaStream_t stream) {
    size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    // Best fit among cached blocks of this stream, at most twice the request (bounded waste).
    auto it = free_.lower_bound({stream, size});
    if (it != free_.end() && it->first.first == stream && it->first.second <= 2 * size) {
      void* p = it->second;
      size_t got = it->first.second;
      free_.erase(it);
      live_[p] = {stream, got};
      stats_.bytes_in_use += got;
      return p;
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {  // give cached blocks back and try once more
      (void)cudaGetLastError();
      release_cached_locked();
      err = cudaMalloc(&p, size);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      MIL_FAIL("out of GPU memory allocating ", bytes, " bytes (", stats_.bytes_in_use,
               " bytes in use): use a smaller batch or sequence length");
    }
    ++stats_.cuda_malloc_calls;
    stats_.bytes_reserved += size;
    stats_.bytes_in_use += size;
    live_[p] = {stream, size};
    return p;
  }

  void deallocate(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours: nothing sensible to do in a destructor
    stats_.bytes_in_use -= it->second.second;
    free_.emplace(it->second, p);
    live_.erase(it);
  }

  // Returns all cached (unused) blocks to the driver; waits for the device first.
  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

  AllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  using Key = std::pair<cudaStream_t, size_t>;
  static size_t round_size(size_t bytes) {
    if (bytes <= (1u << 20)) return ((bytes ? bytes : 1) + 511) / 512 * 512;  // 512 B granules
    return (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);               // 2 MiB granules
  }
  void release_cached_locked() {
    (void)cudaDeviceSynchronize();
    for (auto& [key, p] : free_) {
      (void)cudaFree(p);
      stats_.bytes_reserved -= key.second;
    }
    free_.clear();
  }

  mutable std::mutex mutex_;
  std::multimap<Key, void*> free_;
  std::map<void*, Key> live_;
  AllocatorStats stats_;
};

}  // namespace cuda
#endif

}  // namespace mil
