// Row top-k + log-sum-exp on the GPU (kernels/topk.cuh) at the labeller's shape: one decode step
// of 512 slots over SmolLM2's 49152-token vocabulary in bf16, k = 10 (the labels' sampler) and
// k = 64 (the widest).
//
// Floor: read the logits once, 512 * 49152 * 2 bytes = 50 MB -> 17 us at 2.98 TB/s. The kernel
// reads each row k + 2 times (k rounds, max, sum); after the first, from L2 where the rows fit.
// What it replaces: copying the rows to the host as floats (100 MB, ~4 ms over PCIe at ~25 GB/s)
// and a host pass over each. A peer (torch.topk on the same tensor) is not measured yet.
#include <benchmark/benchmark.h>

#include <cstdint>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/topk.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using namespace mil;

__global__ void topk_bench_fill_kernel(bf16* p, int64_t n, uint64_t seed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = bf16(rng::uniform(seed, 0, uint64_t(i), -8.f, 8.f));
}

constexpr int64_t kRows = 512, kVocab = 49152;

void BM_topk_gpu_bf16(benchmark::State& state) {
  if (cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int32_t k = int32_t(state.range(0));
  {
    auto logits = Tensor<bf16, Cuda>::empty(Shape{kRows, kVocab});
    cudaStream_t stream = cuda::current_stream();
    topk_bench_fill_kernel<<<1024, 256, 0, stream>>>(logits.data(), logits.numel(), 1);
    MIL_CUDA_CHECK_LAUNCH("topk_bench_fill_kernel");
    auto ids = Tensor<int32_t, Cuda>::empty(Shape{kRows, k});
    auto values = Tensor<float, Cuda>::empty(Shape{kRows, k});
    auto lse = Tensor<float, Cuda>::empty(Shape{kRows});
    bench::time_cuda(state, [&](int) {
      cuda::topk_rows<bf16>(ids.data(), values.data(), lse.data(), logits.data(), kRows, kVocab,
                            kVocab, k, stream);
    });
    // Compulsory: one read of the logits; ~(k + 3) comparisons or exp per logit.
    const double elements = double(kRows) * double(kVocab);
    bench::report(state, sizeof(bf16) * elements, double(k + 3) * elements, bench::h100_bf16);
  }
  cuda::CachingAllocator::instance().release_cached();
}
BENCHMARK(BM_topk_gpu_bf16)->Arg(10)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
