// CPU references of the Mamba kernels (float, one thread) at the small SmolLM2-135M hybrid shape,
// batch 1 x 256 tokens: the Mamba-2 SSD scan (9 heads, 3 groups, head_dim = d_state = 64), the
// Mamba-1 selective scan (576 channels, state 16, 12 B groups and 36 C groups, SiLU gate) and the
// causal conv1d (kernel 4, SiLU, over Mamba-2's 960 x|B|C channels), forward and backward, plus a
// decode step (seq = 1 against the states / ring). Each reports tokens/s (the CPU path's number in
// docs/PERFORMANCE.md; no CPU peer).
// Compulsory bytes: the inputs read and outputs written once (a decode step also reads and writes
// the states). FLOPs are those of the reference loops per token (exp counted as one): SSD scan
// forward 5 per (head, p, n), backward 18 (it recomputes the states twice); selective scan 7 and
// 27 per (channel, n); conv1d 2K + 4 and 6K + 6 per channel.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/kernels/conv1d.hpp>
#include <mil/kernels/selective_scan.hpp>
#include <mil/kernels/ssd_scan.hpp>

#include "common/bench.hpp"

namespace {

constexpr int64_t kTokens = 256;
constexpr double kF = sizeof(float);

std::vector<float> mamba_random(int64_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = mil::rng::uniform(seed, 0, uint64_t(i), lo, hi);
  return v;
}

void tokens_per_second(benchmark::State& state, int64_t tokens) {
  state.counters["tokens/s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- Mamba-2 SSD scan ----

struct SsdBuffers {
  mil::SsdShape s;
  std::vector<float> x, B, C, dt, dt_bias, A_log, D, y, dy, dx, dB, dC, ddt, ddt_bias, dA_log, dD;
  explicit SsdBuffers(int64_t seq) {
    s = mil::SsdShape{.batch = 1, .seq = seq, .heads = 9, .groups = 3, .head_dim = 64, .d_state = 64};
    const int64_t T = seq, H = s.heads, G = s.groups, P = s.head_dim, N = s.d_state;
    x = mamba_random(T * G * P, 1, -1.f, 1.f);
    B = mamba_random(T * G * N, 2, -1.f, 1.f);
    C = mamba_random(T * H * N, 3, -1.f, 1.f);
    dt = mamba_random(T * H, 4, -2.f, 0.f);
    dt_bias = mamba_random(H, 5, -1.f, 0.f);
    A_log = mamba_random(H, 6, 0.f, 2.7f);
    D = mamba_random(H, 7, -1.f, 1.f);
    dy = mamba_random(T * H * P, 8, -1.f, 1.f);
    y.resize(size_t(T * H * P));
    dx.resize(x.size()), dB.resize(B.size()), dC.resize(C.size()), ddt.resize(dt.size());
    ddt_bias.resize(size_t(H)), dA_log.resize(size_t(H)), dD.resize(size_t(H));
  }
  double io_bytes() const {  // x, B, C, dt and y
    return kF * double(x.size() + B.size() + C.size() + dt.size() + y.size());
  }
  double pn() const { return double(s.heads * s.head_dim * s.d_state); }
};

void BM_ssd_scan_cpu_forward(benchmark::State& state) {
  SsdBuffers b(kTokens);
  for (auto _ : state) {
    mil::cpu::ssd_scan_forward(b.y.data(), b.x.data(), b.B.data(), b.C.data(), b.dt.data(),
                               b.dt_bias.data(), b.A_log.data(), b.D.data(), b.s);
    benchmark::DoNotOptimize(b.y.data());
    benchmark::ClobberMemory();
  }
  mil::bench::report(state, b.io_bytes(), 5.0 * kTokens * b.pn(), mil::bench::cpu_ceiling());
  tokens_per_second(state, kTokens);
}

void BM_ssd_scan_cpu_backward(benchmark::State& state) {
  SsdBuffers b(kTokens);
  mil::SsdGrads<float> gr{.dx = b.dx.data(), .dB = b.dB.data(), .dC = b.dC.data(),
                          .ddt = b.ddt.data(), .ddt_bias = b.ddt_bias.data(),
                          .dA_log = b.dA_log.data(), .dD = b.dD.data()};
  for (auto _ : state) {
    mil::cpu::ssd_scan_backward(gr, b.dy.data(), b.x.data(), b.B.data(), b.C.data(), b.dt.data(),
                                b.dt_bias.data(), b.A_log.data(), b.D.data(), b.s);
    benchmark::DoNotOptimize(b.dx.data());
    benchmark::DoNotOptimize(b.dC.data());
    benchmark::ClobberMemory();
  }
  // reads dy, x, B, C, dt (io_bytes counts y where dy is read) and writes dx, dB, dC, ddt
  const double bytes = b.io_bytes() + kF * double(b.x.size() + b.B.size() + b.C.size() + b.dt.size());
  mil::bench::report(state, bytes, 18.0 * kTokens * b.pn(), mil::bench::cpu_ceiling());
  tokens_per_second(state, kTokens);
}

void BM_ssd_scan_cpu_decode(benchmark::State& state) {
  SsdBuffers b(1);
  std::vector<float> states(size_t(b.s.state_size()), 0.f);
  const int32_t slot = 0;
  const mil::SsdStates st{states.data(), 1, &slot};
  for (auto _ : state) {
    mil::cpu::ssd_scan_forward(b.y.data(), b.x.data(), b.B.data(), b.C.data(), b.dt.data(),
                               b.dt_bias.data(), b.A_log.data(), b.D.data(), b.s, st);
    benchmark::DoNotOptimize(b.y.data());
    benchmark::DoNotOptimize(states.data());
    benchmark::ClobberMemory();
  }
  mil::bench::report(state, b.io_bytes() + 2 * kF * b.pn(), 5.0 * b.pn(), mil::bench::cpu_ceiling());
  tokens_per_second(state, 1);
}

// ---- Mamba-1 selective scan ----

struct SelectiveBuffers {
  mil::SelectiveScanShape s;
  std::vector<float> u, delta, delta_bias, A_log, B, C, D, z, y, dy;
  std::vector<float> du, ddelta, dB, dC, dz, ddelta_bias, dA_log, dD;
  explicit SelectiveBuffers(int64_t seq) {
    s = mil::SelectiveScanShape{.batch = 1, .seq = seq, .channels = 576, .d_state = 16,
                                .b_groups = 12, .c_groups = 36};
    const int64_t T = seq, Ch = s.channels, N = s.d_state;
    u = mamba_random(T * Ch, 11, -1.f, 1.f);
    delta = mamba_random(T * Ch, 12, -2.f, 0.f);
    delta_bias = mamba_random(Ch, 13, -1.f, 0.f);
    A_log = mamba_random(Ch * N, 14, 0.f, 2.7f);
    B = mamba_random(T * s.b_groups * N, 15, -1.f, 1.f);
    C = mamba_random(T * s.c_groups * N, 16, -1.f, 1.f);
    D = mamba_random(Ch, 17, -1.f, 1.f);
    z = mamba_random(T * Ch, 18, -2.f, 2.f);
    dy = mamba_random(T * Ch, 19, -1.f, 1.f);
    y.resize(u.size());
    du.resize(u.size()), ddelta.resize(u.size()), dB.resize(B.size()), dC.resize(C.size());
    dz.resize(u.size()), ddelta_bias.resize(size_t(Ch)), dA_log.resize(A_log.size());
    dD.resize(size_t(Ch));
  }
  double io_bytes() const {  // u, delta, B, C, z, y
    return kF * double(u.size() + delta.size() + B.size() + C.size() + z.size() + y.size());
  }
  double cn() const { return double(s.channels * s.d_state); }
};

void BM_selective_scan_cpu_forward(benchmark::State& state) {
  SelectiveBuffers b(kTokens);
  for (auto _ : state) {
    mil::cpu::selective_scan_forward(b.y.data(), b.u.data(), b.delta.data(), b.delta_bias.data(),
                                     b.A_log.data(), b.B.data(), b.C.data(), b.D.data(),
                                     b.z.data(), b.s);
    benchmark::DoNotOptimize(b.y.data());
    benchmark::ClobberMemory();
  }
  mil::bench::report(state, b.io_bytes(), 7.0 * kTokens * b.cn(), mil::bench::cpu_ceiling());
  tokens_per_second(state, kTokens);
}

void BM_selective_scan_cpu_backward(benchmark::State& state) {
  SelectiveBuffers b(kTokens);
  mil::SelectiveScanGrads<float> gr{.du = b.du.data(), .ddelta = b.ddelta.data(),
                                    .dB = b.dB.data(), .dC = b.dC.data(), .dz = b.dz.data(),
                                    .ddelta_bias = b.ddelta_bias.data(),
                                    .dA_log = b.dA_log.data(), .dD = b.dD.data()};
  for (auto _ : state) {
    mil::cpu::selective_scan_backward(gr, b.dy.data(), b.u.data(), b.delta.data(),
                                      b.delta_bias.data(), b.A_log.data(), b.B.data(), b.C.data(),
                                      b.D.data(), b.z.data(), b.s);
    benchmark::DoNotOptimize(b.du.data());
    benchmark::DoNotOptimize(b.dA_log.data());
    benchmark::ClobberMemory();
  }
  // reads dy and the inputs (io_bytes), writes du, ddelta, dB, dC, dz
  const double bytes = b.io_bytes() + kF * double(b.u.size() * 3 + b.B.size() + b.C.size());
  mil::bench::report(state, bytes, 27.0 * kTokens * b.cn(), mil::bench::cpu_ceiling());
  tokens_per_second(state, kTokens);
}

void BM_selective_scan_cpu_decode(benchmark::State& state) {
  SelectiveBuffers b(1);
  std::vector<float> states(size_t(b.s.state_size()), 0.f);
  const int32_t slot = 0;
  const mil::SelectiveStates st{states.data(), 1, &slot};
  for (auto _ : state) {
    mil::cpu::selective_scan_forward(b.y.data(), b.u.data(), b.delta.data(), b.delta_bias.data(),
                                     b.A_log.data(), b.B.data(), b.C.data(), b.D.data(),
                                     b.z.data(), b.s, st);
    benchmark::DoNotOptimize(b.y.data());
    benchmark::DoNotOptimize(states.data());
    benchmark::ClobberMemory();
  }
  mil::bench::report(state, b.io_bytes() + 2 * kF * b.cn(), 7.0 * b.cn(), mil::bench::cpu_ceiling());
  tokens_per_second(state, 1);
}

// ---- causal conv1d ----

struct ConvBuffers {
  mil::Conv1dShape s;
  std::vector<float> x, w, bias, y, dy, dx, dw, dbias;
  explicit ConvBuffers(int64_t seq) {
    s = mil::Conv1dShape{.batch = 1, .seq = seq, .channels = 960, .kernel = 4, .silu = true};
    const int64_t n = seq * s.channels;
    x = mamba_random(n, 21, -1.f, 1.f);
    w = mamba_random(s.channels * s.kernel, 22, -0.5f, 0.5f);
    bias = mamba_random(s.channels, 23, -0.5f, 0.5f);
    dy = mamba_random(n, 24, -1.f, 1.f);
    y.resize(size_t(n)), dx.resize(size_t(n)), dw.resize(w.size()), dbias.resize(bias.size());
  }
};

void BM_conv1d_cpu_forward(benchmark::State& state) {
  ConvBuffers b(kTokens);
  for (auto _ : state) {
    mil::cpu::conv1d_forward(b.y.data(), b.x.data(), b.w.data(), b.bias.data(), b.s);
    benchmark::DoNotOptimize(b.y.data());
    benchmark::ClobberMemory();
  }
  const double n = double(kTokens * b.s.channels);
  mil::bench::report(state, kF * (2 * n + double(b.w.size() + b.bias.size())),
                     double(2 * b.s.kernel + 4) * n, mil::bench::cpu_ceiling());
  tokens_per_second(state, kTokens);
}

void BM_conv1d_cpu_backward(benchmark::State& state) {
  ConvBuffers b(kTokens);
  for (auto _ : state) {
    mil::cpu::conv1d_backward(b.dx.data(), b.dw.data(), b.dbias.data(), b.dy.data(), b.x.data(),
                              b.w.data(), b.bias.data(), b.s, false, false);
    benchmark::DoNotOptimize(b.dx.data());
    benchmark::DoNotOptimize(b.dw.data());
    benchmark::ClobberMemory();
  }
  const double n = double(kTokens * b.s.channels);
  mil::bench::report(state, kF * (3 * n + 2 * double(b.w.size() + b.bias.size())),
                     double(6 * b.s.kernel + 6) * n, mil::bench::cpu_ceiling());
  tokens_per_second(state, kTokens);
}

void BM_conv1d_cpu_decode(benchmark::State& state) {
  ConvBuffers b(1);
  std::vector<float> ring(size_t(3 * b.s.channels), 0.f);
  const int32_t slot = 0;
  int32_t pos = 0;
  const mil::Conv1dRing<float> r{ring.data(), 3, 1, &slot, &pos};
  for (auto _ : state) {
    mil::cpu::conv1d_forward(b.y.data(), b.x.data(), b.w.data(), b.bias.data(), b.s, r);
    ++pos;  // the next token of the sequence
    benchmark::DoNotOptimize(b.y.data());
    benchmark::ClobberMemory();
  }
  const double c = double(b.s.channels);
  mil::bench::report(state, kF * (2 * c + double(b.w.size() + b.bias.size()) + 4 * c),
                     double(2 * b.s.kernel + 4) * c, mil::bench::cpu_ceiling());
  tokens_per_second(state, 1);
}

}  // namespace

BENCHMARK(BM_ssd_scan_cpu_forward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ssd_scan_cpu_backward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ssd_scan_cpu_decode)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_selective_scan_cpu_forward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_cpu_backward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_selective_scan_cpu_decode)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_conv1d_cpu_forward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_conv1d_cpu_backward)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_conv1d_cpu_decode)->Unit(benchmark::kMicrosecond);
