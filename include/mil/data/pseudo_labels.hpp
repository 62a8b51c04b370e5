#pragma once
// Pseudo-labels (docs/METHOD.md §5): the teacher answers each prompt by sampling, and the prompt
// with its answer becomes one sequence of a token dataset (data/token_dataset.hpp).
//
// The prompts are decoded in a batch of `slots` sequences through the decoder's step plan
// (nn/decoder.hpp), continuously: a free slot takes the next prompt, one step feeds every live
// slot its last sampled token and fills what is left of the step with prompt chunks, and a slot
// whose answer ended (a stop token, kept in the answer so that the student learns to stop, or
// max_answer tokens) is refilled. The draws of prompt i come from its own sampler, seeded from
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
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../core/rng.hpp"
#include "../generate/sampler.hpp"
#include "../nn/decoder.hpp"
#include "../util/progress.hpp"
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

// The k most likely tokens of a logits row at temperature 1 (ties to the smaller id) and their
// log-probabilities under the full softmax, appended to `ids` and `logprobs`.
inline void append_topk(std::span<const float> logits, int32_t k, std::vector<int32_t>& ids,
                        std::vector<float>& logprobs, std::vector<int32_t>& scratch) {
  double top = -INFINITY;
  for (float l : logits) top = std::max(top, double(l));
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - top);
  const double log_z = top + std::log(sum);
  scratch.resize(logits.size());
  std::iota(scratch.begin(), scratch.end(), 0);
  std::partial_sort(scratch.begin(), scratch.begin() + k, scratch.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  for (int32_t i = 0; i < k; ++i) {
    ids.push_back(scratch[size_t(i)]);
    logprobs.push_back(float(std::min(0.0, double(logits[size_t(scratch[size_t(i)])]) - log_z)));
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

  nn::DecoderOptions o;
  o.slots = cfg.slots;
  o.max_seq = cfg.max_prompt + cfg.max_answer;
  o.max_tokens = cfg.max_step_tokens;
  nn::Decoder<T, D> dec(teacher, o);

  struct Slot {
    int64_t prompt = -1;  // -1: free
    int64_t fed = 0;      // tokens of `seq` run through the teacher
    LabelledSequence seq;
    std::optional<gen::Sampler> sampler;
  };
  std::vector<Slot> slots(size_t(cfg.slots));
  // Finished prompts wait here until every earlier one is written (slots finish out of order).
  std::map<int64_t, std::optional<LabelledSequence>> ready;  // nullopt: skipped
  std::vector<SkipReason> skip_reason(size_t(n), SkipReason::empty);
  int64_t next = writer.next_prompt(), live = 0;
  std::vector<int32_t> topk_scratch;

  auto write_ready = [&] {
    for (auto it = ready.begin(); it != ready.end() && it->first == writer.next_prompt();
         it = ready.erase(it)) {
      if (it->second)
        writer.add(it->first, std::move(*it->second));
      else
        writer.skip(it->first, skip_reason[size_t(it->first)]);
    }
    if (cfg.progress) {
      const double s = bar.seconds();
      char fields[96];
      std::snprintf(fields, sizeof fields, "%.0f tok/s (%lld answer tokens)",
                    s > 0 ? double(stats.generated_tokens) / s : 0.0,
                    (long long)stats.generated_tokens);
      bar.update(writer.next_prompt() - stats.resumed_at, fields);
    }
  };

  std::vector<nn::StepRow> rows;
  std::vector<size_t> row_slot;  // the slot of each row
  for (;;) {
    for (size_t s = 0; s < slots.size() && next < n; ++s) {
      if (slots[s].prompt >= 0) continue;
      for (; next < n; ++next) {  // skipped prompts are settled at once
        const auto& p = prompt_tokens[size_t(next)];
        if (!p.empty() && int64_t(p.size()) <= cfg.max_prompt) break;
        skip_reason[size_t(next)] = p.empty() ? SkipReason::empty : SkipReason::too_long;
        ready[next] = std::nullopt;
      }
      if (next == n) break;
      Slot& slot = slots[s];
      slot.prompt = next;
      slot.fed = 0;
      slot.seq = {};
      slot.seq.tokens = prompt_tokens[size_t(next)];
      slot.seq.prompt_len = int32_t(slot.seq.tokens.size());
      slot.seq.topk = cfg.store_topk;
      gen::SamplingConfig sc = cfg.sampling;
      sc.seed = prompt_seed(cfg.seed, next);
      slot.sampler.emplace(sc);
      ++live;
      ++next;
    }
    write_ready();
    if (live == 0) break;

    // One step: every slot past its prompt feeds its last token; prompt chunks fill the rest.
    rows.clear();
    row_slot.clear();
    int64_t budget = dec.max_tokens();
    for (size_t s = 0; s < slots.size(); ++s) {
      Slot& slot = slots[s];
      if (slot.prompt < 0 || slot.fed < slot.seq.prompt_len) continue;
      rows.push_back({int32_t(s), std::span(slot.seq.tokens).subspan(size_t(slot.fed), 1), -1,
                      nn::RowLogits::last});
      row_slot.push_back(s);
      --budget;
    }
    for (size_t s = 0; s < slots.size() && budget > 0; ++s) {
      Slot& slot = slots[s];
      if (slot.prompt < 0 || slot.fed >= slot.seq.prompt_len) continue;
      const int64_t chunk = std::min(budget, slot.seq.prompt_len - slot.fed);
      const bool last = slot.fed + chunk == slot.seq.prompt_len;
      rows.push_back({int32_t(s), std::span(slot.seq.tokens).subspan(size_t(slot.fed), size_t(chunk)),
                      slot.fed == 0 ? 0 : -1, last ? nn::RowLogits::last : nn::RowLogits::none});
      row_slot.push_back(s);
      budget -= chunk;
      stats.prefill_tokens += chunk;
    }
    dec.step(rows);
    const std::vector<float> logits = dec.logits_host();

    for (size_t r = 0; r < rows.size(); ++r) {
      Slot& slot = slots[row_slot[r]];
      slot.fed += int64_t(rows[r].ids.size());
      if (rows[r].logits == nn::RowLogits::none) continue;
      const std::span<const float> row(logits.data() + dec.logit_offset(r) * model_vocab,
                                       size_t(vocab));
      LabelledSequence& seq = slot.seq;
      if (cfg.store_topk)
        append_topk(row, cfg.store_topk, seq.topk_ids, seq.topk_logprobs, topk_scratch);
      const int32_t token = slot.sampler->sample(row, seq.tokens);
      seq.tokens.push_back(token);
      ++stats.generated_tokens;
      const bool stop = std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
      if (stop || seq.answer_len() == cfg.max_answer) {
        ready[slot.prompt] = std::move(seq);
        slot.prompt = -1;
        --live;
      }
    }
  }
  writer.finish();
  return finish();
}

}  // namespace mil::data
