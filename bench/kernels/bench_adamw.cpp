// AdamW update over a flat float buffer on the CPU (the CPU training path): 10M parameters, the
// master weights are the parameters (no low-precision copy).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <mil/kernels/adamw.hpp>

#include "common/bench.hpp"

namespace {

using namespace mil;

void BM_adamw_cpu_f32(benchmark::State& state) {
  const int64_t n = 10'000'000;
  std::vector<float> w(n), m(n, 0.f), v(n, 0.f), g(n);
  for (int64_t i = 0; i < n; ++i) {
    w[size_t(i)] = float(i % 1000) * 1e-3f - 0.5f;
    g[size_t(i)] = float(i % 997) * 1e-4f - 0.05f;
  }
  AdamWStep s;
  s.lr = 1e-3f, s.weight_decay = 0.01f;
  for (auto _ : state) {
    ++s.step;
    cpu::adamw_update(w.data(), m.data(), v.data(), nullptr, g.data(), n, s);
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  // Read master, m, v, grad and write master, m, v: 28 bytes per parameter; ~15 FLOPs (with
  // the square root and the division counted as one each).
  bench::report(state, 28.0 * double(n), 15.0 * double(n), bench::cpu_ceiling());
}
BENCHMARK(BM_adamw_cpu_f32)->Unit(benchmark::kMillisecond);

}  // namespace
