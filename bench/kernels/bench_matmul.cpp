// CPU matrix products (float): Eigen's GEMM (cpu::matmul: a square 512^3 case and a Linear of the
// 135M model, 2048 tokens x 576 -> 1536) and the inference product cpu::linear_rows at decode,
// verification and prefill row counts for SmolLM2's LM head (49152 x 576) and MLP (1536 x 576,
// 576 x 1536), beside cpu::matmul on the same shapes.
//
// Counters, besides bench::report()'s (wall-clock floors):
//   vs_1row: this case's time over the 1-row case of the same product and shape;
//   weight_GB/s and mem_floor/time: the weight bytes over the time, and the time a read of them at
//   one thread's DRAM read bandwidth (measured once: a sum over 256 MiB) takes over the time.
// Both use the calling thread's CPU time, which a loaded machine's other processes do not inflate:
// run with OMP_NUM_THREADS=1 for these figures.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <string>
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

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
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

// Bytes per second one thread reads from DRAM: the best of 3 sums over 256 MiB, CPU time.
double read_bandwidth() {
  static const double bytes_per_s = [] {
    const std::vector<float> a = random_floats(int64_t(1) << 26, 3);
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      const double t0 = thread_seconds();
      float sum[16] = {};
      for (size_t i = 0; i < a.size(); i += 16)
        for (int l = 0; l < 16; ++l) sum[l] += a[i + size_t(l)];
      benchmark::DoNotOptimize(sum);
      best = std::min(best, thread_seconds() - t0);
    }
    return double(a.size() * sizeof(float)) / best;
  }();
  return bytes_per_s;
}

enum class Product { linear_rows, eigen };

// y [rows, out] = x [rows, in] W^T, W [out, in]; state.range(0) = rows.
void linear(benchmark::State& state, Product product, int64_t out, int64_t in) {
  const int64_t rows = state.range(0);
  auto w = random_floats(out * in, 1);
  auto x = random_floats(rows * in, 2);
  std::vector<float> y(size_t(rows * out));
  const mil::GemmShape s{rows, out, in, false, true};
  const double t0 = thread_seconds();
  for (auto _ : state) {
    if (product == Product::linear_rows)
      mil::cpu::linear_rows(y.data(), x.data(), w.data(), rows, out, in, false);
    else
      mil::cpu::matmul(s, y.data(), x.data(), w.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double per_iteration = (thread_seconds() - t0) / double(state.iterations());
  // The 1-row case of each product and shape runs first (registration order).
  static std::map<std::string, double> one_row;
  const std::string key = std::to_string(int(product)) + ":" + std::to_string(out) + "x" + std::to_string(in);
  if (rows == 1) one_row[key] = per_iteration;
  if (one_row.count(key)) state.counters["vs_1row"] = per_iteration / one_row[key];
  const double weight_bytes = 4.0 * double(out * in);
  state.counters["weight_GB/s"] = weight_bytes / per_iteration * 1e-9;
  state.counters["mem_floor/time"] = weight_bytes / read_bandwidth() / per_iteration;
  double bytes = 4.0 * double(out * in + rows * in + rows * out);
  double flops = 2.0 * double(rows) * double(out) * double(in);
  mil::bench::report(state, bytes, flops, mil::bench::cpu_ceiling());
}

void row_counts(benchmark::internal::Benchmark* b) {
  for (int64_t rows : {1, 2, 5, 8, 32, 512}) b->Arg(rows);
  b->ArgName("rows")->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK_CAPTURE(matmul_cpu, f32_512x512x512, mil::GemmShape{512, 512, 512})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(matmul_cpu, f32_linear_2048x576_to_1536,
                  mil::GemmShape{2048, 1536, 576, false, true})
    ->Unit(benchmark::kMillisecond);

BENCHMARK_CAPTURE(linear, linear_rows_lm_head_49152x576, Product::linear_rows, 49152, 576)
    ->Apply(row_counts);
BENCHMARK_CAPTURE(linear, eigen_lm_head_49152x576, Product::eigen, 49152, 576)->Apply(row_counts);
BENCHMARK_CAPTURE(linear, linear_rows_mlp_up_1536x576, Product::linear_rows, 1536, 576)
    ->Apply(row_counts);
BENCHMARK_CAPTURE(linear, eigen_mlp_up_1536x576, Product::eigen, 1536, 576)->Apply(row_counts);
BENCHMARK_CAPTURE(linear, linear_rows_mlp_down_576x1536, Product::linear_rows, 576, 1536)
    ->Apply(row_counts);
BENCHMARK_CAPTURE(linear, eigen_mlp_down_576x1536, Product::eigen, 576, 1536)->Apply(row_counts);
