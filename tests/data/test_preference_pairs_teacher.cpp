// Preference pairs with the real teacher (SmolLM2-135M-Instruct): JSONL pairs rendered with its
// tokenizer and chat template end with its end-of-turn token, and the teacher as reference
// prefers a right answer to a wrong one; on-policy pairs from its own labels. Skipped without the
// model file and under the sanitizers (many forwards of a real model).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <mil/data/preference_pairs_jsonl.hpp>
#include <mil/data/pseudo_labels.hpp>

#include "common/teacher.hpp"
#include "data/files.hpp"
#include "data/small_models.hpp"

using namespace mil;
namespace fs = std::filesystem;

TEST_CASE("preference pairs: real teacher pairs from JSONL and from its own labels") {
  const test::RealTeacher* t = test::real_teacher_for_training();
  if (!t) return;
  const text::ChatTemplate tmpl = text::chat_template_for_family(text::ChatFamily::chatml);
  const int32_t im_end = t->tokenizer.token_id("<|im_end|>");
  REQUIRE(im_end >= 0);
  const std::string fingerprint = data::tokenizer_fingerprint(t->tokenizer);
  const std::string teacher_sha = util::sha256_hex("the real teacher, as named by the test");

  // JSONL: an answer is its text's tokens and the end of turn; the teacher prefers Paris.
  const fs::path dir = test::scratch_path("pairs_teacher_files");
  fs::create_directories(dir);
  test::write_bytes(dir / "pairs.jsonl",
      "{\"prompt\": \"What is the capital of France?\", \"chosen\": \"The capital of France is "
      "Paris.\", \"rejected\": \"The capital of France is Berlin.\"}\n"
      "{\"conversations\": [{\"from\": \"human\", \"value\": \"Say hello.\"}], \"chosen\": "
      "{\"from\": \"gpt\", \"value\": \"Hello!\"}, \"rejected\": {\"from\": \"gpt\", \"value\": "
      "\"Goodbye.\"}}\n");
  data::JsonlPairConfig jc;
  jc.progress = false;
  data::PairIdentity ref;
  ref.reference_name = "teacher";
  ref.reference_sha256 = teacher_sha;
  const fs::path jd = test::scratch_path("pairs_teacher_jsonl");
  data::make_jsonl_preference_pairs(t->model, t->tokenizer, tmpl, {dir / "pairs.jsonl"}, jc, jd, ref);
  const data::PreferenceDataset jp = data::read_preference_pairs(jd);
  REQUIRE(jp.pairs.size() == 2);
  CHECK_NOTHROW(data::check_pairs_match(jp.manifest, teacher_sha, fingerprint));
  const data::PreferencePair& paris = jp.pairs[0];
  CHECK(paris.chosen.back() == im_end);
  CHECK(t->tokenizer.decode(std::span(paris.chosen).first(paris.chosen.size() - 1)) ==
        "The capital of France is Paris.");
  const text::ChatMessage say{"user", "Say hello."};
  CHECK(jp.pairs[1].prompt == text::encode_chat_prompt(t->tokenizer, tmpl, std::span(&say, 1)));
  MESSAGE("log p(Paris answer) " << paris.ref_logp_chosen << ", log p(Berlin answer) "
                                 << paris.ref_logp_rejected);
  CHECK(paris.ref_logp_chosen > paris.ref_logp_rejected);
  // The stored sums against the tests' own log-softmax of a training forward (float logits).
  for (const data::PreferencePair& p : jp.pairs) {
    CHECK(std::abs(p.ref_logp_chosen - test::answer_logprob(t->model, p.prompt, p.chosen)) <
          1e-3 * double(p.chosen_len()));
    CHECK(std::abs(p.ref_logp_rejected - test::answer_logprob(t->model, p.prompt, p.rejected)) <
          1e-3 * double(p.rejected_len()));
  }

  // On-policy: the teacher labels two prompts and, as its own student, samples the rejected
  // answers (two each; the teacher keeps the one it finds least likely).
  std::vector<std::vector<int32_t>> prompts;
  for (const char* q : {"Name a fruit.", "What colour is the sky?"}) {
    const text::ChatMessage m{"user", q};
    prompts.push_back(text::encode_chat_prompt(t->tokenizer, tmpl, std::span(&m, 1)));
  }
  data::LabelConfig lc;
  lc.slots = 2;
  lc.max_answer = 8;
  lc.progress = false;
  data::DatasetManifest id;
  id.teacher_name = "SmolLM2-135M-Instruct";
  id.teacher_sha256 = teacher_sha;
  id.tokenizer_fingerprint = fingerprint;
  id.vocab_size = t->tokenizer.vocab_size();
  id.chat_template = "chatml";
  const fs::path ld = test::scratch_path("pairs_teacher_labels");
  data::label_prompts(t->model, prompts, {im_end}, lc, ld, id);
  const data::TokenDataset labels = data::read_token_dataset(ld);
  data::PairConfig pc;
  pc.slots = 2;
  pc.samples_per_prompt = 2;
  pc.progress = false;
  data::PairIdentity student;
  student.student_name = "the teacher as its own student";
  student.student_sha256 = teacher_sha;
  student.student_tokenizer = fingerprint;
  const fs::path pd = test::scratch_path("pairs_teacher_on_policy");
  const data::PairStats st = data::make_preference_pairs(t->model, t->model, labels, pc, pd, student);
  CHECK(st.pairs + st.skipped_empty + st.skipped_same_answer == 2);
  const data::PreferenceDataset op = data::read_preference_pairs(pd);
  CHECK(op.manifest.pairs.reference_sha256 == teacher_sha);
  for (const data::PreferencePair& p : op.pairs) {
    CHECK((p.rejected.back() == im_end || p.rejected_len() == 8));
    CHECK(p.chosen != p.rejected);
    CHECK(std::isfinite(p.ref_logp_rejected));
  }
  fs::remove_all(dir);
  fs::remove_all(jd);
  fs::remove_all(ld);
  fs::remove_all(pd);
}
