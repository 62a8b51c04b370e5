#pragma once
// On-policy preference pairs (docs/METHOD.md §5, stage 3): for each teacher-labelled sequence of
// a pseudo-label dataset (data/pseudo_labels.hpp) the chosen answer is the teacher's, the rejected
// answer the student's own sample. The student samples through the same continuous batch as the
// labeller (data/sample_answers.hpp); sample k of prompt i draws from its own Philox stream
// (pair_sample_seed), so on the CPU the pairs are bitwise the same at any slot count. With
// samples_per_prompt n > 1 the student answers n times and the teacher picks the sample it finds
// least likely per token (the hardest negative it still disagrees with). A reference model (the
// teacher by default) then gives both answers' log-probabilities once (data/sequence_logprob.hpp),
// stored with the pair, so that a DPO step runs only the policy.
//
// Pairs are written in prompt order through the dataset writer (data/token_dataset.hpp): shards
// + manifest, atomic, resumable to the same bytes; another teacher, tokenizer, reference or
// setting is refused. A pair whose chosen answer is empty (only stop tokens), or whose student
// samples are all empty or equal to the chosen answer, is skipped and counted.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../core/rng.hpp"
#include "../util/progress.hpp"
#include "preference_pair.hpp"
#include "sample_answers.hpp"
#include "sequence_logprob.hpp"
#include "token_dataset.hpp"

namespace mil::data {

// The student's sampler for rejected answers: its own distribution, unfiltered, at temperature 1.
inline gen::SamplingConfig rejected_sampling() {
  gen::SamplingConfig s;
  s.temperature = 1.f;
  s.top_k = 0;
  s.top_p = 1.f;
  s.min_p = 0.f;
  s.repetition_penalty = 1.f;
  return s;
}

struct PairConfig {
  gen::SamplingConfig sampling = rejected_sampling();  // its seed is unused: see `seed`
  uint64_t seed = 0;
  int64_t samples_per_prompt = 1;  // > 1: keep the sample the teacher finds least likely per token
  int64_t slots = 16;              // student sequences decoded at once
  int64_t max_answer = 0;          // student answer tokens at most (0: the labels' max_answer)
  int64_t max_step_tokens = 512;   // tokens per decoder step
  int64_t score_batch = 4;         // sequences per forward of the teacher and the reference
  int64_t pairs_per_shard = 1024;
  bool progress = true;
};

// What the caller knows of the models (the teacher's identity comes from the labels' manifest).
struct PairIdentity {
  std::string student_name, student_sha256;  // util::sha256_model of the student
  std::string student_tokenizer;             // data::tokenizer_fingerprint of the student's
  std::string reference_name, reference_sha256;  // empty: the teacher is the reference
};

struct PairStats {
  int64_t prompts = 0;     // labelled sequences given
  int64_t resumed_at = 0;  // the first prompt this call handled (> 0: a run continued)
  int64_t pairs = 0;       // in the dataset now
  int64_t skipped_too_long = 0, skipped_empty = 0, skipped_same_answer = 0;
  int64_t generated_tokens = 0;  // student tokens sampled by this call
  int64_t scored_sequences = 0;  // sequences this call ran through the teacher or reference
  double seconds = 0;
};

// The seed of the student's sample k of prompt i: Philox block (seed, i, 1 + k); block 0 is the
// labeller's (prompt_seed), so a student sample never reuses the teacher's draws.
inline uint64_t pair_sample_seed(uint64_t seed, int64_t prompt, int64_t sample) {
  const rng::U32x4 r = rng::random_block(seed, uint64_t(prompt), uint64_t(1 + sample));
  return uint64_t(r.v[0]) << 32 | r.v[1];
}

// An answer with no token but stop tokens says nothing.
inline bool is_empty_answer(std::span<const int32_t> answer, std::span<const int32_t> stop_ids) {
  return std::all_of(answer.begin(), answer.end(), [&](int32_t t) {
    return std::find(stop_ids.begin(), stop_ids.end(), t) != stop_ids.end();
  });
}

// The index of the lowest log-probability per token (ties to the first).
inline size_t least_likely(std::span<const double> logprobs, std::span<const int64_t> lengths) {
  MIL_CHECK(!logprobs.empty() && logprobs.size() == lengths.size(), "least_likely: ",
            logprobs.size(), " log-probs for ", lengths.size(), " lengths");
  size_t best = 0;
  for (size_t i = 1; i < logprobs.size(); ++i)
    if (logprobs[i] / double(lengths[i]) < logprobs[best] / double(lengths[best])) best = i;
  return best;
}

// Fills each pair's reference log-probabilities: chosen and rejected, `batch` sequences per
// forward of `reference`.
template <Element T, Device D>
void score_pairs(const nn::HybridModel<T, D>& reference, std::span<PreferencePair> pairs,
                 int64_t batch) {
  std::vector<LabelledSequence> seqs;
  seqs.reserve(pairs.size() * 2);
  for (const PreferencePair& p : pairs) {
    seqs.push_back(chosen_sequence(p));
    seqs.push_back(rejected_sequence(p));
  }
  const std::vector<double> lp = answer_logprobs(reference, std::span<const LabelledSequence>(seqs), batch);
  for (size_t i = 0; i < pairs.size(); ++i) {
    pairs[i].ref_logp_chosen = lp[2 * i];
    pairs[i].ref_logp_rejected = lp[2 * i + 1];
  }
}

// Makes the pairs of `labels` (a complete pseudo-label dataset) into `out_dir`, or continues the
// run found there. `reference` gives the stored log-probabilities; it is the teacher in the
// overload below. The student must share the teacher's tokenizer (id.student_tokenizer).
template <Element T, Device D>
PairStats make_preference_pairs(const nn::HybridModel<T, D>& student,
                                const nn::HybridModel<T, D>& teacher,
                                const nn::HybridModel<T, D>& reference, const TokenDataset& labels,
                                const PairConfig& cfg, const std::filesystem::path& out_dir,
                                const PairIdentity& id) {
  const DatasetManifest& lm = labels.manifest;
  MIL_CHECK(lm.kind == kSequencesKind && lm.complete, "preference pairs: ", lm.source,
            " is not a complete pseudo-label dataset");
  MIL_CHECK(id.student_tokenizer == lm.tokenizer_fingerprint, "preference pairs: the student's ",
            "tokenizer (fingerprint ", id.student_tokenizer, ") is not the one that tokenized the ",
            "teacher's labels (", lm.source, ", fingerprint ", lm.tokenizer_fingerprint, "): the ",
            "same ids would mean other text to the two models; give a student made from this ",
            "teacher");
  const int64_t vocab = lm.vocab_size;
  for (const auto* m : {&student, &teacher, &reference})
    MIL_CHECK(m->config().llama.vocab >= vocab, "preference pairs: a model has ",
              m->config().llama.vocab, " logits, the tokenizer ", vocab, " tokens");
  const int64_t n_samples = cfg.samples_per_prompt;
  const int64_t max_answer = cfg.max_answer > 0 ? cfg.max_answer : lm.max_answer;
  MIL_CHECK(n_samples >= 1 && n_samples <= 1024 && cfg.score_batch >= 1 &&
                cfg.pairs_per_shard >= 1,
            "preference pairs: samples_per_prompt (", n_samples, ") must be in [1, 1024], ",
            "score_batch (", cfg.score_batch, ") and pairs_per_shard (", cfg.pairs_per_shard,
            ") >= 1");
  const std::vector<LabelledSequence>& seqs = labels.sequences;
  const int64_t n = int64_t(seqs.size());

  DatasetManifest settings = lm;  // teacher, tokenizer, template, prompt limit: the labels'
  settings.kind = kPreferencePairsKind;
  settings.pairs.source = "on_policy";
  settings.pairs.student_name = id.student_name;
  settings.pairs.student_sha256 = id.student_sha256;
  const bool teacher_is_reference = id.reference_sha256.empty();
  settings.pairs.reference_name = teacher_is_reference ? lm.teacher_name : id.reference_name;
  settings.pairs.reference_sha256 = teacher_is_reference ? lm.teacher_sha256 : id.reference_sha256;
  settings.pairs.samples_per_prompt = n_samples;
  settings.sampling = cfg.sampling;
  settings.sampling.seed = 0;
  settings.seed = cfg.seed;
  settings.max_answer = std::max(max_answer, lm.max_answer);
  settings.topk = 0;
  settings.sequences_per_shard = cfg.pairs_per_shard;
  settings.prompt_count = n;
  std::vector<std::vector<int32_t>> labelled;  // the labels' ids, chosen answers included
  labelled.reserve(seqs.size());
  for (const LabelledSequence& s : seqs) labelled.push_back(s.tokens);
  settings.prompts_sha256 = prompts_hash(labelled);
  settings.compute = std::string(D::name) + " " + std::string(dtype_name(dtype_of<T>::value));
  PreferencePairWriter writer(out_dir, settings);

  PairStats stats;
  stats.prompts = n;
  stats.resumed_at = writer.next_prompt();
  util::ProgressBar bar("preference pairs", n - stats.resumed_at);
  auto finish = [&] {
    const DatasetManifest& m = writer.manifest();
    stats.pairs = m.sequences;
    stats.skipped_empty = m.skipped_empty;
    stats.skipped_same_answer = m.skipped_same_answer;
    stats.seconds = bar.seconds();
    return stats;
  };
  if (writer.complete()) return finish();

  // The student's samples of each prompt, until all n are in; prompts are then settled in order,
  // score_batch at a time (the last group may be smaller).
  std::map<int64_t, std::vector<std::vector<int32_t>>> samples;
  int64_t next_job = writer.next_prompt() * n_samples;
  int64_t settled = writer.next_prompt();  // the first prompt not yet written or skipped
  int64_t generated = 0;

  auto answer = [&](int64_t i) {
    const LabelledSequence& s = seqs[size_t(i)];
    return std::vector<int32_t>(s.tokens.begin() + s.prompt_len, s.tokens.end());
  };
  auto prompt_of = [&](int64_t i) {
    const LabelledSequence& s = seqs[size_t(i)];
    return std::span<const int32_t>(s.tokens.data(), size_t(s.prompt_len));
  };
  // Settles prompts [settled, end), whose samples are all in: picks each rejected answer (the
  // teacher scores the candidates of every prompt at once), scores the pairs with the reference,
  // and writes every prompt of the group in order.
  auto settle_group = [&](int64_t end) {
    struct Outcome {
      std::optional<SkipReason> skip;
      std::vector<std::vector<int32_t>> candidates;
      size_t first_score = 0;
      PreferencePair pair;
    };
    std::vector<Outcome> out(size_t(end - settled));
    std::vector<LabelledSequence> candidate_seqs;
    for (int64_t i = settled; i < end; ++i) {
      Outcome& o = out[size_t(i - settled)];
      const std::vector<int32_t> chosen = answer(i);
      std::vector<std::vector<int32_t>> drawn = std::move(samples.at(i));
      samples.erase(i);
      if (is_empty_answer(chosen, lm.stop_ids)) {
        o.skip = SkipReason::empty;
        continue;
      }
      bool same = false;
      for (auto& s : drawn) {
        if (is_empty_answer(s, lm.stop_ids)) continue;
        if (s == chosen) {
          same = true;
          continue;
        }
        o.candidates.push_back(std::move(s));
      }
      if (o.candidates.empty()) {
        o.skip = same ? SkipReason::same_answer : SkipReason::empty;
        continue;
      }
      const auto pr = prompt_of(i);
      o.pair.prompt.assign(pr.begin(), pr.end());
      o.pair.chosen = chosen;
      o.first_score = candidate_seqs.size();
      if (o.candidates.size() > 1)
        for (const auto& c : o.candidates) candidate_seqs.push_back(with_answer(o.pair.prompt, c));
    }
    const std::vector<double> teacher_lp =
        answer_logprobs(teacher, std::span<const LabelledSequence>(candidate_seqs), cfg.score_batch);
    stats.scored_sequences += int64_t(candidate_seqs.size());
    std::vector<PreferencePair> pairs;
    for (Outcome& o : out) {
      if (o.skip) continue;
      size_t pick = 0;
      if (o.candidates.size() > 1) {
        std::vector<int64_t> lengths;
        for (const auto& c : o.candidates) lengths.push_back(int64_t(c.size()));
        pick = least_likely(std::span(teacher_lp).subspan(o.first_score, o.candidates.size()), lengths);
      }
      o.pair.rejected = std::move(o.candidates[pick]);
      pairs.push_back(std::move(o.pair));
    }
    score_pairs(reference, std::span(pairs), cfg.score_batch);
    stats.scored_sequences += 2 * int64_t(pairs.size());
    size_t next_pair = 0;
    for (int64_t i = settled; i < end; ++i) {
      const Outcome& o = out[size_t(i - settled)];
      if (o.skip)
        writer.skip(i, *o.skip);
      else
        writer.add(i, std::move(pairs[next_pair++]));
    }
    settled = end;
    if (cfg.progress)
      bar.update(settled - stats.resumed_at, answer_rate(generated, bar.seconds()));
  };
  std::map<int64_t, int64_t> received;  // samples finished per prompt

  auto next = [&]() -> std::optional<AnswerJob> {
    if (next_job == n * n_samples) return std::nullopt;
    const int64_t job = next_job++, i = job / n_samples, k = job % n_samples;
    samples[i].resize(size_t(n_samples));
    return AnswerJob{job, prompt_of(i), pair_sample_seed(cfg.seed, i, k)};
  };
  auto on_row = [&](int64_t, const AnswerRow&, LabelledSequence&) { ++generated; };
  auto on_done = [&](int64_t job, LabelledSequence&& seq) {
    const int64_t i = job / n_samples, k = job % n_samples;
    samples.at(i)[size_t(k)].assign(seq.tokens.begin() + seq.prompt_len, seq.tokens.end());
    ++received[i];
    for (;;) {  // settle every full group (or the last one) now complete
      int64_t end = settled;
      while (end < n && end - settled < cfg.score_batch && received.count(end) &&
             received.at(end) == n_samples)
        ++end;
      if (end - settled < cfg.score_batch && end < n) break;
      for (int64_t p = settled; p < end; ++p) received.erase(p);
      settle_group(end);
      if (settled == n) break;
    }
  };
  AnswerSampling as;
  as.sampling = cfg.sampling;
  as.stop_ids = lm.stop_ids;
  as.slots = cfg.slots;
  as.max_prompt = lm.max_prompt;
  as.max_answer = max_answer;
  as.max_step_tokens = cfg.max_step_tokens;
  as.vocab = vocab;
  as.row_topk = 1;  // on_row reads nothing of the row
  const AnswerCounts counts = sample_answers(student, as, next, on_row, on_done);
  stats.generated_tokens = counts.generated_tokens;
  MIL_CHECK(settled == n, "preference pairs: ", n - settled, " prompts were never settled");
  writer.finish();
  return finish();
}

// The teacher as the reference model.
template <Element T, Device D>
PairStats make_preference_pairs(const nn::HybridModel<T, D>& student,
                                const nn::HybridModel<T, D>& teacher, const TokenDataset& labels,
                                const PairConfig& cfg, const std::filesystem::path& out_dir,
                                PairIdentity id) {
  id.reference_name.clear();
  id.reference_sha256.clear();
  return make_preference_pairs(student, teacher, teacher, labels, cfg, out_dir, id);
}

}  // namespace mil::data
