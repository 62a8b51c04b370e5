// The optimizer step of SmolLM2-135M on the GPU: the global gradient norm (for clipping) and the
// AdamW update over one flat buffer of 135M parameters (fp32 master weights and moments, bf16
// parameter copy and gradient). 2.2 GB of state: far past the 50 MB L2.
//
// AdamW floor: read master, m, v (fp32) and grad (bf16), write master, m, v and the bf16 copy:
// 28 bytes per parameter, 3.78 GB -> 1.27 ms at 2.98 TB/s (docs/PERFORMANCE.md: ~1.3 ms).
#include <benchmark/benchmark.h>

#include <cstdint>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/adamw.cuh>
#include <mil/kernels/global_norm.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using namespace mil;

constexpr int64_t kParams = 135'000'000;

template <class T>
__global__ void adamw_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_gpu(int64_t n, uint64_t seed, float lo, float hi) {
  auto t = Tensor<T, Cuda>::empty(Shape{n});
  adamw_bench_fill_kernel<T><<<1024, 256, 0, cuda::current_stream()>>>(t.data(), n, seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("adamw_bench_fill_kernel");
  return t;
}

void BM_adamw_gpu_bf16(benchmark::State& state) {
  if (cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  {
    auto master = random_gpu<float>(kParams, 1, -1.f, 1.f);
    auto m = random_gpu<float>(kParams, 2, -1e-3f, 1e-3f);
    auto v = random_gpu<float>(kParams, 3, 0.f, 1e-6f);
    auto grad = random_gpu<bf16>(kParams, 4, -1e-2f, 1e-2f);
    auto param = Tensor<bf16, Cuda>::empty(Shape{kParams});
    AdamWStep s;
    s.lr = 1e-3f, s.beta2 = 0.98f, s.weight_decay = 0.01f;
    bench::time_cuda(state, [&](int i) {
      s.step = i + 1;
      cuda::adamw_update<bf16, bf16>(master.data(), m.data(), v.data(), param.data(), grad.data(),
                                     kParams, s, nullptr, cuda::current_stream());
    });
    // ~15 FLOPs per parameter (square root and division counted as one each).
    bench::report(state, 28.0 * double(kParams), 15.0 * double(kParams), bench::h100_fp32);
  }
  cuda::CachingAllocator::instance().release_cached();
}
BENCHMARK(BM_adamw_gpu_bf16)->UseManualTime()->Unit(benchmark::kMillisecond);

// The gradient's sum of squares and the clipping coefficient, both left on the device.
void BM_global_norm_gpu_bf16(benchmark::State& state) {
  if (cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  {
    auto grad = random_gpu<bf16>(kParams, 5, -1e-2f, 1e-2f);
    auto sum = Tensor<float, Cuda>::empty(Shape{1}), coef = Tensor<float, Cuda>::empty(Shape{1});
    cudaStream_t stream = cuda::current_stream();
    bench::time_cuda(state, [&](int) {
      cuda::sum_of_squares<bf16>(sum.data(), grad.data(), kParams, stream);
      cuda::clip_coefficient(coef.data(), sum.data(), 1.f, stream);
    });
    // Read the gradient once; a multiply-add per element.
    bench::report(state, 2.0 * double(kParams), 2.0 * double(kParams), bench::h100_fp32);
  }
  cuda::CachingAllocator::instance().release_cached();
}
BENCHMARK(BM_global_norm_gpu_bf16)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
