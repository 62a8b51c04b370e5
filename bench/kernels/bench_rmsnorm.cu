// GPU RMSNorm, bf16: forward and backward over 16384 rows at the hidden sizes of the 135M model
// (576) and of Llama-3-8B (4096). Memory bound: the floor is the compulsory bytes at the
// measured copy bandwidth. Forward reads x and w and writes out and rstd; backward reads dout, x,
// w and rstd and writes dx and dw (the fp32 partial sums of dw are not compulsory and show up as
// time above the floor). Each case rotates among enough buffer sets to exceed the 50 MB L2.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/rmsnorm.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using mil::bf16;
using mil::Cuda;
using mil::Tensor;

template <class T>
__global__ void rmsnorm_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(mil::rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_gpu(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  auto t = Tensor<T, Cuda>::empty(mil::Shape{n});
  rmsnorm_bench_fill_kernel<T>
      <<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), n, seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("rmsnorm_bench_fill_kernel");
  return t;
}

constexpr int64_t kRows = 16384;
constexpr float kEps = 1e-5f;

int sets_for(double bytes_per_set) { return int(std::clamp(100e6 / bytes_per_set + 1, 1.0, 64.0)); }

void rmsnorm_forward_gpu_bf16(benchmark::State& state, int64_t dim) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t n = kRows * dim;
  const double bytes =
      2.0 * double(n) * sizeof(bf16) + double(dim) * sizeof(bf16) + double(kRows) * sizeof(float);
  const double flops = 4.0 * double(n);  // x*x+, then x*rstd*w
  const int sets = sets_for(bytes);
  {
    auto w = random_gpu<bf16>(dim, 1, 0.5f, 1.5f);
    std::vector<Tensor<bf16, Cuda>> x, out;
    std::vector<Tensor<float, Cuda>> rstd;
    for (int j = 0; j < sets; ++j) {
      x.push_back(random_gpu<bf16>(n, 10 + j, -2.f, 2.f));
      out.push_back(Tensor<bf16, Cuda>::empty(mil::Shape{n}));
      rstd.push_back(Tensor<float, Cuda>::empty(mil::Shape{kRows}));
    }
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      const int j = i % sets;
      mil::cuda::rmsnorm_forward(out[j].data(), rstd[j].data(), x[j].data(), w.data(), kRows, dim,
                                 kEps, stream);
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, flops, mil::bench::h100_bf16);
  }
  mil::cuda::CachingAllocator::instance().release_cached();  // the next case starts clean
}

void rmsnorm_backward_gpu_bf16(benchmark::State& state, int64_t dim) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t n = kRows * dim;
  const double bytes = 3.0 * double(n) * sizeof(bf16) + 2.0 * double(dim) * sizeof(bf16) +
                       double(kRows) * sizeof(float);
  const double flops = 10.0 * double(n);  // dot(g*w, x), dx = r*(g*w - x*c), dw += g*x*r
  const int sets = sets_for(bytes);
  {
    auto w = random_gpu<bf16>(dim, 2, 0.5f, 1.5f);
    auto dw = Tensor<bf16, Cuda>::empty(mil::Shape{dim});
    std::vector<Tensor<bf16, Cuda>> x, dout, dx;
    std::vector<Tensor<float, Cuda>> rstd;
    cudaStream_t stream = mil::cuda::current_stream();
    for (int j = 0; j < sets; ++j) {
      x.push_back(random_gpu<bf16>(n, 100 + 2 * j, -2.f, 2.f));
      dout.push_back(random_gpu<bf16>(n, 101 + 2 * j));
      dx.push_back(Tensor<bf16, Cuda>::empty(mil::Shape{n}));
      rstd.push_back(Tensor<float, Cuda>::empty(mil::Shape{kRows}));
      auto out = Tensor<bf16, Cuda>::empty(mil::Shape{n});
      mil::cuda::rmsnorm_forward(out.data(), rstd[j].data(), x[j].data(), w.data(), kRows, dim,
                                 kEps, stream);
    }
    mil::bench::time_cuda(state, [&](int i) {
      const int j = i % sets;
      mil::cuda::rmsnorm_backward(dx[j].data(), dw.data(), dout[j].data(), x[j].data(), w.data(),
                                  rstd[j].data(), kRows, dim, false, false, stream);
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, flops, mil::bench::h100_bf16);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

}  // namespace

BENCHMARK_CAPTURE(rmsnorm_forward_gpu_bf16, rows16384_dim576, 576)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(rmsnorm_forward_gpu_bf16, rows16384_dim4096, 4096)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(rmsnorm_backward_gpu_bf16, rows16384_dim576, 576)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(rmsnorm_backward_gpu_bf16, rows16384_dim4096, 4096)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
