// Opening the teacher GGUF (skipped without models/): the header and tensor directory only, which
// should cost the same whatever the size of the weights behind them. Loading the weights into a
// model is BM_teacher_load (bench/nn/bench_llama_decode.cpp).
#include <benchmark/benchmark.h>

#include <filesystem>

#include <mil/io/gguf.hpp>

namespace {

using namespace mil;

const char* kTeacher = MIL_BENCH_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

void BM_gguf_open_teacher(benchmark::State& state) {
  if (!std::filesystem::exists(kTeacher)) {
    state.SkipWithError("teacher model not found (scripts/setup.sh downloads it)");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(io::GgufFile::open(kTeacher));
}
BENCHMARK(BM_gguf_open_teacher)->Unit(benchmark::kMillisecond);

}  // namespace
