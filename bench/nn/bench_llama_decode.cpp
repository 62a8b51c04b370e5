// Inference of SmolLM2-135M on this CPU (float weights, the step plan's row-invariant products):
// loading the teacher GGUF (skipped without models/), prompt prefill, batch-1 decode through the
// KV cache, and a verification step of k + 1 tokens (speculative decoding), whose counter
// "decode steps" is its time in batch-1 decode steps at the same context (the case for
// speculation needs it well below k + 1). Wall-clock time per call. Floor of a decode step: every
// float weight read once from memory.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include <mil/nn/decoder.hpp>
#include <mil/nn/model_load.hpp>

#include "common/bench.hpp"

using namespace mil;

namespace {

const char* kTeacher = MIL_BENCH_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

const nn::HybridModel<float, Cpu>& smollm2_cpu() {
  static const auto* model = [] {
    auto* m = new nn::HybridModel<float, Cpu>(nn::all_attention(nn::LlamaConfig::smollm2_135m()));
    m->init_random(1);
    return m;
  }();
  return *model;
}

void BM_teacher_load(benchmark::State& state) {
  if (!std::filesystem::exists(kTeacher)) {
    state.SkipWithError("teacher model not found (scripts/setup.sh downloads it)");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(nn::load_model(kTeacher));
}

void BM_llama135m_cpu_prefill(benchmark::State& state) {
  const int64_t len = state.range(0);
  const auto& model = smollm2_cpu();
  nn::DecoderOptions o;
  o.max_seq = len;
  o.max_tokens = len;
  nn::Decoder<float, Cpu> dec(model, o);
  std::vector<int32_t> prompt(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i) prompt[size_t(i)] = int32_t((i * 7919) % 49152);
  for (auto _ : state) {
    dec.reset(0);
    dec.prefill(0, prompt);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations() * len), benchmark::Counter::kIsRate);
  bench::report(state, 4.0 * double(model.params().numel()),
                2.0 * double(model.params().numel()) * double(len), bench::cpu_ceiling());
}

void BM_llama135m_cpu_decode(benchmark::State& state) {
  const int64_t context = state.range(0);
  const auto& model = smollm2_cpu();
  nn::DecoderOptions o;
  o.max_seq = context + 256;
  nn::Decoder<float, Cpu> dec(model, o);
  std::vector<int32_t> prompt(static_cast<size_t>(context), 17);
  dec.prefill(0, prompt);
  int32_t next = 1;
  const int32_t slot = 0;
  for (auto _ : state) {
    if (dec.length(0) >= context + 250) dec.truncate(0, context);
    dec.decode(std::span(&slot, 1), std::span(&next, 1));
    next = dec.argmax()[0];
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  bench::report(state, 4.0 * double(model.params().numel()), 2.0 * double(model.params().numel()),
                bench::cpu_ceiling());
}

// Seconds per batch-1 decode step at `context` (a few steps, for the verification's ratio).
double decode_step_seconds(nn::Decoder<float, Cpu>& dec, int64_t context) {
  const int32_t slot = 0, next = 5;
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    dec.truncate(0, context);
    const auto t0 = std::chrono::steady_clock::now();
    dec.decode(std::span(&slot, 1), std::span(&next, 1));
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void BM_llama135m_cpu_verify(benchmark::State& state) {
  const int64_t k1 = state.range(0), context = 64;
  const auto& model = smollm2_cpu();
  nn::DecoderOptions o;
  o.max_seq = context + k1;
  o.max_logits = k1;
  nn::Decoder<float, Cpu> dec(model, o);
  std::vector<int32_t> prompt(static_cast<size_t>(context), 17), drafts(size_t(k1), 23);
  dec.prefill(0, prompt);
  const nn::StepRow row{0, drafts, -1, nn::RowLogits::all};
  double seconds = 0;
  for (auto _ : state) {
    dec.truncate(0, context);
    const auto t0 = std::chrono::steady_clock::now();
    dec.step(std::span(&row, 1));
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double per_step = seconds / double(std::max<int64_t>(state.iterations(), 1));
  state.counters["decode steps"] = per_step / decode_step_seconds(dec, context);
  bench::report(state, 4.0 * double(model.params().numel()),
                2.0 * double(model.params().numel()) * double(k1), bench::cpu_ceiling());
}

}  // namespace

BENCHMARK(BM_teacher_load)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_llama135m_cpu_prefill)->ArgName("tokens")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_llama135m_cpu_decode)->ArgName("context")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_llama135m_cpu_verify)->ArgName("tokens")->Arg(5)->Unit(benchmark::kMillisecond)->UseRealTime();
