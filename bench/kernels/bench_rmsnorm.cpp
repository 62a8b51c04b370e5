// CPU RMSNorm (the float reference, one thread): forward and backward over 16384 rows at the
// hidden sizes of the 135M model (576) and of Llama-3-8B (4096). The floor is the compulsory bytes
// (forward: read x and w, write out and rstd; backward: read dout, x, w and rstd, write dx and dw)
// at this machine's copy bandwidth. Each array is at least 37 MB, past the caches.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/kernels/rmsnorm.hpp>

#include "common/bench.hpp"

namespace {

constexpr int64_t kRows = 16384;
constexpr float kEps = 1e-5f;

// Uniform [lo, hi) from the project's Philox stream, four values per block.
std::vector<float> random_floats(int64_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t b = 0; b * 4 < n; ++b) {
    mil::rng::U32x4 r = mil::rng::random_block(seed, 0, uint64_t(b));
    for (int64_t k = 0; k < 4 && b * 4 + k < n; ++k)
      v[size_t(b * 4 + k)] = lo + (hi - lo) * mil::rng::to_unit_float(r.v[k]);
  }
  return v;
}

void rmsnorm_forward_cpu_f32(benchmark::State& state, int64_t dim) {
  const int64_t n = kRows * dim;
  auto x = random_floats(n, 1, -2.f, 2.f), w = random_floats(dim, 2, 0.5f, 1.5f);
  std::vector<float> out(static_cast<size_t>(n)), rstd(static_cast<size_t>(kRows));
  for (auto _ : state) {
    mil::cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), kRows, dim, kEps);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double bytes = (2.0 * double(n) + double(dim) + double(kRows)) * sizeof(float);
  mil::bench::report(state, bytes, 4.0 * double(n), mil::bench::cpu_ceiling());
}

void rmsnorm_backward_cpu_f32(benchmark::State& state, int64_t dim) {
  const int64_t n = kRows * dim;
  auto x = random_floats(n, 3, -2.f, 2.f), w = random_floats(dim, 4, 0.5f, 1.5f);
  auto dout = random_floats(n, 5, -1.f, 1.f);
  std::vector<float> out(static_cast<size_t>(n)), rstd(static_cast<size_t>(kRows));
  mil::cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), kRows, dim, kEps);
  out = {};  // not needed by the backward
  std::vector<float> dx(static_cast<size_t>(n)), dw(static_cast<size_t>(dim));
  for (auto _ : state) {
    mil::cpu::rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(),
                               kRows, dim, false, false);
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  }
  const double bytes = (3.0 * double(n) + 2.0 * double(dim) + double(kRows)) * sizeof(float);
  mil::bench::report(state, bytes, 10.0 * double(n), mil::bench::cpu_ceiling());
}

}  // namespace

BENCHMARK_CAPTURE(rmsnorm_forward_cpu_f32, rows16384_dim576, 576)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(rmsnorm_forward_cpu_f32, rows16384_dim4096, 4096)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(rmsnorm_backward_cpu_f32, rows16384_dim576, 576)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(rmsnorm_backward_cpu_f32, rows16384_dim4096, 4096)->Unit(benchmark::kMillisecond);
