#pragma once
// Pseudo-labels (docs/METHOD.md §5): the teacher answers each prompt by sampling, and the prompt
// with its answer becomes one sequence of a token dataset (data/token_dataset.hpp).
//
// The prompts are decoded in a batch of `slots` sequences, continuously (data/sample_answers.hpp):
// an answer ends with a stop token, kept so that the student learns to stop, or after max_answer
// tokens. The draws of prompt i come from its own sampler, seeded from
// (seed, i), so an answer does not depend on which slot or step carried it; on the CPU the
// products are row-invariant, so the same seed gives bitwise the same dataset at any slot count.
// On the GPU the data is reproducible on the same device and build only.
//
// Sequences are written in prompt order, a shard at a time; a run stopped at any point continues
// from the first prompt of no finished shard (TokenDatasetWriter).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../core/rng.hpp"
#include "../generate/sampler.hpp"
#include "../kernels/topk.hpp"
#include "../util/progress.hpp"
#include "sample_answers.hpp"
#include "token_dataset.hpp"

namespace mil::data {

// The sampler of METHOD §5: temperature 0.7, top-k 10, top-p 0.95, no min-p, no penalty.
inline gen::SamplingConfig label_sampling() {
  gen::SamplingConfig s;
  s.temperature = 0.7f;
  s.top_k = 10;
  s.top_p = 0.95f;
  s.min_p = 0.f;
  s.repetition_penalty = 1.f;
  return s;
}

struct LabelConfig {
  gen::SamplingConfig sampling = label_sampling();  // its seed is unused: see `seed`
  uint64_t seed = 0;
  int64_t slots = 16;                  // sequences decoded at once
  int64_t max_prompt = 512;            // longer prompts are skipped (and counted)
  int64_t max_answer = 256;            // answer tokens at most, stop token included
  int64_t sequences_per_shard = 1024;
  // The teacher's top-k log-probs stored per answer token (0: none), so that distillation can
  // skip the teacher's forward: the KL on k tokens approximates the full-vocabulary KL.
  int32_t store_topk = 0;
  int64_t max_step_tokens = 512;       // tokens per decoder step (prompt chunks + decode)
  bool progress = true;                // a progress bar on stderr
};

struct LabelStats {
  int64_t prompts = 0;          // given
  int64_t resumed_at = 0;       // the first prompt this call labelled (> 0: a run continued)
  int64_t sequences = 0;        // in the dataset now
  int64_t prompt_tokens = 0, answer_tokens = 0;
  int64_t skipped_too_long = 0, skipped_empty = 0;
  int64_t generated_tokens = 0;  // answer tokens sampled by this call
  int64_t prefill_tokens = 0;    // prompt tokens run through the teacher by this call
  double seconds = 0;            // of this call
};

// The seed of prompt i's sampler: a Philox block of (seed, i), so prompts draw independent streams.
inline uint64_t prompt_seed(uint64_t seed, int64_t prompt) {
  const rng::U32x4 r = rng::random_block(seed, uint64_t(prompt), 0);
  return uint64_t(r.v[0]) << 32 | r.v[1];
}

// The run seed of answer round r (r = 0, 1, ...) when each prompt is answered several times:
// round 0 is the run's seed itself, so a one-answer dataset does not depend on the rounds; a later
// round's seed is a Philox block prompt_seed never draws (block 1), so its answers are new draws.
inline uint64_t answer_round_seed(uint64_t seed, int64_t round) {
  if (round == 0) return seed;
  const rng::U32x4 r = rng::random_block(seed, uint64_t(round), 1);
  return uint64_t(r.v[0]) << 32 | r.v[1];
}

// The log-probabilities under the full softmax of a row's k most likely tokens (temperature 1,
// ties to the smaller id), appended to `ids` and `logprobs`, from the row's top-k and log-sum-exp
// (kernels/topk.hpp), whether the device or the host took them.
inline void append_top_logprobs(std::span<const int32_t> top_ids, std::span<const float> top_logits,
                                float logsumexp, int32_t k, std::vector<int32_t>& ids,
                                std::vector<float>& logprobs) {
  MIL_CHECK(top_ids[size_t(k - 1)] >= 0, "label_prompts: a row of the teacher's logits has fewer than ",
            k, " finite values (NaN or -inf logits): the teacher is broken");
  for (int32_t j = 0; j < k; ++j) {
    ids.push_back(top_ids[size_t(j)]);
    logprobs.push_back(float(std::min(0.0, double(top_logits[size_t(j)]) - logsumexp)));
  }
}

// Labels `prompt_tokens` (chat-rendered and tokenized by the caller) into the dataset folder
// `out_dir`, or continues the run found there. `identity` names the teacher (name, sha256), the
// tokenizer (fingerprint, vocab_size: 0 takes the model's) and the chat template; the rest of the
// manifest comes from `cfg`. Prompts that are empty or longer than max_prompt are skipped and
// counted; all of them skipped is an error.
template <Element T, Device D>
LabelStats label_prompts(const nn::HybridModel<T, D>& teacher,
                         const std::vector<std::vector<int32_t>>& prompt_tokens,
                         const std::vector<int32_t>& stop_ids, const LabelConfig& cfg,
                         const std::filesystem::path& out_dir, const DatasetManifest& identity) {
  const int64_t model_vocab = teacher.config().llama.vocab;
  const int64_t vocab = identity.vocab_size > 0 ? identity.vocab_size : model_vocab;
  MIL_CHECK(vocab <= model_vocab, "label_prompts: the tokenizer has ", vocab,
            " tokens, the teacher's logits only ", model_vocab);
  MIL_CHECK(cfg.slots >= 1 && cfg.max_prompt >= 1 && cfg.max_answer >= 1 &&
                cfg.max_step_tokens >= cfg.slots && cfg.sequences_per_shard >= 1,
            "label_prompts: slots (", cfg.slots, "), max_prompt (", cfg.max_prompt,
            "), max_answer (", cfg.max_answer, "), sequences_per_shard (", cfg.sequences_per_shard,
            ") must be >= 1 and max_step_tokens (", cfg.max_step_tokens, ") >= slots");
  MIL_CHECK(cfg.store_topk >= 0 && cfg.store_topk <= vocab, "label_prompts: store_topk ",
            cfg.store_topk, " must be in [0, ", vocab, "]");
  const int64_t n = int64_t(prompt_tokens.size());
  int64_t usable = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto& p = prompt_tokens[size_t(i)];
    for (size_t t = 0; t < p.size(); ++t)
      MIL_CHECK(p[t] >= 0 && p[t] < vocab, "label_prompts: prompt ", i, " has token id ", p[t],
                " at position ", t, ", outside the vocabulary of ", vocab);
    usable += !p.empty() && int64_t(p.size()) <= cfg.max_prompt;
  }
  MIL_CHECK(usable > 0, "label_prompts: none of the ", n, " prompts can be labelled: each is ",
            "empty or longer than max_prompt (", cfg.max_prompt, " tokens)");

  DatasetManifest settings = identity;
  settings.vocab_size = vocab;
  settings.sampling = cfg.sampling;
  settings.sampling.seed = 0;
  settings.seed = cfg.seed;
  settings.max_prompt = cfg.max_prompt;
  settings.max_answer = cfg.max_answer;
  settings.stop_ids = stop_ids;
  settings.topk = cfg.store_topk;
  settings.sequences_per_shard = cfg.sequences_per_shard;
  settings.prompt_count = n;
  settings.prompts_sha256 = prompts_hash(prompt_tokens);
  settings.compute = std::string(D::name) + " " + std::string(dtype_name(dtype_of<T>::value));
  TokenDatasetWriter writer(out_dir, settings);

  LabelStats stats;
  stats.prompts = n;
  stats.resumed_at = writer.next_prompt();
  util::ProgressBar bar("labelling", n - stats.resumed_at);
  auto finish = [&] {
    const DatasetManifest& m = writer.manifest();
    stats.sequences = m.sequences;
    stats.prompt_tokens = m.prompt_tokens;
    stats.answer_tokens = m.answer_tokens;
    stats.skipped_too_long = m.skipped_too_long;
    stats.skipped_empty = m.skipped_empty;
    stats.seconds = bar.seconds();
    return stats;
  };
  if (writer.complete()) return finish();

  // Finished prompts wait here until every earlier one is written (slots finish out of order).
  std::map<int64_t, std::optional<LabelledSequence>> ready;  // nullopt: skipped
  std::vector<SkipReason> skip_reason(size_t(n), SkipReason::empty);
  int64_t next = writer.next_prompt(), generated = 0;
  std::vector<int32_t> top_ids(size_t(std::max(cfg.store_topk, 1)));  // a whole row's top-k (CPU)
  std::vector<float> top_values(top_ids.size());
  float top_lse = 0;

  auto write_ready = [&] {
    for (auto it = ready.begin(); it != ready.end() && it->first == writer.next_prompt();
         it = ready.erase(it)) {
      if (it->second)
        writer.add(it->first, std::move(*it->second));
      else
        writer.skip(it->first, skip_reason[size_t(it->first)]);
    }
    if (cfg.progress)
      bar.update(writer.next_prompt() - stats.resumed_at, answer_rate(generated, bar.seconds()));
  };
  auto next_job = [&]() -> std::optional<AnswerJob> {
    for (; next < n; ++next) {  // skipped prompts are settled at once
      const auto& p = prompt_tokens[size_t(next)];
      if (!p.empty() && int64_t(p.size()) <= cfg.max_prompt) break;
      skip_reason[size_t(next)] = p.empty() ? SkipReason::empty : SkipReason::too_long;
      ready[next] = std::nullopt;
    }
    write_ready();
    if (next == n) return std::nullopt;
    const int64_t i = next++;
    return AnswerJob{i, prompt_tokens[size_t(i)], prompt_seed(cfg.seed, i)};
  };
  auto on_row = [&](int64_t, const AnswerRow& row, LabelledSequence& seq) {
    ++generated;
    if (!cfg.store_topk) return;
    if (!row.logits.empty()) {  // the whole row (CPU): its top-k here, as the device does
      const int64_t cols = int64_t(row.logits.size());
      cpu::topk_rows(top_ids.data(), top_values.data(), &top_lse, row.logits.data(), 1, cols, cols,
                     cfg.store_topk);
      append_top_logprobs(top_ids, top_values, top_lse, cfg.store_topk, seq.topk_ids, seq.topk_logprobs);
    } else {
      append_top_logprobs(row.top_ids, row.top_logits, row.logsumexp, cfg.store_topk, seq.topk_ids,
                          seq.topk_logprobs);
    }
  };
  auto on_done = [&](int64_t prompt, LabelledSequence&& seq) {
    seq.topk = cfg.store_topk;
    ready[prompt] = std::move(seq);
    write_ready();
  };
  AnswerSampling as;
  as.sampling = cfg.sampling;
  as.stop_ids = stop_ids;
  as.slots = cfg.slots;
  as.max_prompt = cfg.max_prompt;
  as.max_answer = cfg.max_answer;
  as.max_step_tokens = cfg.max_step_tokens;
  as.vocab = vocab;
  as.row_topk = cfg.store_topk <= kMaxTopK ? std::max(cfg.store_topk, 1) : 0;
  const AnswerCounts counts = sample_answers(teacher, as, next_job, on_row, on_done);
  stats.generated_tokens = counts.generated_tokens;
  stats.prefill_tokens = counts.prefill_tokens;
  writer.finish();
  return finish();
}

}  // namespace mil::data
