// Distillation loss (CE + KL at a temperature) forward + backward on the CPU (the CPU training
// path).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <mil/core/rng.hpp>
#include <mil/kernels/distill_loss.hpp>

#include "common/bench.hpp"

namespace {

using namespace mil;

// 512 tokens x SmolLM2's 49152-word vocabulary, float, gradient into its own buffer; state.range(0)
// is the temperature (1: one exponential fewer per element and pass).
void BM_distill_loss_cpu_f32(benchmark::State& state) {
  const int64_t rows = 512, vocab = 49152, distinct = 8;
  const float temperature = float(state.range(0));
  std::vector<float> student(size_t(rows * vocab)), teacher(student.size()), dstudent(student.size());
  // A few random rows repeated: the cost does not depend on the values.
  for (int64_t i = 0; i < distinct * vocab; ++i) {
    student[size_t(i)] = rng::uniform(1, 0, uint64_t(i), -8.f, 8.f);
    teacher[size_t(i)] = student[size_t(i)] + rng::uniform(2, 0, uint64_t(i), -2.f, 2.f);
  }
  for (int64_t r = distinct; r < rows; ++r) {
    std::copy_n(student.begin() + (r % distinct) * vocab, vocab, student.begin() + r * vocab);
    std::copy_n(teacher.begin() + (r % distinct) * vocab, vocab, teacher.begin() + r * vocab);
  }
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = int32_t(r * 7919 % vocab);
  std::vector<float> ce(static_cast<size_t>(rows)), kl(ce.size());
  const DistillLossParams params{temperature, 1.f / float(rows), 0.1f / float(rows), -100};
  for (auto _ : state) {
    cpu::distill_loss_forward_backward<float>(ce.data(), kl.data(), dstudent.data(), student.data(),
                                              teacher.data(), targets.data(), rows, vocab, params);
    benchmark::DoNotOptimize(dstudent.data());
    benchmark::ClobberMemory();
  }
  // Compulsory traffic: read both logits, write the gradient. ~30 FLOPs per element over the two
  // passes (maxima, 3 exponentials and their sums, the KL product, the gradient's 3 exponentials
  // and combination), counting an exp as one.
  const double elements = double(rows) * double(vocab);
  bench::report(state, 3.0 * sizeof(float) * elements, 30.0 * elements, bench::cpu_ceiling());
}
BENCHMARK(BM_distill_loss_cpu_f32)->Arg(1)->Arg(2)->ArgName("tau")->Unit(benchmark::kMillisecond);

}  // namespace
