// The fused decode products (kernels/fused_rows.cuh) at SmolLM2-135M's shapes, bf16, against the
// unfused kernels they replace, as a decode step runs them: one launch (or unfused chain) per
// layer, each layer on its own weights, 30 layers captured in a CUDA graph and replayed; the time
// is per layer. Ops: 0 = norm + qkv + RoPE + KV-cache append (576 -> 960), 1 = norm + gate/up +
// SwiGLU (576 -> 2 x 1536), 2 = norm + LM head (576 -> 49152, one launch per replay). Rows: 1
// (decode) and 5 (verification of K + 1 = 5 tokens). Floor: the layer's weights read once from
// HBM. Decode is latency bound: the gap to the floor is launch and dependency latency, which the
// fusion (fewer launches) and the dependent launches (weights read before the wait) attack; run
// with MIL_PDL=0 to see the dependent launches' share.
#include <benchmark/benchmark.h>

#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/fused_rows.cuh>
#include <mil/kernels/kv_attention.cuh>
#include <mil/kernels/matmul.cuh>
#include <mil/kernels/rmsnorm.cuh>
#include <mil/kernels/swiglu.cuh>

#include "common/bench.hpp"

namespace {

using mil::bf16;
using mil::Cuda;
using mil::Tensor;

__global__ void fused_bench_fill_kernel(bf16* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = bf16(mil::rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

Tensor<bf16, Cuda> random_gpu(int64_t n, uint64_t seed, float lo = -0.1f, float hi = 0.1f) {
  auto t = Tensor<bf16, Cuda>::empty(mil::Shape{n});
  fused_bench_fill_kernel<<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), n, seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("fused_bench_fill_kernel");
  return t;
}

constexpr int64_t kD = 576, kFF = 1536, kVocab = 49152, kLayers = 30;
constexpr int64_t kHeads = 9, kKvHeads = 3, kHeadDim = 64, kMaxSeq = 256;

// The case on `stream`; its buffers are freed before the stream goes.
void run_fused_rows(benchmark::State& state, cudaStream_t stream) {
  const int64_t op = state.range(0), rows = state.range(1);
  const bool fused = state.range(2) != 0;
  const char* names[] = {"qkv+rope+cache", "gate/up+swiglu", "lm head"};
  state.SetLabel(std::string(names[op]) + (fused ? ", fused" : ", unfused"));
  const int64_t width = (kHeads + 2 * kKvHeads) * kHeadDim;
  const int64_t outputs = op == 0 ? width : op == 1 ? 2 * kFF : kVocab;
  const int64_t layers = op == 2 ? 1 : kLayers;
  mil::cuda::StreamScope scope(stream);
  auto x = random_gpu(rows * kD, 1, -2.f, 2.f), g = random_gpu(kD, 2, 0.5f, 1.5f);
  auto w = random_gpu(layers * outputs * kD, 3);
  auto h = random_gpu(rows * kD, 4), y = random_gpu(rows * outputs, 5), m = random_gpu(rows * kFF, 6);
  const int64_t kvw = kKvHeads * kHeadDim;
  auto k_cache = random_gpu(kMaxSeq * kvw, 7), v_cache = random_gpu(kMaxSeq * kvw, 8);
  std::vector<int32_t> host_pos;
  for (int64_t r = 0; r < rows; ++r) host_pos.push_back(int32_t(100 + r));
  auto pos = Tensor<int32_t, Cuda>::from(mil::Shape{rows}, host_pos);
  auto slots = Tensor<int32_t, Cuda>::zeros(mil::Shape{rows});
  mil::RopeConfig rope{kHeadDim};
  rope.theta = 100000.f;
  const mil::QkvCacheShape qs{kHeads, kKvHeads, kHeadDim, rope, 1, kMaxSeq};

  auto layer = [&](int64_t l) {
    const bf16* wl = w.data() + l * outputs * kD;
    if (fused) {
      if (op == 0)
        mil::cuda::norm_qkv_rope_cache_rows(y.data(), k_cache.data(), v_cache.data(), x.data(),
                                            g.data(), 1e-5f, wl, static_cast<const bf16*>(nullptr),
                                            slots.data(), pos.data(), rows, kD, qs, stream);
      else if (op == 1)
        mil::cuda::norm_swiglu_rows(m.data(), x.data(), g.data(), 1e-5f, wl, rows, kFF, kD, stream);
      else
        mil::cuda::norm_linear_rows(y.data(), x.data(), g.data(), 1e-5f, wl, rows, kVocab, kD, stream);
      return;
    }
    mil::cuda::rmsnorm_forward(h.data(), nullptr, x.data(), g.data(), rows, kD, 1e-5f, stream);
    mil::cuda::linear_rows(y.data(), h.data(), wl, rows, outputs, kD, false, stream);
    if (op == 0) {
      mil::cuda::rope_apply(y.data(), y.data(), pos.data(), rows, kHeads + kKvHeads, width, rope,
                            false, stream);
      mil::cuda::kv_cache_append(k_cache.data(), v_cache.data(), y.data() + kHeads * kHeadDim,
                                 y.data() + (kHeads + kKvHeads) * kHeadDim, width, slots.data(),
                                 pos.data(), rows, kvw, 1, kMaxSeq, stream);
    } else if (op == 1) {
      mil::cuda::swiglu_forward(m.data(), y.data(), y.data() + kFF, rows, kFF, 2 * kFF, stream);
    }
  };
  for (int64_t l = 0; l < layers; ++l) layer(l);  // eager: GEMM plans, shared-memory opt-in
  MIL_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph{};
  MIL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int64_t l = 0; l < layers; ++l) layer(l);
  MIL_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec{};
  MIL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  MIL_CUDA_CHECK(cudaGraphDestroy(graph));
  cudaEvent_t start, stop;
  MIL_CUDA_CHECK(cudaEventCreate(&start));
  MIL_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) MIL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  for (auto _ : state) {
    MIL_CUDA_CHECK(cudaEventRecord(start, stream));
    MIL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    MIL_CUDA_CHECK(cudaEventRecord(stop, stream));
    MIL_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(double(ms) * 1e-3 / double(layers));  // per layer
  }
  MIL_CUDA_CHECK(cudaEventDestroy(start));
  MIL_CUDA_CHECK(cudaEventDestroy(stop));
  MIL_CUDA_CHECK(cudaGraphExecDestroy(exec));
  const double bytes = 2.0 * double(outputs * kD);  // this layer's weights
  mil::bench::report(state, bytes, 2.0 * double(rows * outputs * kD), mil::bench::h100_bf16);
  MIL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void BM_fused_rows(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  cudaStream_t stream = nullptr;  // graphs are captured on a stream of their own
  MIL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  run_fused_rows(state, stream);
  MIL_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace

BENCHMARK(BM_fused_rows)
    ->ArgNames({"op", "rows", "fused"})
    ->ArgsProduct({{0, 1, 2}, {1, 5}, {1, 0}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.3);
