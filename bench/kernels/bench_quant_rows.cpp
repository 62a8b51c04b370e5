// The inference product on quantised weights, cpu::quant_linear_rows, at SmolLM2-135M's decode
// shapes (MLP up 1536 x 576, down 576 x 1536, LM head 49152 x 576) at 1 row (decode), 5 rows
// (verification of speculated tokens) and 64 (a slice of a prompt), for each type it reads and
// each of its paths (AVX-512, AVX2, portable), beside the float product cpu::linear_rows on the
// same weights dequantised.
//
// Counters, besides bench::report()'s (wall-clock floors):
//   weight_GB/s: the bytes of the weights as this product reads them (the block format, or 4 per
//   float) over the time; vs_float: this case's time over linear_rows's at the same shape and rows
//   (< 1: the quantised product is faster).
// Both use the calling thread's CPU time, which a loaded machine's other processes do not inflate:
// run with OMP_NUM_THREADS=1 for these figures.
#include <benchmark/benchmark.h>

#include <ctime>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/io/dequantize.hpp>
#include <mil/kernels/linear_rows.hpp>
#include <mil/kernels/quant_rows.hpp>
#include <mil/kernels/quant_rows_q8.hpp>

#include "common/bench.hpp"

namespace {

using mil::io::GgmlType;
using mil::cpu::QuantRowsPath;

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = mil::rng::uniform(seed, 0, uint64_t(i), -1.f, 1.f);
  return v;
}

// Random quants with small positive scales (the speed does not depend on the values, only on
// them being finite).
std::vector<uint8_t> random_blocks(GgmlType type, int64_t out, int64_t in) {
  const auto info = mil::io::ggml_type_info_or_throw(type);
  std::vector<uint8_t> w(size_t(mil::io::ggml_row_bytes(type, in) * out));
  std::mt19937 gen(1);
  for (auto& b : w) b = uint8_t(gen() >> 24);
  const uint16_t scale = mil::fp16(1e-3f).bits;
  for (size_t at = 0; at < w.size(); at += size_t(info.block_bytes)) {
    const size_t d_at = type == GgmlType::Q6_K ? 208 : 0;  // Q6_K keeps d last
    std::memcpy(&w[at + d_at], &scale, 2);
    if (type == GgmlType::Q4_1 || type == GgmlType::Q4_K) std::memcpy(&w[at + 2], &scale, 2);
  }
  return w;
}

// linear_rows's time per shape and rows, for vs_float (the float cases are registered first).
std::map<std::string, double>& float_seconds() {
  static std::map<std::string, double> m;
  return m;
}
std::string key(int64_t out, int64_t in, int64_t rows) {
  return std::to_string(out) + "x" + std::to_string(in) + ":" + std::to_string(rows);
}

void finish(benchmark::State& state, double seconds, double weight_bytes, int64_t out, int64_t in,
            int64_t rows) {
  const double per_iteration = seconds / double(state.iterations());
  state.counters["weight_GB/s"] = weight_bytes / per_iteration * 1e-9;
  const auto f = float_seconds().find(key(out, in, rows));
  if (f != float_seconds().end()) state.counters["vs_float"] = per_iteration / f->second;
  const double bytes = weight_bytes + 4.0 * double(rows * in + rows * out);
  mil::bench::report(state, bytes, 2.0 * double(rows * out * in), mil::bench::cpu_ceiling());
}

// y [rows, out] = x [rows, in] W^T with W in `type`; state.range(0) = rows.
void quantised(benchmark::State& state, GgmlType type, QuantRowsPath path, int64_t out, int64_t in) {
  if (path == QuantRowsPath::avx2 && !mil::cpu::quant_rows_avx2_supported()) {
    state.SkipWithError("this CPU lacks AVX2/FMA/F16C");
    return;
  }
  if (path == QuantRowsPath::avx512 && !mil::cpu::quant_rows_avx512_supported()) {
    state.SkipWithError("this CPU lacks AVX-512F");
    return;
  }
  if (in % mil::io::ggml_type_info_or_throw(type).block_size != 0) {
    state.SkipWithError("in is not a whole number of this type's blocks (GGUF files store such "
                        "tensors in a 32-element type)");
    return;
  }
  const int64_t rows = state.range(0);
  const auto w = random_blocks(type, out, in);
  const auto x = random_floats(rows * in, 2);
  std::vector<float> y(size_t(rows * out));
  const double t0 = thread_seconds();
  for (auto _ : state) {
    mil::cpu::quant_linear_rows(type, w.data(), out, in, x.data(), rows, y.data(), false, path);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  finish(state, thread_seconds() - t0, double(w.size()), out, in, rows);
}

// The same product with x quantised to 8 bits (the option; quantisation inside the timing, as in
// a decode step), on the widest path the CPU has.
void quantised_q8(benchmark::State& state, GgmlType type, int64_t out, int64_t in) {
  const int64_t rows = state.range(0);
  const auto w = random_blocks(type, out, in);
  const auto x = random_floats(rows * in, 2);
  std::vector<float> y(size_t(rows * out));
  mil::cpu::Q8Rows xq;
  const double t0 = thread_seconds();
  for (auto _ : state) {
    xq.quantize(x.data(), rows, in);
    mil::cpu::quant_linear_rows_q8(type, w.data(), out, xq, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  finish(state, thread_seconds() - t0, double(w.size()), out, in, rows);
}

// The float product on the Q8_0 weights dequantised (the values do not change its speed).
void float_rows(benchmark::State& state, int64_t out, int64_t in) {
  const int64_t rows = state.range(0);
  const auto q = random_blocks(GgmlType::Q8_0, out, in);
  std::vector<float> w(size_t(out * in));
  mil::io::dequantize_row(GgmlType::Q8_0, q.data(), w.data(), out * in);
  const auto x = random_floats(rows * in, 2);
  std::vector<float> y(size_t(rows * out));
  const double t0 = thread_seconds();
  for (auto _ : state) {
    mil::cpu::linear_rows(y.data(), x.data(), w.data(), rows, out, in, false);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double seconds = thread_seconds() - t0;
  float_seconds()[key(out, in, rows)] = seconds / double(state.iterations());
  finish(state, seconds, 4.0 * double(out * in), out, in, rows);
}

void decode_rows(benchmark::internal::Benchmark* b) {
  b->Arg(1)->Arg(5)->Arg(64)->ArgName("rows")->Unit(benchmark::kMicrosecond);
}

}  // namespace

// Case names keep the stored results' spelling: <type>_<path>_<shape>, lower case.
#define MIL_QUANT_ROWS_CASE(name_type, type, path, name, out, in)                                \
  BENCHMARK_CAPTURE(quantised, name_type##_##path##_##name, GgmlType::type, QuantRowsPath::path, \
                    out, in)                                                                      \
      ->Apply(decode_rows)
#define MIL_QUANT_ROWS_SHAPE(name, out, in)                                   \
  BENCHMARK_CAPTURE(float_rows, f32_##name, out, in)->Apply(decode_rows);   \
  MIL_QUANT_ROWS_CASE(q8_0, Q8_0, avx512, name, out, in);                   \
  MIL_QUANT_ROWS_CASE(q4_1, Q4_1, avx512, name, out, in);                   \
  MIL_QUANT_ROWS_CASE(q4_k, Q4_K, avx512, name, out, in);                   \
  MIL_QUANT_ROWS_CASE(q6_k, Q6_K, avx512, name, out, in);                   \
  MIL_QUANT_ROWS_CASE(f16, F16, avx512, name, out, in);                     \
  MIL_QUANT_ROWS_CASE(bf16, BF16, avx512, name, out, in);                   \
  MIL_QUANT_ROWS_CASE(q8_0, Q8_0, avx2, name, out, in);                     \
  MIL_QUANT_ROWS_CASE(q4_1, Q4_1, avx2, name, out, in);                     \
  MIL_QUANT_ROWS_CASE(q4_k, Q4_K, avx2, name, out, in);                     \
  MIL_QUANT_ROWS_CASE(q6_k, Q6_K, avx2, name, out, in);                     \
  MIL_QUANT_ROWS_CASE(q8_0, Q8_0, portable, name, out, in);                 \
  MIL_QUANT_ROWS_CASE(q4_1, Q4_1, portable, name, out, in);                 \
  BENCHMARK_CAPTURE(quantised_q8, q4_1_q8act_##name, GgmlType::Q4_1, out, in)->Apply(decode_rows); \
  BENCHMARK_CAPTURE(quantised_q8, q4_k_q8act_##name, GgmlType::Q4_K, out, in)->Apply(decode_rows)

MIL_QUANT_ROWS_SHAPE(mlp_up_1536x576, 1536, 576);
MIL_QUANT_ROWS_SHAPE(mlp_down_576x1536, 576, 1536);
MIL_QUANT_ROWS_SHAPE(lm_head_49152x576, 49152, 576);
