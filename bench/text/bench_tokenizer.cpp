// SmolLM2's tokenizer (read from the teacher GGUF; skipped without models/) on long runs of one
// character: each is a single huge word for the merge loop, the case where a quadratic encoder
// would show. The tests check these inputs round-trip and bound the merge loop's work; the time
// is measured here.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <string>

#include <mil/text/gguf_tokenizer.hpp>

namespace {

using namespace mil;

const char* kTeacher = MIL_BENCH_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

const text::Tokenizer* smollm2_tokenizer() {
  static const std::unique_ptr<text::Tokenizer> tok = []() -> std::unique_ptr<text::Tokenizer> {
    if (!std::filesystem::exists(kTeacher)) return nullptr;
    return std::make_unique<text::Tokenizer>(
        text::tokenizer_data_from_gguf(io::GgufFile::open(kTeacher)));
  }();
  return tok.get();
}

// range(0): which character; range(1): how many of it.
void BM_tokenizer_encode_run(benchmark::State& state) {
  const text::Tokenizer* tok = smollm2_tokenizer();
  if (!tok) {
    state.SkipWithError("teacher model not found (scripts/setup.sh downloads it)");
    return;
  }
  const std::string s(size_t(state.range(1)), char(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(tok->encode(s));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(s.size()));
}
BENCHMARK(BM_tokenizer_encode_run)
    ->Args({'a', 100000})
    ->Args({'_', 50000})
    ->Args({' ', 50000})
    ->Args({'1', 30000})
    ->Unit(benchmark::kMillisecond);

}  // namespace
