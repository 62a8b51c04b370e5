// Softmax cross-entropy forward + backward on the GPU, SmolLM2 shape: 8192 tokens x 49152 bf16
// logits, gradient written in place over the logits.
//
// Floor: read the logits and write the gradient, 2 * 2 * 8192 * 49152 bytes = 1.61 GB -> 0.54 ms
// at 2.98 TB/s (805 MB of logits: far past the 50 MB L2, so one buffer suffices). For reference
// only (a different loss, so no peer counter): KL fwd+bwd over the same shape takes 17.6 ms in
// PyTorch eager and 14.0 ms with Liger-Kernel, bf16, on the lent H100 80GB HBM3 on 2026-11-22
// (docs/PERFORMANCE.md).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/cross_entropy.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using namespace mil;

template <class T>
__global__ void cross_entropy_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo,
                                                float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_logits(int64_t rows, int64_t vocab, uint64_t seed) {
  auto t = Tensor<T, Cuda>::empty(Shape{rows, vocab});
  cross_entropy_bench_fill_kernel<T>
      <<<1024, 256, 0, cuda::current_stream()>>>(t.data(), t.numel(), seed, -8.f, 8.f);
  MIL_CUDA_CHECK_LAUNCH("cross_entropy_bench_fill_kernel");
  return t;
}

Tensor<int32_t, Cuda> spread_targets(int64_t rows, int64_t vocab) {
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = int32_t(r * 7919 % vocab);
  return Tensor<int32_t, Cuda>::from(Shape{rows}, targets);
}

constexpr int64_t kRows = 8192, kVocab = 49152;

// backward = true: the training case, loss and gradient in place (the logits buffer becomes the
// gradient; later iterations see earlier gradients as logits, which costs the same).
// backward = false: evaluation, the loss only.
void cross_entropy_gpu_bf16(benchmark::State& state, bool backward) {
  if (cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  {
    auto logits = random_logits<bf16>(kRows, kVocab, 1);
    auto targets = spread_targets(kRows, kVocab);
    auto losses = Tensor<float, Cuda>::empty(Shape{kRows});
    cudaStream_t stream = cuda::current_stream();
    bench::time_cuda(state, [&](int) {
      cuda::cross_entropy_forward_backward<bf16>(losses.data(), backward ? logits.data() : nullptr,
                                                 logits.data(), targets.data(), kRows, kVocab,
                                                 1.f / float(kRows), -100, stream);
    });
    // Bytes: read the logits (and write the gradient). ~5 FLOPs per logit and pass (subtract,
    // scale, exp counted as one, add or multiply).
    const double elements = double(kRows) * double(kVocab);
    const double passes = backward ? 2.0 : 1.0;
    bench::report(state, passes * sizeof(bf16) * elements, passes * 5.0 * elements,
                  bench::h100_bf16);
  }
  cuda::CachingAllocator::instance().release_cached();  // the next case starts clean
}

void BM_cross_entropy_gpu_bf16_fwd_bwd_in_place(benchmark::State& state) {
  cross_entropy_gpu_bf16(state, true);
}
void BM_cross_entropy_gpu_bf16_forward_only(benchmark::State& state) {
  cross_entropy_gpu_bf16(state, false);
}
BENCHMARK(BM_cross_entropy_gpu_bf16_fwd_bwd_in_place)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cross_entropy_gpu_bf16_forward_only)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
