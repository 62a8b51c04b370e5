// Inference of the SmolLM2-135M-shaped Llama on the GPU (bf16, random weights: the speed does not
// depend on the values): batch-1 and batched decode through the KV cache (CUDA graphs), and prompt
// prefill. Wall-clock time per call, host included, as a user sees it. Peer (issue 3, same card):
// HF transformers decodes 31 tokens/s eager and 63 compiled at batch 1.
// Floor of a decode step: every weight and the cached keys and values read once from HBM.
#include <benchmark/benchmark.h>

#include <mil/nn/decoder.hpp>

#include "common/bench.hpp"

using namespace mil;

namespace {

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t(rng::uniform(seed, 0, uint64_t(i), 0.f, float(vocab)));
  return t;
}

const nn::LlamaModel<bf16, Cuda>& smollm2_gpu() {
  // Never freed: it outlives every benchmark and must not be destroyed after the CUDA runtime.
  static const auto* model = [] {
    auto* m = new nn::LlamaModel<bf16, Cuda>(nn::LlamaConfig::smollm2_135m());
    m->init_random(1);
    return m;
  }();
  return *model;
}

void BM_llama135m_decode(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t batch = state.range(0), context = state.range(1), graphs = state.range(2);
  const auto& model = smollm2_gpu();
  const auto& cfg = model.config();
  nn::DecoderOptions o;
  o.slots = batch;
  o.max_seq = context + 512;
  o.cuda_graphs = graphs != 0;
  nn::Decoder<bf16, Cuda> dec(model, o);
  std::vector<int32_t> slots;
  for (int64_t s = 0; s < batch; ++s) {
    slots.push_back(int32_t(s));
    dec.prefill(s, random_tokens(context, cfg.vocab, 10 + uint64_t(s)));
  }
  std::vector<int32_t> next(size_t(batch), 1);
  for (int i = 0; i < 3; ++i) dec.decode(slots, next);  // eager run, capture, first replay
  int64_t steps = 0;
  for (auto _ : state) {
    if (dec.length(0) >= context + 500)
      for (int64_t s = 0; s < batch; ++s) dec.truncate(s, context);
    dec.decode(slots, next);
    std::copy(dec.argmax().begin(), dec.argmax().end(), next.begin());
    ++steps;
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(steps * batch), benchmark::Counter::kIsRate);
  const double weights = 2.0 * double(model.params().numel());
  const double kv = 2.0 * 2.0 * double(cfg.n_layers * batch * (context + 250) * cfg.n_kv_heads *
                                       cfg.head_dim);
  const double flops = 2.0 * double(model.params().numel()) * double(batch);
  bench::report(state, weights + kv, flops, bench::h100_bf16, batch == 1 ? 1.0 / 31 : 0);
}

void BM_llama135m_prefill(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t len = state.range(0);
  const auto& model = smollm2_gpu();
  const auto& cfg = model.config();
  nn::DecoderOptions o;
  o.max_seq = len;
  o.max_chunk = len;
  nn::Decoder<bf16, Cuda> dec(model, o);
  const auto prompt = random_tokens(len, cfg.vocab, 3);
  dec.prefill(0, prompt);
  for (auto _ : state) {
    dec.reset(0);
    dec.prefill(0, prompt);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations() * len), benchmark::Counter::kIsRate);
  const double n = double(model.params().numel()) - double(cfg.vocab * cfg.d_model);  // head: 1 row
  const double flops = 2.0 * n * double(len) + 2.0 * double(cfg.vocab * cfg.d_model) +
                       2.0 * double(cfg.n_layers) * double(len * len) *
                           double(cfg.n_heads * cfg.head_dim);
  bench::report(state, 2.0 * double(model.params().numel()), flops, bench::h100_bf16);
}

}  // namespace

BENCHMARK(BM_llama135m_decode)
    ->ArgNames({"batch", "context", "graphs"})
    ->Args({1, 128, 1})
    ->Args({1, 128, 0})
    ->Args({1, 1024, 1})
    ->Args({8, 128, 1})
    ->Args({32, 512, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0);
BENCHMARK(BM_llama135m_prefill)
    ->ArgName("tokens")
    ->Arg(128)
    ->Arg(512)
    ->Arg(2048)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
