// The pseudo-labeller on the GPU (bf16 teacher): a run repeated on the same device gives the same
// files, and the stored top-k log-probabilities follow the teacher's distribution, checked by a
// float CPU forward on the same rounded weights over each labelled sequence.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <mil/data/pseudo_labels.hpp>

#include "common/gpu.hpp"
#include "data/files.hpp"

using namespace mil;
namespace fs = std::filesystem;

TEST_CASE("pseudo labels cuda: bf16 labels repeat and follow the teacher") {
  MIL_GPU_TEST_GUARD();
  nn::LlamaConfig cfg;
  cfg.vocab = 301;
  cfg.d_model = 128;
  cfg.n_layers = 3;
  cfg.n_heads = 6;
  cfg.n_kv_heads = 2;
  cfg.head_dim = 64;  // the flash-attention path for a fresh prompt alone in its step
  cfg.d_ff = 200;
  nn::HybridModel<float, Cpu> cpu_model(nn::all_attention(cfg));
  // Weights of scale 0.1: at 0.3 this random model is chaotic (rounding its weights to bf16 alone
  // moves a float log-prob by 1.2), at 0.1 by 0.03, while reading a neighbouring position's
  // logits moves it by up to 4.6: the bounds below tell bf16 noise from a bug.
  cpu_model.init_random(5, 0.1f);
  const auto gpu_model = nn::convert_model<bf16, Cuda>(cpu_model);
  cpu_model = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(cpu_model));

  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < 10; ++i) {
    std::vector<int32_t> p;
    for (int64_t t = 0; t < 1 + (i * 37) % 90; ++t) p.push_back(int32_t(4 + (i * 13 + t * 7) % 297));
    prompts.push_back(p);
  }
  const std::vector<int32_t> stop = {1, 2};
  data::LabelConfig c;
  c.seed = 3;
  c.slots = 4;
  c.max_prompt = 96;
  c.max_answer = 16;
  c.max_step_tokens = 64;  // long prompts run in chunks beside decode rows
  c.sequences_per_shard = 4;
  c.store_topk = 10;       // = the sampler's top-k: every sampled token is among them
  c.progress = false;
  data::DatasetManifest id;
  id.teacher_name = "small random";
  id.teacher_sha256 = util::sha256_hex("small random");
  id.tokenizer_fingerprint = util::sha256_hex("small tokenizer");
  id.chat_template = "chatml";
  const fs::path a = test::scratch_path("pseudo_labels_cuda_a");
  const fs::path b = test::scratch_path("pseudo_labels_cuda_b");
  data::label_prompts(gpu_model, prompts, stop, c, a, id);
  data::label_prompts(gpu_model, prompts, stop, c, b, id);
  for (const auto& e : fs::directory_iterator(a)) {
    CAPTURE(e.path().filename().string());
    CHECK(test::read_bytes(e.path()) == test::read_bytes(b / e.path().filename()));
  }

  const data::TokenDataset ds = data::read_token_dataset(a);
  CHECK(ds.manifest.compute == "cuda bf16");
  REQUIRE(ds.sequences.size() == prompts.size());
  double worst = 0, sum = 0;
  int64_t count = 0;
  for (size_t i = 0; i < ds.sequences.size(); ++i) {
    CAPTURE(i);
    const data::LabelledSequence& s = ds.sequences[i];
    REQUIRE(std::equal(prompts[i].begin(), prompts[i].end(), s.tokens.begin()));
    ag::Tape tape;
    ag::NoGrad ng(tape);
    const int64_t n = int64_t(s.tokens.size());
    const auto ids = Tensor<int32_t, Cpu>::from(Shape{n}, s.tokens);
    const auto logits =
        cpu_model.forward(tape, ids, nn::sequence_positions<Cpu>(1, n), 1, n).value().to_vector();
    for (int64_t j = 0; j < s.answer_len(); ++j) {
      const float* row = logits.data() + (s.prompt_len - 1 + j) * cfg.vocab;
      const double top = *std::max_element(row, row + cfg.vocab);
      double z = 0;
      for (int64_t v = 0; v < cfg.vocab; ++v) z += std::exp(double(row[v]) - top);
      const double log_z = top + std::log(z);
      bool sampled_in_top = false;
      for (int32_t r = 0; r < c.store_topk; ++r) {
        const size_t e = size_t(j * c.store_topk + r);
        const double err = std::abs(s.topk_logprobs[e] - (row[s.topk_ids[e]] - log_z));
        worst = std::max(worst, err);
        sum += err;
        ++count;
        sampled_in_top |= s.topk_ids[e] == s.tokens[size_t(s.prompt_len + j)];
      }
      CHECK(sampled_in_top);
    }
  }
  MESSAGE("top-k log-prob difference, GPU bf16 against CPU float: largest " << worst << ", mean "
                                                                          << sum / double(count));
  CHECK(worst < 0.3);
  CHECK(sum / double(count) < 0.05);
  fs::remove_all(a);
  fs::remove_all(b);
}
