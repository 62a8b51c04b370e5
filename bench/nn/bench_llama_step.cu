// A whole training step of the SmolLM2-135M-shaped Llama on the GPU (bf16, random weights):
// forward, cross-entropy, backward, AdamW. docs/PERFORMANCE.md's peer: HF transformers + PyTorch, bf16,
// SDPA, 129k tokens/s at B16 x T1024. Floor: ~6 FLOPs per parameter per token for the products
// plus attention, at the bf16 tensor-core peak.
#include <benchmark/benchmark.h>

#include <mil/nn/hybrid.hpp>
#include <mil/optim/adamw.hpp>

#include "common/bench.hpp"
#include "common/cuda_timer.cuh"

using namespace mil;

namespace {

void BM_llama135m_train_step(benchmark::State& state) {
  if (mil::cuda::device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t batch = state.range(0), seq = state.range(1);
  auto cfg = nn::LlamaConfig::smollm2_135m();
  nn::HybridModel<bf16, Cuda> model(nn::all_attention(cfg));
  model.init_random(1);
  optim::AdamW<bf16, Cuda> opt(model.params(), {.weight_decay = 0.01f, .max_grad_norm = 1.0f});
  std::vector<int32_t> ids(size_t(batch * seq)), targets(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t(rng::uniform(2, 0, i, 0.f, float(cfg.vocab)));
    targets[i] = int32_t(rng::uniform(3, 0, i, 0.f, float(cfg.vocab)));
  }
  auto ids_d = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, ids).to<Cuda>();
  auto targets_d = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, targets).to<Cuda>();
  auto pos = nn::sequence_positions<Cuda>(batch, seq);
  double loss = 0;
  bench::time_cuda(state, [&](int) {
    ag::Tape tape;
    auto l = ag::cross_entropy(tape, model.forward(tape, ids_d, pos, batch, seq), targets_d);
    tape.backward();
    opt.step(1e-4f);
    loss = l.mean();
  }, 2);
  const double tokens = double(batch * seq);
  const double n_params = double(model.params().numel());
  const double attn_flops = 6.0 * 2.0 * double(cfg.n_layers) * double(batch) * double(seq * seq) *
                            double(cfg.n_heads * cfg.head_dim);  // causal half of fwd 4 + bwd 8
  const double flops = 6.0 * n_params * tokens + attn_flops;
  // Weights, gradients and optimizer state once, plus the logits and their gradient.
  const double bytes = 28.0 * n_params + 2.0 * 2.0 * 2.0 * tokens * double(cfg.vocab);
  bench::report(state, bytes, flops, bench::h100_bf16);
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  // Peer: HF transformers + PyTorch (bf16, SDPA attention, AdamW), 129k tokens/s at B16 x T1024,
  // measured on the lent H100 80GB HBM3 on 2026-11-22 (docs/PERFORMANCE.md).
  state.counters["peer/time"] = benchmark::Counter(tokens / 129e3, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["loss"] = loss;
  mil::cuda::CachingAllocator::instance().release_cached();
}

}  // namespace

BENCHMARK(BM_llama135m_train_step)->Args({16, 1024})->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);
