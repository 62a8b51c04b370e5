// Softmax cross-entropy forward + backward on the CPU (the CPU training path).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/kernels/cross_entropy.hpp>

#include "common/bench.hpp"

namespace {

using namespace mil;

// 512 tokens x SmolLM2's 49152-word vocabulary, float, gradient into its own buffer.
void BM_cross_entropy_cpu_f32(benchmark::State& state) {
  const int64_t rows = 512, vocab = 49152, distinct = 8;
  std::vector<float> logits(size_t(rows * vocab)), dlogits(logits.size());
  // A few random rows repeated: the cost does not depend on the values.
  for (int64_t i = 0; i < distinct * vocab; ++i)
    logits[size_t(i)] = rng::uniform(1, 0, uint64_t(i), -8.f, 8.f);
  for (int64_t r = distinct; r < rows; ++r)
    std::copy_n(logits.begin() + (r % distinct) * vocab, vocab, logits.begin() + r * vocab);
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = int32_t(r * 7919 % vocab);
  std::vector<float> losses(static_cast<size_t>(rows));
  for (auto _ : state) {
    cpu::cross_entropy_forward_backward<float>(losses.data(), dlogits.data(), logits.data(),
                                               targets.data(), rows, vocab, 1.f / float(rows));
    benchmark::DoNotOptimize(dlogits.data());
    benchmark::ClobberMemory();
  }
  // Compulsory traffic: read the logits, write the gradient. ~10 FLOPs per logit (max, exp and
  // sum, normalise, scale), counting an exp as one.
  const double elements = double(rows) * double(vocab);
  bench::report(state, 2.0 * sizeof(float) * elements, 10.0 * elements, bench::cpu_ceiling());
}
BENCHMARK(BM_cross_entropy_cpu_f32)->Unit(benchmark::kMillisecond);

}  // namespace
