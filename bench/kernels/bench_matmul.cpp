// CPU matrix product (Eigen, float): a square 512^3 case and a Linear of the 135M model
// (2048 tokens x 576 -> 1536, weight stored [out, in]).
#include <benchmark/benchmark.h>

#include <vector>

#include <mil/core/rng.hpp>
#include <mil/kernels/matmul.hpp>

#include "common/bench.hpp"

namespace {

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = mil::rng::uniform(seed, 0, uint64_t(i), -1.f, 1.f);
  return v;
}

void matmul_cpu(benchmark::State& state, mil::GemmShape s) {
  auto a = random_floats(s.batch * s.m * s.k, 1);
  auto b = random_floats(s.batch * s.k * s.n, 2);
  std::vector<float> c(size_t(s.batch * s.m * s.n));
  for (auto _ : state) {
    mil::cpu::matmul(s, c.data(), a.data(), b.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  double bytes = 4.0 * double(s.batch) * double(s.m * s.k + s.k * s.n + s.m * s.n);
  double flops = 2.0 * double(s.batch) * double(s.m) * double(s.n) * double(s.k);
  mil::bench::report(state, bytes, flops, mil::bench::cpu_ceiling());
}

}  // namespace

BENCHMARK_CAPTURE(matmul_cpu, f32_512x512x512, mil::GemmShape{512, 512, 512})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(matmul_cpu, f32_linear_2048x576_to_1536,
                  mil::GemmShape{2048, 1536, 576, false, true})
    ->Unit(benchmark::kMillisecond);
