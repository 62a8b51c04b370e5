#pragma once
// The training steps of distillation on the SmolLM2-135M shape (random weights, synthetic answers):
// stage 1 of the 50% Mamba-2 hybrid (teacher forward + student forward/backward + fused CE/KL +
// AdamW on the mixers) and stage 2 (SFT of every parameter), through distill::Trainer as
// mil-distill runs them. Shared by the CPU (bench_distill_step.cpp) and GPU (.cu) benchmarks.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <unistd.h>

#include <mil/distill/student.hpp>
#include <mil/distill/trainer.hpp>

#include "common/bench.hpp"

namespace mil::bench {

// `count` sequences of seq + 1 tokens, the first quarter of each the prompt.
inline std::vector<data::LabelledSequence> synthetic_answers(int64_t count, int64_t seq, int64_t vocab) {
  std::vector<data::LabelledSequence> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    out[size_t(i)].prompt_len = int32_t(seq / 4);
    for (int64_t t = 0; t <= seq; ++t)
      out[size_t(i)].tokens.push_back(int32_t(rng::uniform(5, uint64_t(i), uint64_t(t), 0.f, float(vocab) - 1)));
  }
  return out;
}

// FLOPs of one step: 2 per weight and token for a forward, 4 for the backward of a trained weight
// (input and weight gradients), 2 for a frozen one the gradient passes through; the stage-1
// teacher (teacher_params > 0) adds its forward. Attention's score products come on top.
inline double step_flops(const nn::HybridConfig& c, int64_t student_params, int64_t trainable,
                         int64_t teacher_params, int64_t batch, int64_t seq) {
  const double tokens = double(batch * seq);
  const double products =
      tokens * (4.0 * double(student_params) + 2.0 * double(trainable) + 2.0 * double(teacher_params));
  const double attention_layers =
      3.0 * double(c.attn_layers.size()) + (teacher_params > 0 ? double(c.llama.n_layers) : 0.0);
  return products + attention_layers * 2.0 * double(batch) * double(seq * seq) *
                        double(c.llama.n_heads * c.llama.head_dim);
}

template <Element T, Device D>
void distill_step(benchmark::State& state, distill::Stage stage, const Ceiling& ceiling, double peer_tokens_per_s,
                  const std::function<void(const std::function<void()>&)>& timed) {
  const int64_t batch = state.range(0), seq = state.range(1);
  const auto llama = nn::LlamaConfig::smollm2_135m();
  nn::HybridModel<float, Cpu> teacher_host(nn::all_attention(llama));
  teacher_host.init_random(1);
  nn::HybridConfig cfg = nn::all_attention(llama);
  cfg.attn_layers = nn::attention_layout(llama.n_layers, "50%");
  const auto init = distill::init_from_attention(teacher_host, cfg, 2);
  const auto teacher = nn::convert_model<T, D>(teacher_host);
  auto student = stage == distill::Stage::distill
                     ? distill::make_student(teacher, cfg, distill::Trainable::mixers, init)
                     : nn::convert_model<T, D>(init);
  const auto data = synthetic_answers(4 * batch, seq, llama.vocab);
  distill::TrainOptions o;
  o.stage = stage;
  o.steps = 1'000'000;  // never done: no final checkpoint inside the timing
  o.micro_batch = batch;
  o.seq_len = seq;
  const auto dir = std::filesystem::temp_directory_path() / ("mil_bench_distill_" + std::to_string(getpid()));
  distill::Trainer<T, D> trainer(student, stage == distill::Stage::distill ? &teacher : nullptr, data, o, dir);
  distill::StepMetrics m;
  timed([&] { m = trainer.step(); });
  const double tokens = double(batch * seq);
  int64_t student_params = 0;
  for (const auto& p : nn::parameter_table(cfg)) student_params += p.shape.numel();
  const bool stage1 = stage == distill::Stage::distill;
  const double flops = step_flops(cfg, student_params, student.params().trainable_numel(),
                                  stage1 ? teacher.params().numel() : 0, batch, seq);
  // Compulsory traffic: the logits (student, teacher) written and read once, and their gradient.
  const double bytes = 3.0 * tokens * double(llama.vocab) * sizeof(T);
  report(state, bytes, flops, ceiling, peer_tokens_per_s > 0 ? tokens / peer_tokens_per_s : 0);
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["loss"] = m.loss;
  std::filesystem::remove_all(dir);
}

}  // namespace mil::bench
