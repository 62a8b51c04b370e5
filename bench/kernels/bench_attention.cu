// CUDA attention (bf16, FlashAttention-2 style): forward and forward+backward at the SmolLM2-135M
// shape (16 x 1024 tokens, 9 heads of 64, 3 kv heads) and the Llama-3-8B shape (4 x 2048 tokens,
// 32 heads of 128, 8 kv heads), q/k/v in one fused QKV buffer as the model stores them.
// No peer time is recorded in docs/PERFORMANCE.md for these shapes yet.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/core/tensor.hpp>
#include <mil/kernels/attention.cuh>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

namespace {

struct GpuAttentionBuffers {
  mil::Tensor<mil::bf16, mil::Cuda> qkv, out, dout, dqkv;
  mil::Tensor<float, mil::Cuda> lse;
};

// Causal FLOPs of the forward pass: 2 * B * H * T^2 * hd (two products, half of the scores).
double gpu_attention_forward_flops(const mil::AttentionShape& s) {
  return 2.0 * double(s.batch * s.heads) * double(s.seq) * double(s.seq) * double(s.head_dim);
}
// Forward: read q, k, v (bf16); write out (bf16) and lse (fp32).
double gpu_attention_forward_bytes(const mil::AttentionShape& s) {
  const double tokens = double(s.batch * s.seq);
  return tokens * double((s.heads + 2 * s.kv_heads) * s.head_dim) * 2 +
         tokens * double(s.heads * s.head_dim) * 2 + tokens * double(s.heads) * 4;
}
// Backward: read q, k, v, out, dout, lse; write dq, dk, dv.
double gpu_attention_backward_bytes(const mil::AttentionShape& s) {
  const double tokens = double(s.batch * s.seq);
  const double qkv = tokens * double((s.heads + 2 * s.kv_heads) * s.head_dim) * 2;
  return 2 * qkv + 2 * tokens * double(s.heads * s.head_dim) * 2 + tokens * double(s.heads) * 4;
}

void BM_attention_cuda(benchmark::State& state, int64_t batch, int64_t seq, int64_t heads,
                       int64_t kv_heads, int64_t hd, bool backward) {
  using mil::bf16;
  using mil::Cuda;
  using mil::Shape;
  using mil::Tensor;
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const mil::AttentionShape s = mil::attention_shape_fused(batch, seq, heads, kv_heads, hd);
  const int64_t tokens = batch * seq, qw = heads * hd, kw = kv_heads * hd;
  const int64_t n_qkv = tokens * s.q_stride, n_out = tokens * qw;

  // Rotate over enough buffer sets that one iteration's inputs are not in L2 (50 MB) from the
  // previous one.
  const double input_bytes = double(n_qkv) * 2;
  const int sets = std::clamp(int(2 * 50e6 / input_bytes) + 1, 2, 4);
  std::vector<bf16> host_qkv(static_cast<size_t>(n_qkv)), host_dout(static_cast<size_t>(n_out));
  for (size_t i = 0; i < host_qkv.size(); ++i)
    host_qkv[i] = bf16(mil::rng::uniform(1, 0, i, -2.f, 2.f));
  for (size_t i = 0; i < host_dout.size(); ++i)
    host_dout[i] = bf16(mil::rng::uniform(2, 0, i, -1.f, 1.f));
  std::vector<GpuAttentionBuffers> bufs(static_cast<size_t>(sets));
  for (auto& b : bufs) {
    b.qkv = Tensor<bf16, Cuda>::from(Shape{n_qkv}, host_qkv);
    b.dout = Tensor<bf16, Cuda>::from(Shape{n_out}, host_dout);
    b.out = Tensor<bf16, Cuda>::empty(Shape{n_out});
    b.dqkv = Tensor<bf16, Cuda>::empty(Shape{n_qkv});
    b.lse = Tensor<float, Cuda>::empty(Shape{batch * heads * seq});
  }
  cudaStream_t stream = mil::cuda::current_stream();
  mil::bench::time_cuda(state, [&](int i) {
    GpuAttentionBuffers& b = bufs[size_t(i % sets)];
    const bf16* q = b.qkv.data();
    mil::cuda::attention_forward(b.out.data(), b.lse.data(), q, q + qw, q + qw + kw, s, stream);
    if (backward) {
      bf16* d = b.dqkv.data();
      mil::cuda::attention_backward(d, d + qw, d + qw + kw, b.dout.data(), q, q + qw, q + qw + kw,
                                    b.out.data(), b.lse.data(), s, false, stream);
    }
  });
  const double fwd_flops = gpu_attention_forward_flops(s);
  const double bytes =
      gpu_attention_forward_bytes(s) + (backward ? gpu_attention_backward_bytes(s) : 0);
  mil::bench::report(state, bytes, backward ? 3.5 * fwd_flops : fwd_flops, mil::bench::h100_bf16);
}

}  // namespace

// SmolLM2-135M: 9 heads of 64, 3 kv heads, 16 x 1024 tokens.
BENCHMARK_CAPTURE(BM_attention_cuda, smollm_fwd, 16, 1024, 9, 3, 64, false)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_attention_cuda, smollm_fwd_bwd, 16, 1024, 9, 3, 64, true)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
// Llama-3-8B: 32 heads of 128, 8 kv heads, 4 x 2048 tokens.
BENCHMARK_CAPTURE(BM_attention_cuda, llama8b_fwd, 4, 2048, 32, 8, 128, false)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_attention_cuda, llama8b_fwd_bwd, 4, 2048, 32, 8, 128, true)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
