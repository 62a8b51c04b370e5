#pragma once
// GPU timing for Google Benchmark: each iteration is timed with CUDA events around the launch
// (manual time), after warm-up. Register such benchmarks with ->UseManualTime().
#include <benchmark/benchmark.h>

#include <mil/core/allocator.hpp>
#include <mil/core/cuda_check.hpp>

namespace mil::bench {

template <class Launch>
void time_cuda(benchmark::State& state, Launch&& launch, int warmup = 3) {
  cudaStream_t stream = cuda::current_stream();
  for (int i = 0; i < warmup; ++i) launch(i);
  MIL_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  MIL_CUDA_CHECK(cudaEventCreate(&start));
  MIL_CUDA_CHECK(cudaEventCreate(&stop));
  int i = 0;
  for (auto _ : state) {
    MIL_CUDA_CHECK(cudaEventRecord(start, stream));
    launch(i++);
    MIL_CUDA_CHECK(cudaEventRecord(stop, stream));
    MIL_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
  }
  MIL_CUDA_CHECK(cudaEventDestroy(start));
  MIL_CUDA_CHECK(cudaEventDestroy(stop));
}

// time_cuda for a whole training step, which also reports as step_MiB the GPU memory a step
// takes beyond what exists before it: the caching allocator's growth in reserved bytes over one
// step from an emptied cache (an upper bound of the peak in use).
template <class Step>
void time_cuda_step(benchmark::State& state, Step&& step) {
  auto& allocator = cuda::CachingAllocator::instance();
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  allocator.release_cached();
  const size_t before = allocator.stats().bytes_reserved;
  step();
  MIL_CUDA_CHECK(cudaDeviceSynchronize());
  const double step_bytes = double(allocator.stats().bytes_reserved - before);
  state.counters["step_MiB"] = step_bytes / double(1 << 20);
  time_cuda(state, [&](int) { step(); });
}

}  // namespace mil::bench
