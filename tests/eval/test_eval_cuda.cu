// eval/ on the GPU (bf16): teacher-relative metrics against the float CPU run on the same rounded
// weights, a model against itself, and passkey and greedy answers through the GPU decoder.
#include <doctest/doctest.h>

#include <cmath>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <mil/eval/passkey.hpp>
#include <mil/eval/teacher_relative.hpp>

#include "eval/byte_tokenizer.hpp"
#include "common/gpu.hpp"

using namespace mil;

namespace {

// Head dim 64: the size the SSD kernels are built for. Vocabulary: the byte tokenizer's.
nn::HybridConfig gpu_hybrid(std::vector<int64_t> attn_layers) {
  nn::HybridConfig h;
  h.llama.vocab = 258;
  h.llama.d_model = 256;
  h.llama.n_layers = 3;
  h.llama.n_heads = 4;
  h.llama.n_kv_heads = 2;
  h.llama.head_dim = 64;
  h.llama.d_ff = 200;
  h.attn_layers = std::move(attn_layers);
  return h;
}

// The same weights as bf16 on the GPU and, rounded to bf16, as float on the CPU.
struct Pair {
  nn::HybridModel<float, Cpu> cpu;
  nn::HybridModel<bf16, Cuda> gpu;
};
Pair make_pair(const nn::HybridConfig& h, uint64_t seed) {
  nn::HybridModel<float, Cpu> m(h);
  m.init_random(seed, 0.1f);
  return {nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(m)), nn::convert_model<bf16, Cuda>(m)};
}

std::vector<data::LabelledSequence> sequences() {
  std::vector<data::LabelledSequence> out;
  for (int64_t n : {40, 17, 64, 33}) {
    data::LabelledSequence s;
    s.prompt_len = int32_t(n / 3);
    for (int64_t t = 0; t < n; ++t) s.tokens.push_back(int32_t((n * 37 + t * 11 + t * t) % 258));
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

TEST_CASE("teacher_relative cuda: bf16 metrics follow the float CPU run") {
  MIL_GPU_TEST_GUARD();
  auto teacher = make_pair(nn::all_attention(gpu_hybrid({}).llama), 1);
  auto model = make_pair(gpu_hybrid({1}), 2);
  const auto seqs = sequences();
  const eval::EvalOptions o{.max_len = 48, .batch_tokens = 100, .on_progress = {}};
  const auto cpu = eval::teacher_relative(teacher.cpu, model.cpu, seqs, o);
  const auto gpu = eval::teacher_relative(teacher.gpu, model.gpu, seqs, o);
  MESSAGE("cpu nll " << cpu.teacher_nll << " / " << cpu.model_nll << " kl " << cpu.kl << " top-1 "
                     << cpu.top1_agreement << "; gpu nll " << gpu.teacher_nll << " / " << gpu.model_nll
                     << " kl " << gpu.kl << " top-1 " << gpu.top1_agreement);
  CHECK(gpu.tokens == cpu.tokens);
  CHECK(gpu.sequences == cpu.sequences);
  CHECK(gpu.teacher_nll == doctest::Approx(cpu.teacher_nll).epsilon(1e-2));
  CHECK(gpu.model_nll == doctest::Approx(cpu.model_nll).epsilon(1e-2));
  CHECK(gpu.kl == doctest::Approx(cpu.kl).epsilon(5e-2));
  CHECK(std::abs(gpu.top1_agreement - cpu.top1_agreement) <= 0.1);
  CHECK(cpu.kl > 0);

  const auto self = eval::teacher_relative(model.gpu, model.gpu, seqs, o);
  CHECK(self.ppl_ratio == 1.0);
  CHECK(self.kl == 0.0);
  CHECK(self.top1_agreement == 1.0);
}

TEST_CASE("passkey cuda: prompts and greedy answers through the GPU decoder") {
  MIL_GPU_TEST_GUARD();
  auto model = make_pair(gpu_hybrid({1}), 3);
  const auto tok = test::byte_tokenizer();
  eval::PasskeyOptions o;
  o.train_len = 300;
  o.multiples = {1, 2};
  o.trials = 2;
  const auto scores = eval::passkey_accuracy(model.gpu, tok, o);
  REQUIRE(scores.size() == 2);
  CHECK(scores[1].length == 600);
  for (const auto& s : scores) CHECK(s.trials == 2);

  const std::vector<std::string> prompts = {"Hello there, how are", "The sky is"};
  const auto answers = eval::greedy_answers(model.gpu, tok, std::nullopt, prompts, 12);
  REQUIRE(answers.size() == 2);
  CHECK(eval::greedy_answers(model.gpu, tok, std::nullopt, std::span(prompts).last(1), 12)[0] == answers[1]);
}
