// On-policy preference pairs on the GPU (bf16 student, teacher and reference): a run repeated on
// the same device gives the same files, and the stored reference log-probabilities follow the
// teacher, checked by a float CPU forward on the same rounded weights over each pair.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <mil/data/preference_pairs.hpp>

#include "common/gpu.hpp"
#include "data/small_models.hpp"
#include "data/files.hpp"

using namespace mil;
namespace fs = std::filesystem;

TEST_CASE("preference pairs cuda: bf16 pairs repeat and follow the reference") {
  MIL_GPU_TEST_GUARD();
  nn::LlamaConfig cfg;
  cfg.vocab = 301;
  cfg.d_model = 128;
  cfg.n_layers = 2;
  cfg.n_heads = 2;
  cfg.n_kv_heads = 1;
  cfg.head_dim = 64;
  cfg.d_ff = 200;
  nn::HybridModel<float, Cpu> cpu_teacher(nn::all_attention(cfg));
  // Weight scale 0.1: at 0.3 such a random model is chaotic (bf16 rounding of its weights alone
  // moves a log-prob by more than 1, and this check read 0.18 per token on an H100).
  cpu_teacher.init_random(5, 0.1f);
  nn::HybridConfig h;
  h.llama = cfg;
  h.attn_layers = nn::attention_layout(cfg.n_layers, "50%");  // the student's layer 0 is Mamba
  nn::HybridModel<float, Cpu> cpu_student(h);
  cpu_student.init_random(6, 0.1f);
  const auto teacher = nn::convert_model<bf16, Cuda>(cpu_teacher);
  const auto student = nn::convert_model<bf16, Cuda>(cpu_student);
  cpu_teacher = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(cpu_teacher));

  // Labels: prompts of 1 to 60 tokens, answers of 1 to 12, every other one ending in a stop.
  data::DatasetManifest lm;
  lm.teacher_name = "small random";
  lm.teacher_sha256 = util::sha256_hex("small random");
  lm.tokenizer_fingerprint = util::sha256_hex("small tokenizer");
  lm.vocab_size = cfg.vocab;
  lm.chat_template = "chatml";
  lm.max_prompt = 64;
  lm.max_answer = 16;
  lm.stop_ids = {1};
  lm.sequences_per_shard = 8;
  lm.prompt_count = 10;
  lm.prompts_sha256 = util::sha256_hex("prompts");
  const fs::path labels_dir = test::scratch_path("pairs_cuda_labels");
  {
    data::TokenDatasetWriter w(labels_dir, lm);
    for (int64_t i = 0; i < 10; ++i) {
      data::LabelledSequence s;
      s.prompt_len = int32_t(1 + (i * 37) % 60);
      for (int64_t t = 0; t < s.prompt_len + 1 + (i * 5) % 12; ++t)
        s.tokens.push_back(int32_t(4 + (i * 13 + t * 7) % 297));
      if (i % 2 == 0) s.tokens.push_back(1);
      w.add(i, s);
    }
    w.finish();
  }
  const data::TokenDataset labels = data::read_token_dataset(labels_dir);
  data::PairConfig c;
  c.seed = 3;
  c.slots = 4;
  c.samples_per_prompt = 2;
  c.max_answer = 12;
  c.max_step_tokens = 48;  // long prompts run in chunks beside decode rows
  c.pairs_per_shard = 4;
  c.progress = false;
  data::PairIdentity id;
  id.student_name = "small student";
  id.student_sha256 = util::sha256_hex("small student");
  id.student_tokenizer = lm.tokenizer_fingerprint;
  const fs::path a = test::scratch_path("pairs_cuda_a"), b = test::scratch_path("pairs_cuda_b");
  data::make_preference_pairs(student, teacher, labels, c, a, id);
  data::make_preference_pairs(student, teacher, labels, c, b, id);
  for (const auto& e : fs::directory_iterator(a)) {
    CAPTURE(e.path().filename().string());
    CHECK(test::read_bytes(e.path()) == test::read_bytes(b / e.path().filename()));
  }
  const data::PreferenceDataset ps = data::read_preference_pairs(a);
  CHECK(ps.manifest.compute == "cuda bf16");
  REQUIRE(!ps.pairs.empty());
  double worst = 0;  // per answer token
  for (const data::PreferencePair& p : ps.pairs) {
    const double chosen = test::answer_logprob(cpu_teacher, p.prompt, p.chosen);
    const double rejected = test::answer_logprob(cpu_teacher, p.prompt, p.rejected);
    worst = std::max(worst, std::abs(p.ref_logp_chosen - chosen) / double(p.chosen_len()));
    worst = std::max(worst, std::abs(p.ref_logp_rejected - rejected) / double(p.rejected_len()));
  }
  MESSAGE("largest reference log-prob difference per token, GPU bf16 against CPU float: " << worst);
  CHECK(worst < 0.05);
  fs::remove_all(labels_dir);
  fs::remove_all(a);
  fs::remove_all(b);
}
