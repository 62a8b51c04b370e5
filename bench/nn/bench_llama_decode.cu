// Inference of the SmolLM2-135M-shaped Llama and its hybrids on the GPU (bf16, random weights: the
// speed does not depend on the values): batch-1 and batched decode (CUDA graphs), and prompt
// prefill. Models: 0 = the teacher (all attention), 1 = 50% attention + Mamba-2, 2 = 50% + Mamba-1,
// 3 = 0% attention (all Mamba-2). Wall-clock time per call, host included, as a user sees it.
// Peer (docs/PERFORMANCE.md; lent H100 80GB HBM3, 2026-11-22): HF transformers decodes 31 tokens/s
// eager and 63 compiled at batch 1.
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

const char* model_name(int64_t which) {
  static const char* names[] = {"teacher", "50% mamba2", "50% mamba1", "0% mamba2"};
  return names[which];
}

const nn::HybridModel<bf16, Cuda>& smollm2_gpu(int64_t which) {
  // Never freed: they outlive every benchmark and must not be destroyed after the CUDA runtime.
  static const nn::HybridModel<bf16, Cuda>* models[4] = {};
  if (!models[which]) {
    nn::HybridConfig h = nn::all_attention(nn::LlamaConfig::smollm2_135m());
    if (which == 1 || which == 2) h.attn_layers = nn::attention_layout(h.llama.n_layers, "50%");
    if (which == 2) h.mixer = nn::MixerKind::mamba1;
    if (which == 3) h.attn_layers.clear();
    auto* m = new nn::HybridModel<bf16, Cuda>(h);
    m->init_random(1);
    models[which] = m;
  }
  return *models[which];
}

void BM_llama135m_decode(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t batch = state.range(0), context = state.range(1), graphs = state.range(2);
  const int64_t which = state.range(3);
  const auto& model = smollm2_gpu(which);
  const auto& cfg = model.config().llama;
  state.SetLabel(model_name(which));
  nn::DecoderOptions o;
  o.slots = batch;
  o.max_seq = context + 512;
  o.cuda_graphs = graphs != 0;
  nn::Decoder<bf16, Cuda> dec(model, o);
  std::vector<int32_t> slots;
  auto prefill_all = [&] {
    for (int64_t s = 0; s < batch; ++s) {
      dec.reset(s);
      dec.prefill(s, random_tokens(context, cfg.vocab, 10 + uint64_t(s)));
    }
  };
  for (int64_t s = 0; s < batch; ++s) slots.push_back(int32_t(s));
  prefill_all();
  std::vector<int32_t> next(size_t(batch), 1);
  for (int i = 0; i < 3; ++i) dec.decode(slots, next);  // eager run, capture, first replay
  int64_t steps = 0;
  for (auto _ : state) {
    if (dec.length(0) >= context + 500) {  // hybrids cannot truncate: prefill again, untimed
      state.PauseTiming();
      prefill_all();
      state.ResumeTiming();
    }
    dec.decode(slots, next);
    std::copy(dec.argmax().begin(), dec.argmax().end(), next.begin());
    ++steps;
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(steps * batch), benchmark::Counter::kIsRate);
  const double weights = 2.0 * double(model.params().numel());
  const auto& h = model.config();
  const double kv = 2.0 * 2.0 * double(int64_t(h.attn_layers.size()) * batch * (context + 250) *
                                       cfg.n_kv_heads * cfg.head_dim);
  // Mamba layers read and write their fp32 SSM state once per token.
  const double ssm = 2.0 * 4.0 * double(h.n_mamba_layers() * batch) *
                     double(h.mixer == nn::MixerKind::mamba2 ? cfg.n_heads * cfg.head_dim * cfg.head_dim
                                                             : h.d_inner() * h.mamba1_d_state);
  const double flops = 2.0 * double(model.params().numel()) * double(batch);
  // Peer: HF transformers generate, eager, 31 tokens/s at batch 1 (greedy, 256 tokens), measured
  // on the lent H100 80GB HBM3 on 2026-11-22 (docs/PERFORMANCE.md); 63 with torch.compile.
  bench::report(state, weights + kv + ssm, flops, bench::h100_bf16, batch == 1 ? 1.0 / 31 : 0);
}

void BM_llama135m_prefill(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t len = state.range(0), which = state.range(1);
  const auto& model = smollm2_gpu(which);
  const auto& cfg = model.config().llama;
  state.SetLabel(model_name(which));
  nn::DecoderOptions o;
  o.max_seq = len;
  o.max_tokens = len;
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
                       2.0 * double(model.config().attn_layers.size()) * double(len * len) *
                           double(cfg.n_heads * cfg.head_dim);
  bench::report(state, 2.0 * double(model.params().numel()), flops, bench::h100_bf16);
}

}  // namespace

BENCHMARK(BM_llama135m_decode)
    ->ArgNames({"batch", "context", "graphs", "model"})
    ->Args({1, 128, 1, 0})
    ->Args({1, 128, 0, 0})
    ->Args({1, 1024, 1, 0})
    ->Args({8, 128, 1, 0})
    ->Args({32, 512, 1, 0})
    ->Args({1, 128, 1, 1})
    ->Args({1, 1024, 1, 1})
    ->Args({32, 512, 1, 1})
    ->Args({1, 128, 1, 2})
    ->Args({1, 128, 1, 3})
    ->Args({1, 1024, 1, 3})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0);
BENCHMARK(BM_llama135m_prefill)
    ->ArgNames({"tokens", "model"})
    ->Args({128, 0})
    ->Args({512, 0})
    ->Args({2048, 0})
    ->Args({512, 1})
    ->Args({2048, 1})
    ->Args({2048, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
