// CPU reference attention (float): forward and forward+backward on a small SmolLM2-like shape
// (batch 1, 256 tokens, 9 heads of 64, 3 kv heads, fused QKV buffer).
#include <benchmark/benchmark.h>

#include <vector>

#include <mil/core/rng.hpp>
#include <mil/kernels/attention.hpp>

#include "common/bench.hpp"

namespace {

struct CpuAttentionBuffers {
  mil::AttentionShape s;
  std::vector<float> qkv, out, lse, dout, dqkv;
  const float* q() const { return qkv.data(); }
  const float* k() const { return qkv.data() + s.heads * s.head_dim; }
  const float* v() const { return k() + s.kv_heads * s.head_dim; }
};

CpuAttentionBuffers make_cpu_buffers(int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                                     int64_t hd) {
  CpuAttentionBuffers b;
  b.s = mil::attention_shape_fused(batch, seq, heads, kv_heads, hd);
  const size_t tokens = size_t(batch * seq), n_out = tokens * size_t(heads * hd);
  b.qkv.resize(tokens * size_t(b.s.q_stride));
  b.dout.resize(n_out);
  for (size_t i = 0; i < b.qkv.size(); ++i) b.qkv[i] = mil::rng::uniform(1, 0, i, -2.f, 2.f);
  for (size_t i = 0; i < n_out; ++i) b.dout[i] = mil::rng::uniform(2, 0, i, -1.f, 1.f);
  b.out.resize(n_out);
  b.lse.resize(size_t(batch * heads * seq));
  b.dqkv.resize(b.qkv.size());
  return b;
}

// Causal FLOPs: two products of B*H*T*T*hd*2 halved by the mask; backward counts 2.5x.
double attention_forward_flops(const mil::AttentionShape& s) {
  return 2.0 * double(s.batch * s.heads) * double(s.seq) * double(s.seq) * double(s.head_dim);
}
// Compulsory bytes: read q, k, v; write out and lse.
double attention_forward_bytes(const mil::AttentionShape& s, double elem) {
  const double tokens = double(s.batch * s.seq);
  return tokens * double((s.heads + 2 * s.kv_heads) * s.head_dim) * elem +
         tokens * double(s.heads * s.head_dim) * elem + tokens * double(s.heads) * 4;
}
// Backward: read q, k, v, out, dout, lse; write dq, dk, dv.
double attention_backward_bytes(const mil::AttentionShape& s, double elem) {
  const double tokens = double(s.batch * s.seq);
  const double qkv = tokens * double((s.heads + 2 * s.kv_heads) * s.head_dim) * elem;
  return 2 * qkv + 2 * tokens * double(s.heads * s.head_dim) * elem + tokens * double(s.heads) * 4;
}

void BM_attention_cpu_forward(benchmark::State& state) {
  auto b = make_cpu_buffers(1, 256, 9, 3, 64);
  for (auto _ : state) {
    mil::cpu::attention_forward(b.out.data(), b.lse.data(), b.q(), b.k(), b.v(), b.s);
    benchmark::DoNotOptimize(b.out.data());
    benchmark::ClobberMemory();
  }
  mil::bench::report(state, attention_forward_bytes(b.s, 4), attention_forward_flops(b.s),
                     mil::bench::cpu_ceiling());
}

void BM_attention_cpu_forward_backward(benchmark::State& state) {
  auto b = make_cpu_buffers(1, 256, 9, 3, 64);
  const int64_t qw = b.s.heads * b.s.head_dim, kw = b.s.kv_heads * b.s.head_dim;
  for (auto _ : state) {
    mil::cpu::attention_forward(b.out.data(), b.lse.data(), b.q(), b.k(), b.v(), b.s);
    float* d = b.dqkv.data();
    mil::cpu::attention_backward(d, d + qw, d + qw + kw, b.dout.data(), b.q(), b.k(), b.v(),
                                 b.out.data(), b.lse.data(), b.s, false);
    benchmark::DoNotOptimize(b.dqkv.data());
    benchmark::ClobberMemory();
  }
  mil::bench::report(state, attention_forward_bytes(b.s, 4) + attention_backward_bytes(b.s, 4),
                     3.5 * attention_forward_flops(b.s), mil::bench::cpu_ceiling());
}

}  // namespace

BENCHMARK(BM_attention_cpu_forward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_attention_cpu_forward_backward)->Unit(benchmark::kMillisecond);
