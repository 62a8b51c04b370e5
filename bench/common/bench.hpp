#pragma once
// Shared benchmark reporting: every case reports its compulsory bytes and FLOPs, the floor
// (max of bytes / bandwidth and FLOPs / peak) and the ratio floor / time; where a peer's time for
// the same shape is known (docs/PERFORMANCE.md), also peer_time / time (> 1: faster than the
// peer). Each peer constant says where it was measured.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

namespace mil::bench {

struct Ceiling {
  const char* name;
  double bytes_per_s;  // read + written
  double flops_per_s;
};

// Measured on the lent H100 80GB HBM3 on 2026-11-22 (docs/PERFORMANCE.md): device-to-device copy
// (bytes read + written) and cuBLAS bf16 GEMM at 8192^3.
inline constexpr Ceiling h100_bf16{"H100 bf16", 2.98e12, 793e12};
// fp32 work on the H100 without tensor cores: 67 TFLOP/s (NVIDIA's datasheet, non-tensor FP32;
// not measured).
inline constexpr Ceiling h100_fp32{"H100 fp32", 2.98e12, 67e12};

// This machine's CPU, measured once: a large memcpy and a float FMA loop over all threads.
inline Ceiling cpu_ceiling() {
  static Ceiling c = [] {
    const size_t n = size_t(1) << 26;  // 256 MiB of floats: far past the caches
    std::vector<float> a(n, 1.f), b(n, 0.f);
    double best_copy = 1e30;
    for (int r = 0; r < 3; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      std::memcpy(b.data(), a.data(), n * sizeof(float));
      best_copy = std::min(best_copy, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    benchmark::DoNotOptimize(b.data());
    // FMA throughput of one core on independent chains, times the cores in use.
    float acc[64];
    for (int i = 0; i < 64; ++i) acc[i] = float(i);
    const long iters = 1 << 22;
    auto t0 = std::chrono::steady_clock::now();
    for (long it = 0; it < iters; ++it)

      for (int i = 0; i < 64; ++i) acc[i] = acc[i] * 0.9999f + 0.0001f;
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(acc);
    double flops = 2.0 * 64 * double(iters) / t;
    return Ceiling{"CPU", 2.0 * double(n * sizeof(float)) / best_copy, flops};
  }();
  return c;
}

// Adds the counters to a finished benchmark loop. bytes and flops are per iteration.
inline void report(benchmark::State& state, double bytes, double flops, const Ceiling& ceiling,
                   double peer_seconds = 0) {
  double floor_s = std::max(bytes / ceiling.bytes_per_s, flops / ceiling.flops_per_s);
  using C = benchmark::Counter;
  state.counters["bytes"] = C(bytes, C::kDefaults, C::kIs1024);
  state.counters["FLOPs"] = C(flops, C::kDefaults, C::kIs1000);
  state.counters["floor_us"] = floor_s * 1e6;
  // A rate counter divides by the measured time: floor_s / time_per_iteration.
  state.counters["floor/time"] = C(floor_s, C::kIsIterationInvariantRate);
  state.counters["TB/s"] = C(bytes * 1e-12, C::kIsIterationInvariantRate);
  state.counters["TFLOP/s"] = C(flops * 1e-12, C::kIsIterationInvariantRate);
  if (peer_seconds > 0) state.counters["peer/time"] = C(peer_seconds, C::kIsIterationInvariantRate);
}

}  // namespace mil::bench
