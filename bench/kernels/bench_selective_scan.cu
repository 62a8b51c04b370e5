// GPU Mamba-1 selective scan, bf16: forward and backward at shape S (SmolLM2-135M hybrid: 16 x 1024
// tokens, 576 channels, d_state 16, 12 B groups, 36 C groups) and shape L (Llama-3-8B hybrid: 4 x
// 2048 tokens, 4096 channels, 64 B groups, 256 C groups), and the decode step (seq = 1 against fp32
// states) at batch 1 and 64. Inputs are laid out as mamba1_core reads them: u and delta packed,
// z, B and C column blocks of the in_proj row [x | z | B | C].
// Peers: mamba_ssm's CUDA selective_scan_cuda forward and backward (docs/PERFORMANCE.md); no peer
// number for the Mamba-1 decode step.
// Compulsory bytes: the forward reads u, delta, z, B, C and writes y; the backward also reads dout
// and writes du, ddelta, dz, dB, dC; a decode step also reads and writes the states. The second
// ceiling is the special-function unit: every decay is one exp2 (16 per channel and token, which
// the backward needs as well), counted as the "FLOPs" against 16 exp2 per SM and clock (132 SMs,
// 1.98 GHz).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/selective_scan.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using mil::bf16;
using mil::Cuda;
using mil::Tensor;

// 16 exp2 per SM and clock, 132 SMs, 1.98 GHz: NVIDIA's H100 SXM figures, not measured here.
constexpr mil::bench::Ceiling kH100Sfu{"H100 exp2 (SFU)", 2.98e12, 132 * 16 * 1.98e9};

template <class T>
__global__ void scan_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(mil::rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_gpu(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  auto t = Tensor<T, Cuda>::empty(mil::Shape{std::max<int64_t>(n, 1)});
  scan_bench_fill_kernel<T><<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), n, seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("scan_bench_fill_kernel");
  return t;
}

// The shape as mamba1_core runs it: z, B, C in the in_proj row of width 2 d_xb + 2 channels.
mil::SelectiveScanShape shape(int64_t batch, int64_t seq, int64_t channels, int64_t b_groups,
                              int64_t c_groups) {
  mil::SelectiveScanShape s;
  s.batch = batch, s.seq = seq, s.channels = channels, s.d_state = 16;
  s.b_groups = b_groups, s.c_groups = c_groups, s.bias_scale = 2.f;
  s.b_stride = s.c_stride = s.z_stride = 2 * b_groups * 16 + 2 * channels;
  return s;
}

// Offsets in the in_proj row [x | z | B | C].
struct Proj {
  int64_t width, z, b, c;
};
Proj proj_of(const mil::SelectiveScanShape& s) {
  const int64_t xb = s.b_groups * 16;
  return {2 * xb + 2 * s.channels, xb, xb + s.channels, 2 * xb + s.channels};
}

double forward_bytes(const mil::SelectiveScanShape& s) {
  const double tokens = double(s.batch * s.seq);
  return tokens * double(4 * s.channels + (s.b_groups + s.c_groups) * 16) * 2;
}
double exps(const mil::SelectiveScanShape& s) { return double(s.batch * s.seq * s.channels) * 16; }

struct ScanBuffers {
  Tensor<bf16, Cuda> proj, u, delta, y, dout, du, ddelta, dproj;
};

void BM_selective_scan_cuda(benchmark::State& state, int64_t batch, int64_t seq, int64_t channels,
                            int64_t b_groups, int64_t c_groups, bool backward, double peer_ms) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const mil::SelectiveScanShape s = shape(batch, seq, channels, b_groups, c_groups);
  const Proj p = proj_of(s);
  const int64_t rows = batch * seq;
  const double fwd_bytes = forward_bytes(s);
  // backward: the inputs and dout (y's size) read, the inputs' gradients written
  const double y_bytes = double(rows * channels) * 2;
  const double bytes = backward ? 2 * fwd_bytes - y_bytes : fwd_bytes;
  const int sets = std::clamp(int(200e6 / (rows * (p.width + 3 * channels) * 2.0)) + 1, 1, 4);
  {
    std::vector<ScanBuffers> bufs(static_cast<size_t>(sets));
    uint64_t seed = 1;
    for (auto& b : bufs) {
      b.proj = random_gpu<bf16>(rows * p.width, seed++);
      b.u = random_gpu<bf16>(rows * channels, seed++);
      b.delta = random_gpu<bf16>(rows * channels, seed++, -4.f, -1.f);
      b.y = Tensor<bf16, Cuda>::empty(mil::Shape{rows * channels});
      if (backward) {
        b.dout = random_gpu<bf16>(rows * channels, seed++);
        b.du = Tensor<bf16, Cuda>::empty(mil::Shape{rows * channels});
        b.ddelta = Tensor<bf16, Cuda>::empty(mil::Shape{rows * channels});
        b.dproj = Tensor<bf16, Cuda>::empty(mil::Shape{rows * p.width});
      }
    }
    auto delta_bias = random_gpu<bf16>(channels, 100, -0.5f, 0.f);
    auto A_log = random_gpu<bf16>(channels * 16, 101, 0.f, 2.7f);
    auto D = random_gpu<bf16>(channels, 102, 0.5f, 1.5f);
    auto dparams = Tensor<bf16, Cuda>::empty(mil::Shape{18 * channels});
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      ScanBuffers& b = bufs[size_t(i % sets)];
      const bf16* pr = b.proj.data();
      if (!backward) {
        mil::cuda::selective_scan_forward<bf16>(b.y.data(), b.u.data(), b.delta.data(),
                                                delta_bias.data(), A_log.data(), pr + p.b,
                                                pr + p.c, D.data(), pr + p.z, s,
                                                mil::SelectiveStates{}, stream);
      } else {
        mil::SelectiveScanGrads<bf16> g;
        g.du = b.du.data(), g.ddelta = b.ddelta.data();
        g.dB = b.dproj.data() + p.b, g.dC = b.dproj.data() + p.c, g.dz = b.dproj.data() + p.z;
        g.ddelta_bias = dparams.data(), g.dA_log = dparams.data() + channels;
        g.dD = dparams.data() + 17 * channels;
        mil::cuda::selective_scan_backward<bf16>(g, b.dout.data(), b.u.data(), b.delta.data(),
                                                 delta_bias.data(), A_log.data(), pr + p.b,
                                                 pr + p.c, D.data(), pr + p.z, s, stream);
      }
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, exps(s), kH100Sfu, peer_ms * 1e-3);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

// One decode step: batch sequences, one token each, against fp32 states of `batch` slots.
void BM_selective_scan_decode_cuda(benchmark::State& state, int64_t batch, int64_t channels,
                                   int64_t b_groups, int64_t c_groups) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const mil::SelectiveScanShape s = shape(batch, 1, channels, b_groups, c_groups);
  const Proj p = proj_of(s);
  const double state_bytes = double(batch * s.state_size()) * 4;
  const double bytes = 2 * state_bytes + forward_bytes(s);
  const int sets = std::clamp(int(100e6 / state_bytes) + 1, 1, 16);
  {
    auto proj = random_gpu<bf16>(batch * p.width, 1);
    auto u = random_gpu<bf16>(batch * channels, 2);
    auto delta = random_gpu<bf16>(batch * channels, 3, -4.f, -1.f);
    auto y = Tensor<bf16, Cuda>::empty(mil::Shape{batch * channels});
    auto delta_bias = random_gpu<bf16>(channels, 100, -0.5f, 0.f);
    auto A_log = random_gpu<bf16>(channels * 16, 101, 0.f, 2.7f);
    auto D = random_gpu<bf16>(channels, 102, 0.5f, 1.5f);
    std::vector<int32_t> slot_ids(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) slot_ids[size_t(b)] = int32_t(b);
    auto slots = Tensor<int32_t, Cuda>::from(mil::Shape{batch}, slot_ids);
    std::vector<Tensor<float, Cuda>> states;
    for (int j = 0; j < sets; ++j)
      states.push_back(random_gpu<float>(batch * s.state_size(), 200 + j, -0.5f, 0.5f));
    cudaStream_t stream = mil::cuda::current_stream();
    const bf16* pr = proj.data();
    mil::bench::time_cuda(state, [&](int i) {
      mil::cuda::selective_scan_forward<bf16>(
          y.data(), u.data(), delta.data(), delta_bias.data(), A_log.data(), pr + p.b, pr + p.c,
          D.data(), pr + p.z, s,
          mil::SelectiveStates{states[size_t(i % sets)].data(), batch, slots.data()}, stream);
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, exps(s), kH100Sfu);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

}  // namespace

// Peer times (ms): mamba_ssm CUDA selective_scan_cuda (the extension built for sm_90), bf16,
// measured on the lent H100 80GB HBM3 on 2026-11-22 with PyTorch (docs/PERFORMANCE.md).
// Shape S: SmolLM2-135M hybrid.
BENCHMARK_CAPTURE(BM_selective_scan_cuda, S_fwd, 16, 1024, 576, 12, 36, false, 0.20)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_selective_scan_cuda, S_bwd, 16, 1024, 576, 12, 36, true, 0.79)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
// Shape L: Llama-3-8B hybrid.
BENCHMARK_CAPTURE(BM_selective_scan_cuda, L_fwd, 4, 2048, 4096, 64, 256, false, 0.72)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_selective_scan_cuda, L_bwd, 4, 2048, 4096, 64, 256, true, 2.74)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
// Decode steps.
BENCHMARK_CAPTURE(BM_selective_scan_decode_cuda, S_batch1, 1, 576, 12, 36)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_selective_scan_decode_cuda, S_batch64, 64, 576, 12, 36)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_selective_scan_decode_cuda, L_batch1, 1, 4096, 64, 256)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_selective_scan_decode_cuda, L_batch64, 64, 4096, 64, 256)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
