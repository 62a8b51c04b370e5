#pragma once
// Answers sampled for many prompts in a batch of `slots` sequences, continuously, through the
// decoder's step plan (nn/decoder.hpp): a free slot takes the next job, one step feeds every live
// slot its last sampled token and fills what is left of the step with prompt chunks, and a slot
// whose answer ended (a stop token, kept in the answer, or max_answer tokens) takes the next job.
// Each job brings its own sampler seed, so an answer does not depend on which slot or step
// carried it; on the CPU the products are row-invariant, so the answers are bitwise the same at
// any slot count. The pseudo-labeller (teacher answers) and the preference-pair maker (student
// samples) both decode through here.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../generate/sampler.hpp"
#include "../nn/decoder.hpp"
#include "sequence.hpp"

namespace mil::data {

struct AnswerSampling {
  gen::SamplingConfig sampling;  // its seed is unused: each job brings one
  std::vector<int32_t> stop_ids;
  int64_t slots = 16;            // sequences decoded at once
  int64_t max_prompt = 512;      // the longest prompt a job may bring
  int64_t max_answer = 256;      // answer tokens at most, stop token included
  int64_t max_step_tokens = 512; // tokens per decoder step (prompt chunks + decode)
  int64_t vocab = 0;             // logits sampled from: the first `vocab` of each row (0: all)
  // What on_row needs: 0 the whole row; k > 0 only the k best logits and the log-sum-exp. Then
  // on the GPU, where the sampler allows it (a top-k of at most k, no repetition penalty), the
  // rows' top-k is taken on the device and only that comes to the host.
  int32_t row_topk = 0;
};

// One row of logits as on_row sees it: the whole row (the first `vocab`) when the host has it,
// and the row's k best (ids, values; kernels/topk.hpp) with its log-sum-exp when the device
// sent only those.
struct AnswerRow {
  std::span<const float> logits;  // empty when only the top came
  std::span<const int32_t> top_ids;
  std::span<const float> top_logits;
  float logsumexp = 0;
};

// One prompt to answer: `id` is the caller's (handed back with the answer), `prompt` must stay
// valid until the answer is handed back.
struct AnswerJob {
  int64_t id = 0;
  std::span<const int32_t> prompt;
  uint64_t seed = 0;
};

// The progress bar's fields while answers are sampled: the rate and the count so far.
inline std::string answer_rate(int64_t tokens, double seconds) {
  char fields[96];
  std::snprintf(fields, sizeof fields, "%.0f tok/s (%lld answer tokens)",
                seconds > 0 ? double(tokens) / seconds : 0.0, (long long)tokens);
  return fields;
}

struct AnswerCounts {
  int64_t generated_tokens = 0;  // answer tokens sampled
  int64_t prefill_tokens = 0;    // prompt tokens run through the model
};

// Decodes jobs until `next_job()` returns nullopt and every slot is done. `on_row(id, AnswerRow,
// sequence)` sees each row of logits before a token is sampled from it, with
// the sequence so far (it may add per-token data, e.g. top-k); `on_done(id, sequence)` receives
// each finished prompt + answer, in the order they finish. Both run the caller's bookkeeping
// (writing, progress), never the model.
template <Element T, Device D, class NextJob, class OnRow, class OnDone>
AnswerCounts sample_answers(const nn::HybridModel<T, D>& model, const AnswerSampling& cfg,
                            NextJob&& next_job, OnRow&& on_row, OnDone&& on_done) {
  const int64_t model_vocab = model.config().llama.vocab;
  const int64_t vocab = cfg.vocab > 0 ? cfg.vocab : model_vocab;
  MIL_CHECK(vocab <= model_vocab, "sample_answers: ", vocab, " tokens sampled from logits of ",
            model_vocab);
  MIL_CHECK(cfg.slots >= 1 && cfg.max_prompt >= 1 && cfg.max_answer >= 1 &&
                cfg.max_step_tokens >= cfg.slots,
            "sample_answers: slots (", cfg.slots, "), max_prompt (", cfg.max_prompt,
            "), max_answer (", cfg.max_answer, ") must be >= 1 and max_step_tokens (",
            cfg.max_step_tokens, ") >= slots");
  nn::DecoderOptions o;
  o.slots = cfg.slots;
  o.max_seq = cfg.max_prompt + cfg.max_answer;
  o.max_tokens = cfg.max_step_tokens;
  nn::Decoder<T, D> dec(model, o);
  // On the GPU, send the host each row's top-k rather than the row (~50k logits) when that is
  // all the sampler and on_row need: at a few hundred slots the copy and a host pass over every
  // row would otherwise cost more than the step.
  const int32_t top_k = std::max(cfg.row_topk, cfg.sampling.greedy() ? 1 : cfg.sampling.top_k);
  const bool device_top = !std::is_same_v<D, Cpu> && cfg.row_topk > 0 && top_k <= kMaxTopK &&
                          gen::Sampler(cfg.sampling).samples_from_top(top_k);

  struct Slot {
    int64_t id = -1;
    bool live = false;
    int64_t fed = 0;  // tokens of `seq` run through the model
    int64_t admitted = 0;  // when the job came: prompts are fed oldest first
    LabelledSequence seq;
    std::optional<gen::Sampler> sampler;
  };
  std::vector<Slot> slots(size_t(cfg.slots));
  AnswerCounts counts;
  int64_t live = 0, admissions = 0;
  bool jobs_left = true;
  std::vector<size_t> waiting;  // slots still feeding their prompts, oldest job first
  std::vector<nn::StepRow> rows;
  std::vector<size_t> row_slot;  // the slot of each row
  for (;;) {
    for (size_t s = 0; s < slots.size() && jobs_left; ++s) {
      if (slots[s].live) continue;
      std::optional<AnswerJob> job = next_job();
      if (!job) {
        jobs_left = false;
        break;
      }
      MIL_CHECK(!job->prompt.empty() && int64_t(job->prompt.size()) <= cfg.max_prompt,
                "sample_answers: job ", job->id, " has ", job->prompt.size(),
                " prompt tokens (1 to ", cfg.max_prompt, ")");
      Slot& slot = slots[s];
      slot.id = job->id;
      slot.live = true;
      slot.fed = 0;
      slot.admitted = admissions++;
      slot.seq = {};
      slot.seq.tokens.assign(job->prompt.begin(), job->prompt.end());
      slot.seq.prompt_len = int32_t(slot.seq.tokens.size());
      gen::SamplingConfig sc = cfg.sampling;
      sc.seed = job->seed;
      slot.sampler.emplace(sc);
      ++live;
    }
    if (live == 0) break;

    // One step: every slot past its prompt feeds its last token; prompt chunks fill the rest.
    rows.clear();
    row_slot.clear();
    int64_t budget = dec.max_tokens();
    for (size_t s = 0; s < slots.size(); ++s) {
      Slot& slot = slots[s];
      if (!slot.live || slot.fed < slot.seq.prompt_len) continue;
      rows.push_back({int32_t(s), std::span(slot.seq.tokens).subspan(size_t(slot.fed), 1), -1,
                      nn::RowLogits::last});
      row_slot.push_back(s);
      --budget;
    }
    // Prompt chunks, oldest job first: in slot order a prompt in a high slot could wait while
    // lower slots take new prompts, and the in-order writers (labels, pairs) would hold every
    // later answer back behind it.
    waiting.clear();
    for (size_t s = 0; s < slots.size(); ++s)
      if (slots[s].live && slots[s].fed < slots[s].seq.prompt_len) waiting.push_back(s);
    std::sort(waiting.begin(), waiting.end(),
              [&](size_t a, size_t b) { return slots[a].admitted < slots[b].admitted; });
    for (size_t s : waiting) {
      if (budget == 0) break;
      Slot& slot = slots[s];
      const int64_t chunk = std::min(budget, slot.seq.prompt_len - slot.fed);
      const bool last = slot.fed + chunk == slot.seq.prompt_len;
      rows.push_back({int32_t(s), std::span(slot.seq.tokens).subspan(size_t(slot.fed), size_t(chunk)),
                      slot.fed == 0 ? 0 : -1, last ? nn::RowLogits::last : nn::RowLogits::none});
      row_slot.push_back(s);
      budget -= chunk;
      counts.prefill_tokens += chunk;
    }
    dec.step(rows);
    std::vector<float> logits;
    nn::RowTopK top;
    if (device_top)
      top = dec.topk_host(top_k, vocab);
    else
      logits = dec.logits_host();

    for (size_t r = 0; r < rows.size(); ++r) {
      Slot& slot = slots[row_slot[r]];
      slot.fed += int64_t(rows[r].ids.size());
      if (rows[r].logits == nn::RowLogits::none) continue;
      const int64_t at = dec.logit_offset(r);
      LabelledSequence& seq = slot.seq;
      int32_t token;
      if (device_top) {
        on_row(slot.id, AnswerRow{{}, top.ids_of(at), top.values_of(at), top.logsumexp[size_t(at)]}, seq);
        token = slot.sampler->sample_top(top.ids_of(at), top.values_of(at));
      } else {
        const std::span<const float> row(logits.data() + at * model_vocab, size_t(vocab));
        on_row(slot.id, AnswerRow{row, {}, {}, 0.f}, seq);
        token = slot.sampler->sample(row, seq.tokens);
      }
      seq.tokens.push_back(token);
      ++counts.generated_tokens;
      const bool stop = std::find(cfg.stop_ids.begin(), cfg.stop_ids.end(), token) != cfg.stop_ids.end();
      if (stop || seq.answer_len() == cfg.max_answer) {
        slot.live = false;
        --live;
        on_done(slot.id, std::move(seq));
      }
    }
  }
  return counts;
}

}  // namespace mil::data
