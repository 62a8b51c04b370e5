// Distillation steps on the CPU (float): stage 1 of the 50% hybrid of SmolLM2-135M and stage 2, at
// the small batches a CPU run uses. docs/PERFORMANCE.md has the figures.
#include "distill/distill_step.hpp"

namespace {

void run_on_cpu(benchmark::State& state, const std::function<void()>& step) {
  step();  // warm-up: buffers, threads
  for (auto _ : state) step();
}

void BM_distill_stage1_cpu(benchmark::State& state) {
  mil::bench::distill_step<float, mil::Cpu>(state, mil::distill::Stage::distill, mil::bench::cpu_ceiling(), 0,
                                            [&](const auto& step) { run_on_cpu(state, step); });
}
void BM_distill_stage2_cpu(benchmark::State& state) {
  mil::bench::distill_step<float, mil::Cpu>(state, mil::distill::Stage::sft, mil::bench::cpu_ceiling(), 0,
                                            [&](const auto& step) { run_on_cpu(state, step); });
}

}  // namespace

BENCHMARK(BM_distill_stage1_cpu)->Args({2, 128})->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_distill_stage2_cpu)->Args({2, 128})->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
