// GPU causal depthwise conv1d (kernel 4, SiLU), bf16: forward and backward over 16 x 1024 tokens of
// 960 channels (Mamba-2's [x | B | C] of the SmolLM2-135M hybrid: 576 + 192 + 192), read as
// mamba2_core does (a column block of the in_proj row of 1545 elements: odd, so one-element packs)
// and packed (16-byte packs); and the decode step (seq = 1 through the ring) at batch 1 and 64.
// No peer number (the reference runs PyTorch's depthwise conv). Memory bound: the floor is the
// compulsory bytes at the measured copy bandwidth. Forward reads x, writes y; backward reads dy and
// x, writes dx (dw and dbias are small; their fp32 partial sums are not compulsory); a decode step
// reads x and the K - 1 ring rows, writes y and one ring row.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/conv1d.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using mil::bf16;
using mil::Cuda;
using mil::Tensor;

template <class T>
__global__ void conv1d_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(mil::rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_gpu(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  auto t = Tensor<T, Cuda>::empty(mil::Shape{std::max<int64_t>(n, 1)});
  conv1d_bench_fill_kernel<T>
      <<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), n, seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("conv1d_bench_fill_kernel");
  return t;
}

constexpr int64_t kChannels = 960, kKernel = 4;
constexpr int64_t kProjWidth = 1545;  // SmolLM2 hybrid in_proj rows: 2 * 576 + 2 * 192 + 9 heads
constexpr int64_t kXOffset = 576;     // [x | B | C] after z

int sets_for(double bytes_per_set) { return int(std::clamp(100e6 / bytes_per_set + 1, 1.0, 16.0)); }

// fused: x is the [x | B | C] block of the in_proj row (stride 1545); else packed.
void BM_conv1d_cuda(benchmark::State& state, int64_t batch, int64_t seq, bool fused,
                    bool backward) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t rows = batch * seq, C = kChannels;
  const int64_t x_width = fused ? kProjWidth : C;
  mil::Conv1dShape s{batch, seq, C, kKernel, fused ? kProjWidth : 0, 0, true};
  const double act = double(rows * C) * 2;
  const double bytes = backward ? 3 * act : 2 * act;
  const double flops = double(rows * C) * (backward ? 4 * kKernel + 12 : 2 * kKernel + 5);
  const int sets = sets_for(double(rows * x_width) * 2 * (backward ? 3 : 1) + act);
  {
    std::vector<Tensor<bf16, Cuda>> x, y, dy, dx;
    for (int j = 0; j < sets; ++j) {
      x.push_back(random_gpu<bf16>(rows * x_width, 10 + j, -2.f, 2.f));
      y.push_back(Tensor<bf16, Cuda>::empty(mil::Shape{rows * C}));
      if (backward) {
        dy.push_back(random_gpu<bf16>(rows * C, 100 + j));
        dx.push_back(Tensor<bf16, Cuda>::empty(mil::Shape{rows * x_width}));
      }
    }
    auto w = random_gpu<bf16>(C * kKernel, 1, -0.5f, 0.5f);
    auto bias = random_gpu<bf16>(C, 2, -0.5f, 0.5f);
    auto dw = Tensor<bf16, Cuda>::empty(mil::Shape{C * kKernel});
    auto dbias = Tensor<bf16, Cuda>::empty(mil::Shape{C});
    const int64_t off = fused ? kXOffset : 0;
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      const size_t j = size_t(i % sets);
      if (backward)
        mil::cuda::conv1d_backward<bf16>(dx[j].data() + off, dw.data(), dbias.data(), dy[j].data(),
                                         x[j].data() + off, w.data(), bias.data(), s, false, false,
                                         stream);
      else
        mil::cuda::conv1d_forward<bf16>(y[j].data(), x[j].data() + off, w.data(), bias.data(), s,
                                        stream);
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, flops, mil::bench::h100_fp32);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

// One decode step of `batch` sequences (x in the in_proj rows) through a ring of K - 1 rows.
void BM_conv1d_decode_cuda(benchmark::State& state, int64_t batch) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t C = kChannels, len = kKernel - 1;
  mil::Conv1dShape s{batch, 1, C, kKernel, kProjWidth, 0, true};
  const double bytes = double(batch * C) * 2 * (1 + (kKernel - 1) + 1 + 1);
  const double flops = double(batch * C) * (2 * kKernel + 5);
  {
    auto proj = random_gpu<bf16>(batch * kProjWidth, 1, -2.f, 2.f);
    auto y = Tensor<bf16, Cuda>::empty(mil::Shape{batch * C});
    auto w = random_gpu<bf16>(C * kKernel, 2, -0.5f, 0.5f);
    auto bias = random_gpu<bf16>(C, 3, -0.5f, 0.5f);
    auto ring = random_gpu<bf16>(batch * len * C, 4, -2.f, 2.f);
    std::vector<int32_t> ids(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) ids[size_t(b)] = int32_t(b);
    auto slots = Tensor<int32_t, Cuda>::from(mil::Shape{batch}, ids);
    std::vector<Tensor<int32_t, Cuda>> positions;  // positions advance from step to step
    for (int32_t k = 0; k < 8; ++k) {
      std::vector<int32_t> pos(static_cast<size_t>(batch), 100 + k);
      positions.push_back(Tensor<int32_t, Cuda>::from(mil::Shape{batch}, pos));
    }
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      mil::cuda::conv1d_forward<bf16>(
          y.data(), proj.data() + kXOffset, w.data(), bias.data(), s,
          mil::Conv1dRing<bf16>{ring.data(), len, batch, slots.data(), positions[size_t(i % 8)].data()},
          stream);
    });
    mil::bench::report(state, bytes, flops, mil::bench::h100_fp32);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

}  // namespace

BENCHMARK_CAPTURE(BM_conv1d_cuda, S_fwd_fused, 16, 1024, true, false)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_conv1d_cuda, S_fwd_packed, 16, 1024, false, false)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_conv1d_cuda, S_bwd_fused, 16, 1024, true, true)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_conv1d_cuda, S_bwd_packed, 16, 1024, false, true)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_conv1d_decode_cuda, batch1, 1)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_conv1d_decode_cuda, batch64, 64)->UseManualTime()->Unit(benchmark::kMicrosecond);
