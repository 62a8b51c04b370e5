// DPO loss forward + backward on the CPU (the CPU training path): ag::dpo_loss on 2 pairs x 2
// sequences x 128 tokens (16 prompt, 112 answer) = 512 rows x SmolLM2's 49152-word vocabulary,
// float, sigmoid at beta 0.1.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <mil/autograd/dpo_loss.hpp>
#include <mil/core/rng.hpp>

#include "common/bench.hpp"

namespace {

using namespace mil;

void BM_dpo_loss_cpu_f32(benchmark::State& state) {
  const int64_t pairs = 2, prompt = 16, answer = 112, vocab = 49152, distinct = 8;
  const int64_t rows = pairs * 2 * (prompt + answer);
  std::vector<float> values(size_t(rows * vocab));
  // A few random rows repeated: the cost does not depend on the values.
  for (int64_t i = 0; i < distinct * vocab; ++i)
    values[size_t(i)] = rng::uniform(1, 0, uint64_t(i), -8.f, 8.f);
  for (int64_t r = distinct; r < rows; ++r)
    std::copy_n(values.begin() + (r % distinct) * vocab, vocab, values.begin() + r * vocab);
  ag::Var<float, Cpu> logits(Tensor<float, Cpu>::from(Shape{rows, vocab}, values), true);
  std::vector<int32_t> targets;
  std::vector<int64_t> offsets{0};
  std::vector<double> ref;
  for (int64_t s = 0; s < 2 * pairs; ++s) {
    targets.insert(targets.end(), size_t(prompt), -100);
    for (int64_t i = 0; i < answer; ++i) targets.push_back(int32_t(int64_t(targets.size()) * 7919 % vocab));
    offsets.push_back(int64_t(targets.size()));
    ref.push_back(-double(answer) * 11.0 + double(s % 3));
  }
  const auto target_tensor = Tensor<int32_t, Cpu>::from(Shape{rows}, targets);
  ag::Tape tape;
  for (auto _ : state) {
    logits.release_grad();
    (void)ag::dpo_loss(tape, logits, target_tensor, offsets, ref, {});
    tape.backward();
    benchmark::ClobberMemory();
  }
  // Compulsory traffic: read the logits, write the gradient (the implementation reads the logits
  // twice). ~5 FLOPs per logit and pass, three passes of the cross-entropy reference (maximum,
  // sum, gradient) in the backward call and two in the forward one.
  const double elements = double(rows) * double(vocab);
  bench::report(state, 2.0 * sizeof(float) * elements, 25.0 * elements, bench::cpu_ceiling());
}
BENCHMARK(BM_dpo_loss_cpu_f32)->Unit(benchmark::kMillisecond);

}  // namespace
