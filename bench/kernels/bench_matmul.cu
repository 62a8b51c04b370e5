// GPU matrix product through cuBLASLt: bf16 (fp32 accumulation) at 8192^3, where cuBLAS ran at
// 793 TFLOP/s on the lent H100 (docs/PERFORMANCE.md), and the Linear shapes of the 135M model at
// 16384 tokens (forward, and the two backward products for the MLP and the LM head); one true-fp32
// case. Each case rotates among enough operand sets that they do not fit in the 50 MB L2.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/matmul.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

template <class T>
__global__ void bench_fill_uniform_kernel(T* p, int64_t n, uint64_t seed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(mil::rng::uniform(seed, 0, uint64_t(i), -1.f, 1.f));
}

template <class T>
mil::Tensor<T, mil::Cuda> random_gpu(int64_t n, uint64_t seed) {
  auto t = mil::Tensor<T, mil::Cuda>::empty(mil::Shape{n});
  bench_fill_uniform_kernel<T><<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), n, seed);
  MIL_CUDA_CHECK_LAUNCH("bench_fill_uniform_kernel");
  return t;
}

template <class T>
void run_matmul(benchmark::State& state, const mil::GemmShape& s,
                const mil::bench::Ceiling& ceiling, double peer_seconds) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t na = s.batch * s.m * s.k, nb = s.batch * s.k * s.n, nc = s.batch * s.m * s.n;
  const double bytes = double(sizeof(T)) * double(na + nb + nc);
  const double flops = 2.0 * double(s.batch) * double(s.m) * double(s.n) * double(s.k);
  const int sets = int(std::clamp(100e6 / bytes + 1, 1.0, 64.0));  // > 2x the L2 in all
  {
    std::vector<mil::Tensor<T, mil::Cuda>> a, b, c;
    for (int j = 0; j < sets; ++j) {
      a.push_back(random_gpu<T>(na, 10 + 3 * j));
      b.push_back(random_gpu<T>(nb, 11 + 3 * j));
      c.push_back(mil::Tensor<T, mil::Cuda>::empty(mil::Shape{nc}));
    }
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      int j = i % sets;
      mil::cuda::matmul<T>(s, c[j].data(), a[j].data(), b[j].data(), stream);
    });
    state.counters["operand_sets"] = sets;
    mil::bench::report(state, bytes, flops, ceiling, peer_seconds);
  }
  mil::cuda::CachingAllocator::instance().release_cached();  // the next case starts clean
}

void matmul_gpu_bf16(benchmark::State& state, mil::GemmShape s, double peer_seconds) {
  run_matmul<mil::bf16>(state, s, mil::bench::h100_bf16, peer_seconds);
}
void matmul_gpu_f32(benchmark::State& state, mil::GemmShape s) {
  run_matmul<float>(state, s, mil::bench::h100_fp32, 0);
}

// Peer: cuBLAS bf16 GEMM at 793 TFLOP/s on 8192^3, measured on the lent H100 80GB HBM3 on
// 2026-11-22 (docs/PERFORMANCE.md): its time for that shape.
constexpr double cublas_8192_seconds = 2.0 * 8192.0 * 8192.0 * 8192.0 / 793e12;
constexpr int64_t tokens = 16384;  // 135M model: d 576, q/k/v 576 -> 960, MLP 1536, vocab 49152

}  // namespace

#define MIL_MATMUL_BENCH(name, ...)                     \
  BENCHMARK_CAPTURE(matmul_gpu_bf16, name, __VA_ARGS__) \
      ->UseManualTime()                                 \
      ->Unit(benchmark::kMicrosecond)

MIL_MATMUL_BENCH(bf16_8192x8192x8192, mil::GemmShape{8192, 8192, 8192}, cublas_8192_seconds);
// Forward: y (tokens, out) = x (tokens, in) W^T, W stored [out, in].
MIL_MATMUL_BENCH(bf16_qkv_576_to_960, mil::GemmShape{tokens, 960, 576, false, true}, 0.0);
MIL_MATMUL_BENCH(bf16_o_proj_576_to_576, mil::GemmShape{tokens, 576, 576, false, true}, 0.0);
MIL_MATMUL_BENCH(bf16_gate_or_up_576_to_1536, mil::GemmShape{tokens, 1536, 576, false, true}, 0.0);
MIL_MATMUL_BENCH(bf16_down_1536_to_576, mil::GemmShape{tokens, 576, 1536, false, true}, 0.0);
MIL_MATMUL_BENCH(bf16_lm_head_576_to_49152, mil::GemmShape{tokens, 49152, 576, false, true}, 0.0);
// Backward: dx (tokens, in) = dy W; dW (out, in) = dy^T x.
MIL_MATMUL_BENCH(bf16_gate_or_up_dx, mil::GemmShape{tokens, 576, 1536}, 0.0);
MIL_MATMUL_BENCH(bf16_gate_or_up_dw, mil::GemmShape{1536, 576, tokens, true, false}, 0.0);
MIL_MATMUL_BENCH(bf16_lm_head_dx, mil::GemmShape{tokens, 576, 49152}, 0.0);
MIL_MATMUL_BENCH(bf16_lm_head_dw, mil::GemmShape{49152, 576, tokens, true, false}, 0.0);

BENCHMARK_CAPTURE(matmul_gpu_f32, f32_4096x4096x4096, mil::GemmShape{4096, 4096, 4096})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
