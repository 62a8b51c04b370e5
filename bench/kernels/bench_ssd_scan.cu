// GPU SSD scan (Mamba-2), bf16: forward and forward+backward at shape S (SmolLM2-135M hybrid:
// 16 x 1024 tokens, 9 heads, 3 groups, head_dim = d_state = 64) and shape L (Llama-3-8B hybrid:
// 4 x 2048 tokens, 32 heads, 8 groups, head_dim = d_state = 128), and the decode step (seq = 1
// against fp32 states) at batch 1 and 64; and the batch-1 prefill of S (1 x 2048 tokens) with each
// forward algorithm (sequential: 9 blocks walk 32 chunks; chunk-parallel: 288 blocks per pass).
// Peers: mamba_ssm's Triton mamba_chunk_scan_combined and
// selective_state_update (docs/PERFORMANCE.md); their figures are the last argument of each case.
// Compulsory bytes: forward reads x, B, C, dt and writes y; the backward also reads dy and writes
// dx, dB, dC, ddt; a decode step reads and writes the states. FLOPs: the chunked algorithm's
// products per token and head (causal half of the Q x Q ones): Q (N + P) + 4 N P forward, 2.5x
// that for the backward.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/ssd_scan.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

using mil::bf16;
using mil::Cuda;
using mil::Tensor;

template <class T>
__global__ void ssd_bench_fill_kernel(T* p, int64_t n, uint64_t seed, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    p[i] = T(mil::rng::uniform(seed, 0, uint64_t(i), lo, hi));
}

template <class T>
Tensor<T, Cuda> random_gpu(int64_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  auto t = Tensor<T, Cuda>::empty(mil::Shape{std::max<int64_t>(n, 1)});
  ssd_bench_fill_kernel<T><<<1024, 256, 0, mil::cuda::current_stream()>>>(t.data(), n, seed, lo, hi);
  MIL_CUDA_CHECK_LAUNCH("ssd_bench_fill_kernel");
  return t;
}

mil::SsdShape shape(int64_t batch, int64_t seq, int64_t heads, int64_t groups, int64_t dim) {
  mil::SsdShape s;
  s.batch = batch, s.seq = seq, s.heads = heads, s.groups = groups;
  s.head_dim = dim, s.d_state = dim;
  return s;
}

struct SsdBuffers {
  Tensor<bf16, Cuda> x, B, C, dt, y, dy, dx, dB, dC, ddt;
};

double forward_bytes(const mil::SsdShape& s) {
  const double tokens = double(s.batch * s.seq);
  return tokens * double(s.groups * (s.head_dim + s.d_state) + s.heads * s.d_state + s.heads +
                         s.heads * s.head_dim) * 2;
}
double forward_flops(const mil::SsdShape& s) {
  const double q = 64, p = double(s.head_dim), n = double(s.d_state);
  return double(s.batch * s.seq * s.heads) * (q * (n + p) + 4 * n * p);
}

void BM_ssd_scan_cuda(benchmark::State& state, int64_t batch, int64_t seq, int64_t heads,
                      int64_t groups, int64_t dim, bool backward, double peer_ms,
                      mil::cuda::SsdForwardPath path = mil::cuda::SsdForwardPath::automatic) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const mil::SsdShape s = shape(batch, seq, heads, groups, dim);
  const int64_t rows = batch * seq;
  const double fwd_bytes = forward_bytes(s);
  // backward: the forward's inputs and dy read, their gradients written
  const double bytes = backward ? fwd_bytes + 2 * (fwd_bytes - double(rows * heads * dim) * 2) +
                                      double(rows * heads * dim) * 2
                                : fwd_bytes;
  const int sets = std::clamp(int(100e6 / fwd_bytes) + 1, 1, 4);
  {
    std::vector<SsdBuffers> bufs(static_cast<size_t>(sets));
    uint64_t seed = 1;
    for (auto& b : bufs) {
      b.x = random_gpu<bf16>(rows * groups * dim, seed++);
      b.B = random_gpu<bf16>(rows * groups * dim, seed++);
      b.C = random_gpu<bf16>(rows * heads * dim, seed++);
      b.dt = random_gpu<bf16>(rows * heads, seed++, -3.f, 0.f);
      b.y = Tensor<bf16, Cuda>::empty(mil::Shape{rows * heads * dim});
      if (backward) {
        b.dy = random_gpu<bf16>(rows * heads * dim, seed++);
        b.dx = Tensor<bf16, Cuda>::empty(mil::Shape{rows * groups * dim});
        b.dB = Tensor<bf16, Cuda>::empty(mil::Shape{rows * groups * dim});
        b.dC = Tensor<bf16, Cuda>::empty(mil::Shape{rows * heads * dim});
        b.ddt = Tensor<bf16, Cuda>::empty(mil::Shape{rows * heads});
      }
    }
    auto dt_bias = random_gpu<bf16>(heads, 100, -1.f, 0.f);
    auto A_log = random_gpu<bf16>(heads, 101, 0.f, 1.f);
    auto D = random_gpu<bf16>(heads, 102, 0.5f, 1.5f);
    auto dparams = Tensor<bf16, Cuda>::empty(mil::Shape{3 * heads});
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      SsdBuffers& b = bufs[size_t(i % sets)];
      mil::cuda::ssd_scan_forward<bf16>(b.y.data(), b.x.data(), b.B.data(), b.C.data(),
                                        b.dt.data(), dt_bias.data(), A_log.data(), D.data(), s,
                                        mil::SsdStates{}, stream, path);
      if (backward) {
        mil::SsdGrads<bf16> g;
        g.dx = b.dx.data(), g.dB = b.dB.data(), g.dC = b.dC.data(), g.ddt = b.ddt.data();
        g.ddt_bias = dparams.data(), g.dA_log = dparams.data() + heads,
        g.dD = dparams.data() + 2 * heads;
        mil::cuda::ssd_scan_backward<bf16>(g, b.dy.data(), b.x.data(), b.B.data(), b.C.data(),
                                           b.dt.data(), dt_bias.data(), A_log.data(), D.data(), s,
                                           stream);
      }
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, forward_flops(s) * (backward ? 3.5 : 1.0),
                       mil::bench::h100_bf16, peer_ms * 1e-3);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

// One decode step: batch sequences, one token each, against fp32 states of `batch` slots.
void BM_ssd_decode_cuda(benchmark::State& state, int64_t batch, int64_t heads, int64_t groups,
                        int64_t dim, double peer_us) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const mil::SsdShape s = shape(batch, 1, heads, groups, dim);
  const double state_bytes = double(batch * s.state_size()) * 4;
  const double bytes = 2 * state_bytes + forward_bytes(s);
  const double flops = double(batch * s.state_size()) * 5;  // decay, x B, + C
  const int sets = std::clamp(int(100e6 / state_bytes) + 1, 1, 16);
  {
    auto x = random_gpu<bf16>(batch * groups * dim, 1);
    auto B = random_gpu<bf16>(batch * groups * dim, 2);
    auto C = random_gpu<bf16>(batch * heads * dim, 3);
    auto dt = random_gpu<bf16>(batch * heads, 4, -3.f, 0.f);
    auto y = Tensor<bf16, Cuda>::empty(mil::Shape{batch * heads * dim});
    auto dt_bias = random_gpu<bf16>(heads, 100, -1.f, 0.f);
    auto A_log = random_gpu<bf16>(heads, 101, 0.f, 1.f);
    auto D = random_gpu<bf16>(heads, 102, 0.5f, 1.5f);
    std::vector<int32_t> slot_ids(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) slot_ids[size_t(b)] = int32_t(b);
    auto slots = Tensor<int32_t, Cuda>::from(mil::Shape{batch}, slot_ids);
    std::vector<Tensor<float, Cuda>> states;
    for (int j = 0; j < sets; ++j)
      states.push_back(random_gpu<float>(batch * s.state_size(), 200 + j, -0.5f, 0.5f));
    cudaStream_t stream = mil::cuda::current_stream();
    mil::bench::time_cuda(state, [&](int i) {
      mil::cuda::ssd_scan_forward<bf16>(
          y.data(), x.data(), B.data(), C.data(), dt.data(), dt_bias.data(), A_log.data(),
          D.data(), s, mil::SsdStates{states[size_t(i % sets)].data(), batch, slots.data()},
          stream);
    });
    state.counters["buffer_sets"] = sets;
    mil::bench::report(state, bytes, flops, mil::bench::h100_bf16, peer_us * 1e-6);
  }
  mil::cuda::CachingAllocator::instance().release_cached();
}

}  // namespace

// Peer times (ms): mamba_ssm Triton mamba_chunk_scan_combined, bf16, measured on the lent H100
// 80GB HBM3 on 2026-11-22 with PyTorch (docs/PERFORMANCE.md).
// Shape S: SmolLM2-135M hybrid.
BENCHMARK_CAPTURE(BM_ssd_scan_cuda, S_fwd, 16, 1024, 9, 3, 64, false, 0.60)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ssd_scan_cuda, S_fwd_bwd, 16, 1024, 9, 3, 64, true, 4.46)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
// Shape L: Llama-3-8B hybrid.
BENCHMARK_CAPTURE(BM_ssd_scan_cuda, L_fwd, 4, 2048, 32, 8, 128, false, 0.72)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ssd_scan_cuda, L_fwd_bwd, 4, 2048, 32, 8, 128, true, 4.79)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
// Batch-1 prefill of S (the decoder's prompt): no peer figure measured for this shape. The
// automatic choice takes the chunk-parallel path here (9 blocks, at most half of 132 SMs).
BENCHMARK_CAPTURE(BM_ssd_scan_cuda, S_prefill1_sequential, 1, 2048, 9, 3, 64, false, 0.0,
                  mil::cuda::SsdForwardPath::sequential)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ssd_scan_cuda, S_prefill1_chunked, 1, 2048, 9, 3, 64, false, 0.0,
                  mil::cuda::SsdForwardPath::chunked)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
// Decode steps. Peer times (us): mamba_ssm Triton selective_state_update, bf16, measured on the
// lent H100 80GB HBM3 on 2026-11-22 with PyTorch (docs/PERFORMANCE.md); none for S at batch 64.
BENCHMARK_CAPTURE(BM_ssd_decode_cuda, S_batch1, 1, 9, 3, 64, 153.0)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ssd_decode_cuda, S_batch64, 64, 9, 3, 64, 0.0)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ssd_decode_cuda, L_batch1, 1, 32, 8, 128, 103.0)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ssd_decode_cuda, L_batch64, 64, 32, 8, 128, 226.0)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
