// Inference of the SmolLM2-135M-shaped Llama and its hybrids on the GPU (bf16, random weights: the
// speed does not depend on the values): batch-1 and batched decode (CUDA graphs), and prompt
// prefill. Models: 0 = the teacher (all attention), 1 = 50% attention + Mamba-2, 2 = 50% + Mamba-1,
// 3 = 0% attention (all Mamba-2). Wall-clock time per call, host included, as a user sees it.
// Peer (docs/PERFORMANCE.md; lent H100 80GB HBM3, 2026-11-22): HF transformers decodes 31 tokens/s
// eager and 63 compiled at batch 1.
// Floor of a decode step: every weight and the cached keys and values read once from HBM.
//
// BM_llama135m_verify: the verification step of speculative decoding (gen::speculative_generate):
// each of `batch` slots holds a `context`-token prompt and gets one row of K + 1 tokens (its last
// token and K drafts) with logits for all of them, one step, CUDA graphs on as the decoder uses
// them for uniform steps. Each iteration first sends every slot back to its prompt, untimed (the
// teacher truncates its cache; a hybrid restores the Mamba states saved after the prompt) and
// waits for the device; then it times, by the wall clock with the host included, one plain decode
// step of the same slots at the same position and one verification step; the benchmark's time
// is the verification's (manual time). Counters: tokens/s (verified tokens, batch x (K + 1) per
// step), verify_us and decode_us (medians over the iterations) and steps_equiv = verify_us /
// decode_us, the verification's cost in decode steps (target: at most 1.3 at K + 1 = 5, issue 15).
// Floor of a verification step: every weight read once, the cached keys and values of each slot
// once, the Mamba states read and written once, the logits rows written; FLOPs of K + 1 rows.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <vector>

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

// The model of a case, named in its label; null, with the case skipped, without a CUDA device.
const nn::HybridModel<bf16, Cuda>* case_model(benchmark::State& state, int64_t which) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return nullptr;
  }
  state.SetLabel(model_name(which));
  return &smollm2_gpu(which);
}

// Bytes of a step's per-sequence state for `batch` sequences: the cached keys and values of `keys`
// positions read from each attention layer, and each Mamba layer's fp32 SSM state read and
// written once (for any number of tokens in the step).
double state_bytes(const nn::HybridModel<bf16, Cuda>& model, int64_t batch, int64_t keys) {
  const auto& h = model.config();
  const auto& cfg = h.llama;
  const double kv = 2.0 * 2.0 * double(int64_t(h.attn_layers.size()) * batch * keys *
                                       cfg.n_kv_heads * cfg.head_dim);
  const double ssm = 2.0 * 4.0 * double(h.n_mamba_layers() * batch) *
                     double(h.mixer == nn::MixerKind::mamba2 ? cfg.n_heads * cfg.head_dim * cfg.head_dim
                                                             : h.d_inner() * h.mamba1_d_state);
  return kv + ssm;
}

void BM_llama135m_decode(benchmark::State& state) {
  const int64_t batch = state.range(0), context = state.range(1), graphs = state.range(2);
  const auto* m = case_model(state, state.range(3));
  if (!m) return;
  const auto& model = *m;
  const auto& cfg = model.config().llama;
  nn::DecoderOptions o;
  o.slots = batch;
  o.max_seq = context + 512;
  o.cuda_graphs = graphs != 0;
  o.fused_rows = state.range(4) != 0;
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
  // The keys of the middle of the run's positions; Mamba states once per token (step).
  const double state_b = state_bytes(model, batch, context + 250);
  const double flops = 2.0 * double(model.params().numel()) * double(batch);
  // Peer: HF transformers generate, eager, 31 tokens/s at batch 1 (greedy, 256 tokens), measured
  // on the lent H100 80GB HBM3 on 2026-11-22 (docs/PERFORMANCE.md); 63 with torch.compile.
  bench::report(state, weights + state_b, flops, bench::h100_bf16, batch == 1 ? 1.0 / 31 : 0);
}

void BM_llama135m_prefill(benchmark::State& state) {
  const int64_t len = state.range(0);
  const auto* m = case_model(state, state.range(1));
  if (!m) return;
  const auto& model = *m;
  const auto& cfg = model.config().llama;
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

void BM_llama135m_verify(benchmark::State& state) {
  const int64_t batch = state.range(0), context = state.range(1), k1 = state.range(2);
  const auto* m = case_model(state, state.range(3));
  if (!m) return;
  const auto& model = *m;
  const auto& cfg = model.config().llama;
  // Graphs on (the default); hybrids go back to the state saved after the prompt (snapshot 0).
  nn::Decoder<bf16, Cuda> dec(model, {.slots = batch, .max_seq = context + 64,
                                      .max_logits = batch * k1, .snapshots = 1});
  std::vector<int32_t> slots;
  std::vector<std::vector<int32_t>> drafts;
  std::vector<nn::StepRow> rows;
  for (int64_t s = 0; s < batch; ++s) {
    slots.push_back(int32_t(s));
    dec.prefill(s, random_tokens(context, cfg.vocab, 10 + uint64_t(s)));
    dec.save_state(s);
    drafts.push_back(random_tokens(k1, cfg.vocab, 100 + uint64_t(s)));
  }
  for (int64_t s = 0; s < batch; ++s)
    rows.push_back({int32_t(s), drafts[size_t(s)], -1, nn::RowLogits::all});
  const std::vector<int32_t> next(size_t(batch), 1);
  using clock = std::chrono::steady_clock;
  // Every slot back to its prompt, as speculative decoding goes back after a rejection; then the
  // device is idle (a restore's copies would otherwise run inside the timed step).
  const auto timed = [&](auto&& run) {
    for (int64_t s = 0; s < batch; ++s) {
      if (dec.can_rewind())
        dec.truncate(s, context);
      else
        dec.restore_state(s);
    }
    MIL_CUDA_CHECK(cudaDeviceSynchronize());
    const auto t0 = clock::now();
    run();
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  const auto verify = [&] { dec.step(rows); };
  const auto decode = [&] { dec.decode(slots, next); };
  for (int i = 0; i < 3; ++i) {  // eager run, capture, first replay of each shape
    timed(verify);
    timed(decode);
  }
  std::vector<double> verify_s, decode_s;
  for (auto _ : state) {
    decode_s.push_back(timed(decode));
    verify_s.push_back(timed(verify));
    state.SetIterationTime(verify_s.back());
  }
  if (verify_s.empty()) return;
  const auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + ptrdiff_t(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  const double verify_med = median(verify_s), decode_med = median(decode_s);
  state.counters["verify_us"] = verify_med * 1e6;
  state.counters["decode_us"] = decode_med * 1e6;
  state.counters["steps_equiv"] = verify_med / decode_med;
  state.counters["tokens/s"] =
      benchmark::Counter(double(int64_t(verify_s.size()) * batch * k1), benchmark::Counter::kIsRate);
  const double weights = 2.0 * double(model.params().numel());
  const double logits = 2.0 * double(batch * k1 * cfg.vocab);
  // Products of K + 1 rows, and each row's attention over the cached keys (scores and values).
  const double flops = 2.0 * double(model.params().numel()) * double(batch * k1) +
                       4.0 * double(int64_t(model.config().attn_layers.size()) * batch * k1 *
                                    (context + k1)) * double(cfg.n_heads * cfg.head_dim);
  bench::report(state, weights + state_bytes(model, batch, context + k1) + logits, flops,
                bench::h100_bf16);
}

}  // namespace

// fused 0: DecoderOptions::fused_rows off, every step on the unfused kernels (the decode step as
// it was before the fused decode products), for a comparison in the same run.
BENCHMARK(BM_llama135m_decode)
    ->ArgNames({"batch", "context", "graphs", "model", "fused"})
    ->Args({1, 128, 1, 0, 1})
    ->Args({1, 128, 1, 0, 0})
    ->Args({1, 128, 0, 0, 1})
    ->Args({1, 1024, 1, 0, 1})
    ->Args({1, 1024, 1, 0, 0})
    ->Args({8, 128, 1, 0, 1})
    ->Args({32, 512, 1, 0, 1})
    ->Args({1, 128, 1, 1, 1})
    ->Args({1, 128, 1, 1, 0})
    ->Args({1, 1024, 1, 1, 1})
    ->Args({32, 512, 1, 1, 1})
    ->Args({1, 128, 1, 2, 1})
    ->Args({1, 128, 1, 2, 0})
    ->Args({1, 128, 1, 3, 1})
    ->Args({1, 1024, 1, 3, 1})
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
// Models 0-2 (teacher, 50% Mamba-2, 50% Mamba-1) x batch 1, 8 x context 128, 1024 x K + 1 = 2, 3,
// 5, 9: 9 rows at batch 1 leave the few-row product (up to 8 rows), as do all rows at batch 8.
BENCHMARK(BM_llama135m_verify)
    ->ArgNames({"batch", "context", "k1", "model"})
    ->ArgsProduct({{1, 8}, {128, 1024}, {2, 3, 5, 9}, {0, 1, 2}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.5);
