// The pseudo-labeller on a small random Transformer: every answer and top-k entry against a
// reference made one prompt at a time through the training forward; the same dataset bitwise at
// 1 and 4 slots and with prompts cut into chunks; a stopped run continued to the same files;
// skipped prompts counted; settings of another run and unusable prompts refused. One case labels
// with the real teacher when it is present.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include <mil/data/pseudo_labels.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/chat_template.hpp>

#include "common/error_of.hpp"
#include "common/repo_root.hpp"
#include "common/teacher.hpp"
#include "data/small_models.hpp"
#include "data/files.hpp"

using namespace mil;
using test::contains;
using test::forward_logits;
using test::read_bytes;
using test::require_same_files;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) { return test::scratch_path("pseudo_labels_" + name); }

template <class T>
nn::HybridModel<T, Cpu> small_model() {
  nn::HybridModel<T, Cpu> m(nn::all_attention(test::small_llama(40)));
  m.init_random(21, 0.4f);
  return m;
}

const std::vector<int32_t> kStop = {3, 7};

// 12 prompts of 0 to 16 tokens: with max_prompt 10, prompt 5 (empty) and four long ones are
// skipped, seven are labelled.
std::vector<std::vector<int32_t>> prompts() {
  std::vector<std::vector<int32_t>> p;
  for (int64_t i = 0; i < 12; ++i) {
    const int64_t len = i == 5 ? 0 : 1 + (i * 7) % 17;
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < len; ++t) ids.push_back(int32_t(8 + (i * 11 + t * 5) % 32));
    p.push_back(ids);
  }
  return p;
}

data::LabelConfig config() {
  data::LabelConfig c;
  c.seed = 99;
  c.slots = 4;
  c.max_prompt = 10;
  c.max_answer = 9;
  c.sequences_per_shard = 3;
  c.progress = false;
  return c;
}

data::DatasetManifest identity() {
  data::DatasetManifest m;
  m.teacher_name = "small random";
  m.teacher_sha256 = util::sha256_hex("small random teacher");
  m.tokenizer_fingerprint = util::sha256_hex("small tokenizer");
  m.chat_template = "chatml";
  return m;
}

}  // namespace

TEST_CASE("pseudo labels: answers and top-k equal a one-prompt reference") {
  // In double, so that the decoder and the training forward agree to far below any sampling
  // boundary. Catches logits of one slot sampled for another, a sampler seeded by slot or step
  // instead of by prompt, a prompt fed twice or cut short, a stop token dropped, top-k taken
  // from the wrong position or normalised over the kept tokens only.
  const auto model = small_model<double>();
  const auto ps = prompts();
  data::LabelConfig c = config();
  c.store_topk = 4;
  c.max_step_tokens = 6;  // prompts of up to 10 tokens run in chunks beside decode rows
  const fs::path d = scratch("reference");
  const data::LabelStats st = data::label_prompts(model, ps, kStop, c, d, identity());
  const data::TokenDataset ds = data::read_token_dataset(d);
  CHECK(ds.manifest.compute == "cpu f64");

  int64_t at = 0, stopped = 0, full = 0, answer_tokens = 0;
  for (int64_t i = 0; i < int64_t(ps.size()); ++i) {
    CAPTURE(i);
    if (ps[size_t(i)].empty() || int64_t(ps[size_t(i)].size()) > c.max_prompt) continue;
    REQUIRE(at < int64_t(ds.sequences.size()));
    const data::LabelledSequence& s = ds.sequences[size_t(at++)];
    REQUIRE(s.prompt_len == int32_t(ps[size_t(i)].size()));
    REQUIRE(std::equal(ps[size_t(i)].begin(), ps[size_t(i)].end(), s.tokens.begin()));
    // Replay: sample each answer token from the forward's last row, with prompt i's sampler.
    gen::SamplingConfig sc = c.sampling;
    sc.seed = data::prompt_seed(c.seed, i);
    gen::Sampler sampler(sc);
    std::vector<int32_t> seq = ps[size_t(i)];
    for (int64_t j = 0; j < s.answer_len(); ++j) {
      CAPTURE(j);
      const auto logits = forward_logits(model, seq);
      const std::vector<float> row(logits.end() - 40, logits.end());
      double lse = 0;
      for (float l : row) lse += std::exp(double(l));
      lse = std::log(lse);
      std::vector<int32_t> order(40);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      for (int32_t r = 0; r < c.store_topk; ++r) {
        CHECK(s.topk_ids[size_t(j * c.store_topk + r)] == order[size_t(r)]);
        CHECK(std::abs(s.topk_logprobs[size_t(j * c.store_topk + r)] - (row[order[r]] - lse)) < 1e-5);
      }
      const int32_t token = sampler.sample(row, seq);
      REQUIRE(s.tokens[size_t(s.prompt_len + j)] == token);
      seq.push_back(token);
    }
    const int32_t last = s.tokens.back();
    const bool stop = last == kStop[0] || last == kStop[1];
    // The answer ends at its first stop token, or at max_answer.
    CHECK((stop || s.answer_len() == c.max_answer));
    for (int64_t j = 0; j + 1 < s.answer_len(); ++j)
      CHECK((s.tokens[size_t(s.prompt_len + j)] != kStop[0] && s.tokens[size_t(s.prompt_len + j)] != kStop[1]));
    stopped += stop;
    full += !stop;
    answer_tokens += s.answer_len();
  }
  CHECK(at == int64_t(ds.sequences.size()));
  CHECK(stopped > 0);  // both endings occur: the case checks each
  CHECK(full > 0);
  CHECK(st.sequences == 7);
  CHECK(st.skipped_too_long == 4);
  CHECK(st.skipped_empty == 1);
  CHECK(st.answer_tokens == answer_tokens);
  CHECK(st.generated_tokens == answer_tokens);
  CHECK(st.resumed_at == 0);
  fs::remove_all(d);
}

TEST_CASE("pseudo labels: the same dataset bitwise at any slot count") {
  // On the CPU the products are row-invariant, so which slot and which step carried a prompt
  // must not change a bit. Catches draws tied to the slot or step, and any batching error.
  const auto model = small_model<float>();
  const auto ps = prompts();
  data::LabelConfig one = config();
  one.slots = 1;
  one.store_topk = 2;
  data::LabelConfig four = one;
  four.slots = 4;
  four.max_step_tokens = 5;
  const fs::path a = scratch("slots1"), b = scratch("slots4");
  data::label_prompts(model, ps, kStop, one, a, identity());
  data::label_prompts(model, ps, kStop, four, b, identity());
  require_same_files(a, b);
  // Another seed gives other answers (the seed reaches the sampler).
  data::LabelConfig other = one;
  other.seed = 100;
  const fs::path o = scratch("seed100");
  data::label_prompts(model, ps, kStop, other, o, identity());
  CHECK(read_bytes(o / "shard-00000.bin") != read_bytes(a / "shard-00000.bin"));
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove_all(o);
}

TEST_CASE("pseudo labels: a stopped run continues to the same dataset") {
  const auto model = small_model<float>();
  const auto ps = prompts();
  const data::LabelConfig c = config();
  const fs::path whole = scratch("whole"), part = scratch("part");
  const data::LabelStats full = data::label_prompts(model, ps, kStop, c, whole, identity());
  // The folder as a run stopped after its first shard leaves it (the shard, and the manifest
  // listing it, are written before the next prompt's answer is kept).
  data::DatasetManifest m = data::read_manifest(whole);
  REQUIRE(m.shards.size() == 3);
  m.shards.resize(1);
  m.complete = false;
  m.prompts_done = m.shards[0].end_prompt;
  m.sequences = m.shards[0].sequences;
  m.prompt_tokens = m.shards[0].prompt_tokens;
  m.answer_tokens = m.shards[0].answer_tokens;
  m.skipped_too_long = m.skipped_empty = 0;
  for (int64_t i = 0; i < m.prompts_done; ++i)
    (ps[size_t(i)].empty() ? m.skipped_empty : m.skipped_too_long) +=
        ps[size_t(i)].empty() || int64_t(ps[size_t(i)].size()) > c.max_prompt;
  fs::create_directories(part);
  fs::copy_file(whole / "shard-00000.bin", part / "shard-00000.bin");
  data::write_manifest(part, m);
  REQUIRE_NOTHROW(data::read_manifest(part));

  const data::LabelStats rest = data::label_prompts(model, ps, kStop, c, part, identity());
  CHECK(rest.resumed_at == m.prompts_done);
  CHECK(rest.generated_tokens == full.generated_tokens - m.answer_tokens);
  require_same_files(whole, part);
  // Once complete, a run with the same settings does nothing.
  const data::LabelStats again = data::label_prompts(model, ps, kStop, c, part, identity());
  CHECK(again.generated_tokens == 0);
  CHECK(again.sequences == full.sequences);

  // Other settings, other prompts or another teacher never touch it.
  data::LabelConfig hotter = c;
  hotter.sampling.temperature = 1.f;
  CHECK(contains(test::error_of([&] { data::label_prompts(model, ps, kStop, hotter, part, identity()); }),
                 "other settings (\"labelling\""));
  auto fewer = ps;
  fewer.pop_back();
  CHECK(contains(test::error_of([&] { data::label_prompts(model, fewer, kStop, c, part, identity()); }),
                 "other settings (\"labelling\""));
  data::DatasetManifest other_teacher = identity();
  other_teacher.teacher_sha256 = util::sha256_hex("another");
  CHECK(contains(test::error_of([&] { data::label_prompts(model, ps, kStop, c, part, other_teacher); }),
                 "other settings (\"teacher\""));
  require_same_files(whole, part);
  fs::remove_all(whole);
  fs::remove_all(part);
}

TEST_CASE("pseudo labels: prompts longer than the context") {
  const auto model = small_model<float>();
  data::LabelConfig c = config();
  c.max_prompt = 4;
  const fs::path d = scratch("long");
  // Prompts longer than max_prompt are skipped and counted.
  const std::vector<std::vector<int32_t>> some = {{9, 10, 11, 12, 13}, {9, 10}, {}, {8, 8, 8, 8}};
  const data::LabelStats st = data::label_prompts(model, some, kStop, c, d, identity());
  CHECK(st.sequences == 2);
  CHECK(st.skipped_too_long == 1);
  CHECK(st.skipped_empty == 1);
  const data::TokenDataset ds = data::read_token_dataset(d);
  REQUIRE(ds.sequences.size() == 2);
  CHECK(ds.sequences[0].prompt_len == 2);
  CHECK(ds.sequences[1].prompt_len == 4);
  fs::remove_all(d);
  // All of them too long is an error, before anything is written.
  const std::vector<std::vector<int32_t>> none = {{9, 10, 11, 12, 13}, {}};
  CHECK(contains(test::error_of([&] { data::label_prompts(model, none, kStop, c, d, identity()); }),
                 "none of the 2 prompts can be labelled"));
  CHECK(!fs::exists(d));
  // A token id outside the vocabulary is the caller's bug.
  const std::vector<std::vector<int32_t>> bad = {{9, 40}};
  CHECK(contains(test::error_of([&] { data::label_prompts(model, bad, kStop, c, d, identity()); }),
                 "prompt 0 has token id 40 at position 1"));
}

TEST_CASE("pseudo labels: the teacher answers chat prompts") {
  if (test::skip_real_model_run()) return;
  const fs::path path = test::repo_root() / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) {
    std::printf("[mil] teacher model not found: test skipped (%s; run scripts/setup.sh)\n",
                path.string().c_str());
    return;
  }
  const nn::LoadedModel t = nn::load_model(path.string());
  const text::ChatTemplate tmpl = text::detect_chat_template(t.chat_template);
  std::vector<std::vector<int32_t>> ps;
  for (const char* q : {"What is the capital of France?", "Name a colour."}) {
    const text::ChatMessage msg{"user", q};
    ps.push_back(t.tokenizer.encode(text::render_chat(tmpl, std::span(&msg, 1), true)));
  }
  const int32_t im_end = t.tokenizer.token_id("<|im_end|>");
  REQUIRE(im_end >= 0);
  data::LabelConfig c;
  c.slots = 2;
  c.max_answer = 24;
  c.progress = false;
  c.store_topk = 10;
  data::DatasetManifest id;
  id.teacher_name = t.name;
  id.teacher_sha256 = util::sha256_model(path);
  id.tokenizer_fingerprint = data::tokenizer_fingerprint(t.tokenizer);
  id.vocab_size = t.tokenizer.vocab_size();
  id.chat_template = text::to_string(tmpl.family);
  const fs::path d = scratch("teacher");
  data::label_prompts(t.model, ps, {im_end}, c, d, id);
  const data::TokenDataset ds = data::read_token_dataset(d);
  CHECK_NOTHROW(data::check_dataset_matches(ds.manifest, util::sha256_model(path),
                                            data::tokenizer_fingerprint(t.tokenizer)));
  REQUIRE(ds.sequences.size() == 2);
  const int64_t vocab = t.model.config().llama.vocab;
  for (const data::LabelledSequence& s : ds.sequences) {
    const std::string answer = t.tokenizer.decode(std::span(s.tokens).subspan(size_t(s.prompt_len)));
    CHECK(!answer.empty());
    CHECK((s.tokens.back() == im_end || s.answer_len() == c.max_answer));
    // The stored top-k against one teacher-forced forward over the whole sequence: the
    // log-probability of each stored id at the position that predicts answer token j; and the
    // sampled token is among the top 10 (top-k sampling).
    const auto logits = forward_logits(t.model, s.tokens);
    for (int64_t j = 0; j < s.answer_len(); ++j) {
      CAPTURE(j);
      const double* row = logits.data() + (s.prompt_len - 1 + j) * vocab;
      const double top = *std::max_element(row, row + vocab);
      double z = 0;
      for (int64_t v = 0; v < vocab; ++v) z += std::exp(row[v] - top);
      const double log_z = top + std::log(z);
      bool sampled_in_top = false;
      for (int32_t r = 0; r < c.store_topk; ++r) {
        const size_t e = size_t(j * c.store_topk + r);
        CHECK(std::abs(s.topk_logprobs[e] - (row[s.topk_ids[e]] - log_z)) < 2e-3);
        if (r > 0) CHECK(s.topk_logprobs[e] <= s.topk_logprobs[e - 1]);
        sampled_in_top |= s.topk_ids[e] == s.tokens[size_t(s.prompt_len + j)];
      }
      CHECK(sampled_in_top);
    }
  }
  fs::remove_all(d);
}
