// On-policy preference pairs on small random models (an attention teacher, a half-Mamba student):
// rejected answers replayed one prompt at a time through the training forward; reference
// log-probabilities against a per-token log-softmax of our own; the least likely of n samples
// against brute force; the same files at 1 and 3 slots and after a stopped run; bad pairs
// skipped and counted; another tokenizer, reference or setting refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <string>
#include <vector>

#include <mil/data/preference_pairs.hpp>

#include "common/compare.hpp"
#include "common/error_of.hpp"
#include "data/small_models.hpp"
#include "data/files.hpp"

using namespace mil;
using test::contains;
using test::read_bytes;
using test::require_same_files;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) { return test::scratch_path("preference_pairs_" + name); }

constexpr int64_t kVocab = 40;
constexpr int32_t kStop = 3;
// Stop tokens: several, so that the student's samples end at different lengths.
const std::vector<int32_t> kStops = {3, 5, 7, 9, 11};
bool is_stop(int32_t t) { return std::find(kStops.begin(), kStops.end(), t) != kStops.end(); }

template <class T>
nn::HybridModel<T, Cpu> teacher_model() {
  nn::HybridModel<T, Cpu> m(nn::all_attention(test::small_llama(kVocab)));
  m.init_random(21, 0.4f);
  return m;
}

// Layer 0 Mamba, layer 1 attention: the student's samples go through both decoder paths.
template <class T>
nn::HybridModel<T, Cpu> student_model(uint64_t seed = 8) {
  nn::HybridConfig h;
  h.llama = test::small_llama(kVocab);
  h.attn_layers = nn::attention_layout(h.llama.n_layers, "50%");
  nn::HybridModel<T, Cpu> m(h);
  m.init_random(seed, 0.4f);
  return m;
}

const std::string kTokenizer = util::sha256_hex("small tokenizer");

// Prompt i's labelled sequence: 2 to 8 prompt tokens, then a chosen answer of 1 to 5 tokens (no
// stop token among them), and a stop token after it for every other prompt.
data::LabelledSequence labelled(int64_t i) {
  data::LabelledSequence s;
  s.prompt_len = int32_t(2 + (i * 5) % 7);
  for (int64_t t = 0; t < s.prompt_len; ++t) s.tokens.push_back(int32_t(8 + (i * 11 + t * 5) % 32));
  const int64_t answer = 1 + (i * 3) % 5;
  for (int64_t t = 0; t < answer; ++t) s.tokens.push_back(int32_t(12 + (i * 7 + t * 3) % 28));
  if (i % 2 == 0) s.tokens.push_back(kStop);
  return s;
}

data::DatasetManifest label_settings(int64_t prompts, const std::vector<int32_t>& stops) {
  data::DatasetManifest m;
  m.teacher_name = "small random";
  m.teacher_sha256 = util::sha256_hex("small random teacher");
  m.tokenizer_fingerprint = kTokenizer;
  m.vocab_size = kVocab;
  m.chat_template = "chatml";
  m.max_prompt = 8;
  m.max_answer = 6;
  m.stop_ids = stops;
  m.sequences_per_shard = 4;
  m.prompt_count = prompts;
  m.prompts_sha256 = util::sha256_hex("prompts");
  return m;
}

// A complete pseudo-label dataset of `seqs`, written and read back as labelling leaves one.
data::TokenDataset write_labels(const std::string& name, const std::vector<data::LabelledSequence>& seqs,
                               const std::vector<int32_t>& stops = kStops) {
  const fs::path d = scratch(name);
  data::TokenDatasetWriter w(d, label_settings(int64_t(seqs.size()), stops));
  for (size_t i = 0; i < seqs.size(); ++i) w.add(int64_t(i), seqs[i]);
  w.finish();
  data::TokenDataset ds = data::read_token_dataset(d);
  fs::remove_all(d);
  return ds;
}

data::TokenDataset labels(int64_t n = 10, const std::vector<int32_t>& stops = kStops) {
  std::vector<data::LabelledSequence> seqs;
  for (int64_t i = 0; i < n; ++i) seqs.push_back(labelled(i));
  return write_labels("labels", seqs, stops);
}

data::PairConfig config() {
  data::PairConfig c;
  c.seed = 5;
  c.slots = 3;
  c.max_answer = 7;
  c.max_step_tokens = 6;  // prompts of up to 8 tokens run in chunks beside decode rows
  c.score_batch = 3;
  c.pairs_per_shard = 3;
  c.progress = false;
  return c;
}

data::PairIdentity identity() {
  data::PairIdentity id;
  id.student_name = "small student";
  id.student_sha256 = util::sha256_hex("small student");
  id.student_tokenizer = kTokenizer;
  return id;
}

// Sample k of prompt i replayed one token at a time from the forward's last row.
template <class T>
std::vector<int32_t> replay_sample(const nn::HybridModel<T, Cpu>& student, const data::PairConfig& c,
                                   const data::LabelledSequence& s, int64_t i, int64_t k) {
  gen::SamplingConfig sc = c.sampling;
  sc.seed = data::pair_sample_seed(c.seed, i, k);
  gen::Sampler sampler(sc);
  std::vector<int32_t> seq(s.tokens.begin(), s.tokens.begin() + s.prompt_len);
  std::vector<int32_t> answer;
  while (int64_t(answer.size()) < c.max_answer) {
    const auto logits = test::forward_logits(student, seq);
    const std::vector<float> row(logits.end() - kVocab, logits.end());
    const int32_t token = sampler.sample(row, seq);
    seq.push_back(token);
    answer.push_back(token);
    if (is_stop(token)) break;
  }
  return answer;
}

std::vector<int32_t> answer_of(const data::LabelledSequence& s) {
  return {s.tokens.begin() + s.prompt_len, s.tokens.end()};
}

}  // namespace

TEST_CASE("preference pairs: rejected answers are the student's samples and reference log-probs are exact") {
  // In double, so that the decoder and the training forward agree far below any sampling
  // boundary. Catches samples drawn from the teacher instead of the student, a sampler seeded by
  // slot or job order instead of (prompt, sample), the labeller's draws reused, a chosen answer
  // taken from the wrong sequence, log-probabilities summed over prompt tokens too, shifted by a
  // position, or taken from the wrong model.
  const auto teacher = teacher_model<double>();
  const auto student = student_model<double>();
  const data::TokenDataset ls = labels();
  const data::PairConfig c = config();
  const fs::path d = scratch("exact");
  const data::PairStats st = data::make_preference_pairs(student, teacher, ls, c, d, identity());
  const data::PreferenceDataset ps = data::read_preference_pairs(d);
  CHECK(ps.manifest.compute == "cpu f64");
  CHECK(ps.manifest.pairs.reference_sha256 == ls.manifest.teacher_sha256);

  std::vector<double> got, want;
  size_t at = 0;
  int64_t same = 0;
  for (int64_t i = 0; i < int64_t(ls.sequences.size()); ++i) {
    CAPTURE(i);
    const data::LabelledSequence& s = ls.sequences[size_t(i)];
    const std::vector<int32_t> rejected = replay_sample(student, c, s, i, 0);
    if (rejected == answer_of(s) || data::is_empty_answer(rejected, kStops)) {
      ++same;  // skipped
      continue;
    }
    REQUIRE(at < ps.pairs.size());
    const data::PreferencePair& p = ps.pairs[at++];
    CHECK(p.prompt == std::vector<int32_t>(s.tokens.begin(), s.tokens.begin() + s.prompt_len));
    CHECK(p.chosen == answer_of(s));
    CHECK(p.rejected == rejected);
    got.push_back(p.ref_logp_chosen);
    got.push_back(p.ref_logp_rejected);
    want.push_back(test::answer_logprob(teacher, p.prompt, p.chosen));
    want.push_back(test::answer_logprob(teacher, p.prompt, p.rejected));
  }
  CHECK(at == ps.pairs.size());
  CHECK(ps.pairs.size() >= 8);
  CHECK(st.pairs == int64_t(ps.pairs.size()));
  CHECK(st.skipped_empty + st.skipped_same_answer == same);
  test::require_close("reference log-probs", got, want, test::Bound{1e-12, 1e-11});

  // Another reference model gives other numbers, from that model.
  const auto other = student_model<double>(9);
  data::PairIdentity with_ref = identity();
  with_ref.reference_name = "other";
  with_ref.reference_sha256 = util::sha256_hex("other reference");
  const fs::path e = scratch("other_reference");
  data::make_preference_pairs(student, teacher, other, ls, c, e, with_ref);
  const data::PreferenceDataset po = data::read_preference_pairs(e);
  REQUIRE(po.pairs.size() == ps.pairs.size());
  CHECK(po.manifest.pairs.reference_sha256 == with_ref.reference_sha256);
  std::vector<double> got_other, want_other;
  for (size_t i = 0; i < po.pairs.size(); ++i) {
    CAPTURE(i);
    const data::PreferencePair& p = po.pairs[i];
    CHECK(p.rejected == ps.pairs[i].rejected);
    got_other.push_back(p.ref_logp_chosen);
    got_other.push_back(p.ref_logp_rejected);
    want_other.push_back(test::answer_logprob(other, p.prompt, p.chosen));
    want_other.push_back(test::answer_logprob(other, p.prompt, p.rejected));
  }
  // The decoder's Mamba steps and the training forward's chunked scan sum in other orders.
  test::require_close("other reference log-probs", got_other, want_other, test::Bound{1e-9, 1e-8});
  fs::remove_all(d);
  fs::remove_all(e);
}

TEST_CASE("preference pairs: of n samples the one the teacher finds least likely is kept") {
  // Brute force: every sample replayed, scored per token by our own log-softmax of the teacher,
  // empty and chosen-equal samples dropped, the lowest kept. Catches the highest or the first
  // sample kept, a score per sequence instead of per token (length bias), the student or the
  // reference scoring instead of the teacher, and samples of one prompt mixed with another's.
  const auto teacher = teacher_model<double>();
  const auto student = student_model<double>();
  const data::TokenDataset ls = labels();
  data::PairConfig c = config();
  c.samples_per_prompt = 3;
  const auto reference = student_model<double>(9);  // not the teacher: the choice is the teacher's
  data::PairIdentity id = identity();
  id.reference_name = "other";
  id.reference_sha256 = util::sha256_hex("other reference");
  const fs::path d = scratch("least_likely");
  data::make_preference_pairs(student, teacher, reference, ls, c, d, id);
  const data::PreferenceDataset ps = data::read_preference_pairs(d);
  CHECK(ps.manifest.pairs.samples_per_prompt == 3);
  size_t at = 0;
  int64_t not_first = 0, per_token_matters = 0;
  for (int64_t i = 0; i < int64_t(ls.sequences.size()); ++i) {
    CAPTURE(i);
    const data::LabelledSequence& s = ls.sequences[size_t(i)];
    const std::vector<int32_t> prompt(s.tokens.begin(), s.tokens.begin() + s.prompt_len);
    std::vector<std::vector<int32_t>> candidates;
    for (int64_t k = 0; k < 3; ++k) {
      std::vector<int32_t> a = replay_sample(student, c, s, i, k);
      if (a != answer_of(s) && !data::is_empty_answer(a, kStops)) candidates.push_back(a);
    }
    if (candidates.empty()) continue;
    size_t best = 0, best_sum = 0;
    double best_score = INFINITY, lowest_sum = INFINITY;
    for (size_t k = 0; k < candidates.size(); ++k) {
      const double sum = test::answer_logprob(teacher, prompt, candidates[k]);
      if (sum / double(candidates[k].size()) < best_score) best_score = sum / double(candidates[k].size()), best = k;
      if (sum < lowest_sum) lowest_sum = sum, best_sum = k;
    }
    not_first += best != 0;
    per_token_matters += best != best_sum;
    REQUIRE(at < ps.pairs.size());
    CHECK(ps.pairs[at++].rejected == candidates[best]);
  }
  CHECK(at == ps.pairs.size());
  CHECK(not_first > 0);  // the choice mattered
  CHECK(per_token_matters > 0);  // the data tells a score per token from one per sequence
  // Per token, not per sequence (which would prefer long samples), ties to the first sample.
  CHECK(data::least_likely(std::vector<double>{-10.0, -6.0}, std::vector<int64_t>{10, 2}) == 1);
  CHECK(data::least_likely(std::vector<double>{-3.0, -6.0, -9.0}, std::vector<int64_t>{1, 2, 3}) == 0);
  fs::remove_all(d);
}

TEST_CASE("preference pairs: the same files at any slot count and after a stopped run") {
  // On the CPU the decoder is row-invariant and a sequence's log-probability does not depend on
  // its batch. Catches draws tied to the slot or step, scores that depend on the batch they ran
  // in, and a continued run that skips, repeats or reorders prompts.
  const auto teacher = teacher_model<float>();
  const auto student = student_model<float>();
  const data::TokenDataset ls = labels(12, {kStop});  // one stop: an empty sample is rare
  data::PairConfig one = config();
  one.slots = 1;
  one.score_batch = 1;
  one.samples_per_prompt = 2;
  data::PairConfig three = one;
  three.slots = 3;
  three.score_batch = 4;
  three.max_step_tokens = 5;
  const fs::path a = scratch("slots1"), b = scratch("slots3");
  const data::PairStats full = data::make_preference_pairs(student, teacher, ls, one, a, identity());
  data::make_preference_pairs(student, teacher, ls, three, b, identity());
  require_same_files(a, b);
  CHECK(full.pairs >= 8);
  // No label is empty and, for these seeds, no prompt has only empty samples: every skip below
  // is a same answer, which the stopped run's manifest needs to know.
  REQUIRE(full.skipped_empty == 0);

  // Another seed gives other pairs (the seed reaches the student's sampler).
  data::PairConfig other_seed = one;
  other_seed.seed = 6;
  const fs::path o = scratch("seed6");
  data::make_preference_pairs(student, teacher, ls, other_seed, o, identity());
  CHECK(read_bytes(o / "shard-00000.bin") != read_bytes(a / "shard-00000.bin"));

  // The folder as a run stopped after its first shard leaves it.
  data::DatasetManifest m = data::read_manifest(a);
  REQUIRE(m.shards.size() >= 2);
  const fs::path part = scratch("part");
  m.shards.resize(1);
  m.complete = false;
  m.prompts_done = m.shards[0].end_prompt;
  m.sequences = m.shards[0].sequences;
  m.prompt_tokens = m.shards[0].prompt_tokens;
  m.answer_tokens = m.shards[0].answer_tokens;
  m.skipped_empty = 0;
  m.skipped_same_answer = m.prompts_done - m.sequences;
  fs::create_directories(part);
  fs::copy_file(a / "shard-00000.bin", part / "shard-00000.bin");
  data::write_manifest(part, m);
  REQUIRE_NOTHROW(data::read_manifest(part));
  const data::PairStats rest = data::make_preference_pairs(student, teacher, ls, three, part, identity());
  CHECK(rest.resumed_at == m.prompts_done);
  CHECK(rest.generated_tokens < full.generated_tokens);
  require_same_files(a, part);

  // Another setting, student, reference or set of labels never touches it.
  data::PairConfig more = one;
  more.samples_per_prompt = 3;
  CHECK(contains(test::error_of([&] { data::make_preference_pairs(student, teacher, ls, more, part, identity()); }),
                 "other settings (\"pairs\""));
  data::PairIdentity other_student = identity();
  other_student.student_sha256 = util::sha256_hex("another student");
  CHECK(contains(test::error_of([&] { data::make_preference_pairs(student, teacher, ls, one, part, other_student); }),
                 "other settings (\"pairs\""));
  data::PairIdentity other_ref = identity();
  other_ref.reference_name = "sft";
  other_ref.reference_sha256 = util::sha256_hex("frozen student");
  CHECK(contains(test::error_of([&] { data::make_preference_pairs(student, teacher, student, ls, one, part, other_ref); }),
                 "other settings (\"pairs\""));
  const data::TokenDataset fewer = labels(11, {kStop});
  CHECK(contains(test::error_of([&] { data::make_preference_pairs(student, teacher, fewer, one, part, identity()); }),
                 "other settings (\"labelling\""));
  require_same_files(a, part);
  // A pseudo-label reader refuses pairs, and the pair reader refuses labels.
  CHECK(contains(test::error_of([&] { data::read_token_dataset(part); }), "not labelled sequences"));
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove_all(o);
  fs::remove_all(part);
}

TEST_CASE("preference pairs: stored reference log-probs come back bitwise") {
  // A DPO step reads the stored numbers instead of running the reference: they must be the
  // reference's bit for bit. Catches log-probs stored rounded (float) or swapped between chosen
  // and rejected, and a scoring batch that changes a sequence's value.
  const auto teacher = teacher_model<float>();
  const auto student = student_model<float>();
  const data::TokenDataset ls = labels();
  const fs::path d = scratch("bitwise");
  data::make_preference_pairs(student, teacher, ls, config(), d, identity());
  const data::PreferenceDataset ps = data::read_preference_pairs(d);
  REQUIRE(!ps.pairs.empty());
  std::vector<data::LabelledSequence> seqs;
  for (const auto& p : ps.pairs) {
    seqs.push_back(data::chosen_sequence(p));
    seqs.push_back(data::rejected_sequence(p));
  }
  const std::vector<double> alone = data::answer_logprobs(teacher, std::span<const data::LabelledSequence>(seqs), 1);
  const std::vector<double> batched = data::answer_logprobs(teacher, std::span<const data::LabelledSequence>(seqs), 5);
  std::vector<double> stored;
  for (const auto& p : ps.pairs) {
    stored.push_back(p.ref_logp_chosen);
    stored.push_back(p.ref_logp_rejected);
  }
  CHECK(test::bytes_of(stored) == test::bytes_of(alone));
  CHECK(test::bytes_of(batched) == test::bytes_of(alone));
  fs::remove_all(d);
}

TEST_CASE("preference pairs: empty and same answers are skipped and counted") {
  // Catches a pair kept whose chosen answer says nothing, or whose rejected answer is the chosen
  // one (its DPO gradient is zero: it only dilutes the batch), and skips miscounted.
  const auto teacher = teacher_model<double>();
  const auto student = student_model<double>();
  data::PairConfig c = config();
  c.sampling.temperature = 0.f;  // greedy: the student's answer is known in advance
  c.max_answer = 6;              // the labels' limit: a greedy answer fits as a label
  // Prompt 0: the chosen answer is only the stop token. Prompt 1: the chosen answer is the
  // student's own greedy answer. Prompt 2: an ordinary pair.
  std::vector<data::LabelledSequence> seqs = {labelled(0), labelled(1), labelled(2)};
  seqs[0].tokens.resize(size_t(seqs[0].prompt_len));
  seqs[0].tokens.push_back(kStop);
  const std::vector<int32_t> greedy = replay_sample(student, c, seqs[1], 1, 0);
  REQUIRE(!data::is_empty_answer(greedy, kStops));
  seqs[1].tokens.resize(size_t(seqs[1].prompt_len));
  seqs[1].tokens.insert(seqs[1].tokens.end(), greedy.begin(), greedy.end());
  const std::vector<int32_t> third = replay_sample(student, c, seqs[2], 2, 0);
  REQUIRE((third != answer_of(seqs[2]) && !data::is_empty_answer(third, kStops)));
  const data::TokenDataset ls = write_labels("bad_labels", seqs);
  const fs::path d = scratch("bad");
  const data::PairStats st = data::make_preference_pairs(student, teacher, ls, c, d, identity());
  CHECK(st.pairs == 1);
  CHECK(st.skipped_empty == 1);
  CHECK(st.skipped_same_answer == 1);
  const data::PreferenceDataset ps = data::read_preference_pairs(d);
  CHECK(ps.manifest.skipped_same_answer == 1);
  REQUIRE(ps.pairs.size() == 1);
  CHECK(ps.pairs[0].chosen == answer_of(seqs[2]));
  // The writer refuses a pair whose answers are equal: the maker must skip it, not store it.
  data::PreferencePair same{{9, 10}, {11, kStop}, {11, kStop}, -1.0, -1.0};
  const fs::path w = scratch("same_writer");
  data::DatasetManifest m = ps.manifest;
  CHECK(contains(test::error_of([&] {
                   data::PreferencePairWriter writer(w, m);
                   writer.add(0, same);
                 }),
                 "the rejected answer is the chosen one"));
  fs::remove_all(d);
  fs::remove_all(w);
}

TEST_CASE("preference pairs: a student with another tokenizer is refused") {
  // Catches a student whose ids mean other text being paired with the teacher's answers.
  const auto teacher = teacher_model<float>();
  const auto student = student_model<float>();
  const data::TokenDataset ls = labels(3);
  data::PairIdentity id = identity();
  id.student_tokenizer = util::sha256_hex("another tokenizer");
  const fs::path d = scratch("tokenizer");
  CHECK(contains(test::error_of([&] { data::make_preference_pairs(student, teacher, ls, config(), d, id); }),
                 "the student's tokenizer (fingerprint "));
  CHECK(!fs::exists(d));
}
