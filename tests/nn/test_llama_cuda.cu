// The Llama model through the autograd on the GPU (bf16) against the CPU (float) from the same
// initial weights: logits, loss and every parameter gradient.
#include <doctest/doctest.h>

#include <mil/nn/hybrid.hpp>
#include <mil/optim/adamw.hpp>

#include "common/compare.hpp"
#include "common/gpu.hpp"

using namespace mil;

namespace {
nn::LlamaConfig gpu_config() {
  nn::LlamaConfig c;
  c.vocab = 301;
  c.d_model = 128;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.d_ff = 200;
  return c;
}
}  // namespace

TEST_CASE("llama cuda: bf16 forward and backward agree with the float CPU model") {
  MIL_GPU_TEST_GUARD();
  auto cfg = gpu_config();
  nn::HybridModel<float, Cpu> cpu_model(nn::all_attention(cfg));
  nn::HybridModel<bf16, Cuda> gpu_model(nn::all_attention(cfg));
  cpu_model.init_random(11, 0.05f);
  gpu_model.init_random(11, 0.05f);
  // The CPU model uses the bf16-rounded weights, so only the arithmetic differs.
  auto rounded = gpu_model.params().values().to_vector();
  for (int64_t i = 0; i < cpu_model.params().numel(); ++i) cpu_model.params().values()[i] = float(rounded[size_t(i)]);

  const int64_t batch = 2, seq = 37;
  std::vector<int32_t> ids(batch * seq), targets(batch * seq);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t(rng::uniform(5, 0, i, 0.f, float(cfg.vocab)));
    targets[i] = i % 7 == 3 ? -100 : int32_t(rng::uniform(6, 0, i, 0.f, float(cfg.vocab)));
  }
  auto cpu_ids = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, ids);
  auto cpu_targets = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, targets);

  ag::Tape cpu_tape;
  auto cpu_logits = cpu_model.forward(cpu_tape, cpu_ids, nn::sequence_positions<Cpu>(batch, seq), batch, seq);
  auto cpu_logits_values = cpu_logits.value().to_vector();
  auto cpu_loss = ag::cross_entropy(cpu_tape, cpu_logits, cpu_targets);
  cpu_tape.backward();
  cpu_model.params().finish_backward();

  ag::Tape gpu_tape;
  auto gpu_logits = gpu_model.forward(gpu_tape, cpu_ids.to<Cuda>(), nn::sequence_positions<Cuda>(batch, seq), batch, seq);
  test::require_close("logits", gpu_logits.value().to_vector(), cpu_logits_values, 1e-2);
  {  // Without recording (no saved log-sum-exp rows) the forward computes the same logits.
    ag::Tape eval_tape;
    ag::NoGrad no_grad(eval_tape);
    auto eval_logits = gpu_model.forward(eval_tape, cpu_ids.to<Cuda>(), nn::sequence_positions<Cuda>(batch, seq), batch, seq);
    CHECK(eval_tape.size() == 0);
    CHECK(test::bytes_of(eval_logits.value().to_vector()) == test::bytes_of(gpu_logits.value().to_vector()));
  }
  auto gpu_loss = ag::cross_entropy(gpu_tape, gpu_logits, cpu_targets.to<Cuda>());
  CHECK(gpu_loss.mean() == doctest::Approx(cpu_loss.mean()).epsilon(1e-2));
  gpu_tape.backward();
  gpu_model.params().finish_backward();

  for (const auto& e : cpu_model.params().entries()) {
    const auto& g = gpu_model.params()[e.name];
    test::require_close("grad " + e.name, g.grad().to_vector(), e.var.grad().to_vector(), 2e-2);
  }

  // One optimizer step on each: bf16 parameters follow their fp32 masters.
  optim::AdamW<bf16, Cuda> opt(gpu_model.params(), {});
  auto r = opt.step(1e-3f);
  CHECK_FALSE(r.skipped);
  CHECK(r.grad_norm > 0);
}
