#pragma once
// Speculative decoding: a draft proposes up to K tokens, the target checks them all in one step
// (K + 1 logits rows), and a token is kept or the first rejected one replaced:
//
// - Greedy: tokens are kept while they equal the target's own greedy choices; the target's choice
//   after the last kept one comes free. The output is the target's greedy output, token for
//   token: on the CPU the decoder's products are row-invariant, so a verification row gives
//   bitwise the logits of a decode step.
// - Sampling (Leviathan et al., "Fast Inference from Transformers via Speculative Decoding"):
//   drafted token x, drawn from the draft's distribution q (a deterministic draft: q(x) = 1), is
//   kept with probability min(1, p(x) / q(x)), p the target's distribution after the sampler's
//   chain (penalty, top-k, temperature, top-p, min-p); the first rejected one is replaced by a
//   draw from max(0, p - q), normalised; when all are kept, a bonus token is drawn from p after
//   the last. Each generated token then has the target sampler's distribution exactly.
//
// Going back after a rejection: an all-attention target truncates its KV cache; a target with
// Mamba layers restores the state saved before the step and runs the kept tokens again (one more
// step of at most K + 1 tokens; the states are small, see METHOD's multistep notes). Drafts:
// prompt lookup (the tokens that followed the latest earlier occurrence of the context's last
// n-gram) and any model with the target's vocabulary (DecoderDraft).
#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "../data/token_dataset.hpp"
#include "../nn/decoder.hpp"
#include "generate.hpp"

namespace mil::gen {

// Drafted tokens and, from a draft that samples, the distribution each was drawn from (none: the
// tokens were chosen deterministically, all probability on each).
struct Proposal {
  std::vector<int32_t> tokens;
  std::vector<TokenDistribution> drawn_from;
};

// Proposes up to `max` tokens to follow `context` (the prompt and every token generated so far).
class Draft {
 public:
  virtual ~Draft() = default;
  // Greedy decoding's proposal.
  virtual std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) = 0;
  // Sampling's: a draft with a distribution of its own draws from it with `sampler`; others
  // propose as for greedy decoding.
  virtual Proposal propose_sampled(std::span<const int32_t> context, int64_t max, Sampler& sampler) {
    (void)sampler;
    return {propose(context, max), {}};
  }
};

// Prompt lookup: the longest n-gram (ngram_max down to ngram_min) ending the context that occurred
// earlier in it; proposes the tokens that followed its latest earlier occurrence. No model: it
// pays off where the answer repeats the prompt or itself (code edits, extraction, loops).
class PromptLookupDraft final : public Draft {
 public:
  explicit PromptLookupDraft(int64_t ngram_max = 3, int64_t ngram_min = 1)
      : ngram_max_(ngram_max), ngram_min_(ngram_min) {
    MIL_CHECK(ngram_min >= 1 && ngram_max >= ngram_min, "prompt lookup: n-gram sizes ", ngram_min,
              "..", ngram_max, " (need 1 <= min <= max)");
  }
  std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) override {
    const int64_t len = int64_t(context.size());
    if (max <= 0) return {};
    for (int64_t n = std::min(ngram_max_, len - 1); n >= ngram_min_; --n) {
      const auto tail = context.subspan(size_t(len - n));
      // The latest earlier occurrence (it may overlap the tail itself).
      for (int64_t p = len - n - 1; p >= 0; --p) {
        if (!std::equal(tail.begin(), tail.end(), context.begin() + p)) continue;
        const int64_t from = p + n, count = std::min(max, len - from);
        return {context.begin() + from, context.begin() + from + count};
      }
    }
    return {};
  }

 private:
  int64_t ngram_max_, ngram_min_;
};

// A draft model's continuation (greedy, or drawn by the sampler), on a decoder of its own (slot
// 0). It keeps the tokens it has been fed and, on each call, goes back to the longest prefix they
// share with the context: by truncation for an all-attention draft, by starting over for one with
// Mamba layers (correct, but it prefills the whole context again: give hybrids an all-attention
// draft).
template <Element T, Device D>
class DecoderDraft final : public Draft {
 public:
  // `decoder` must outlive the draft; it needs room for the context and K tokens.
  explicit DecoderDraft(nn::Decoder<T, D>& decoder) : dec_(decoder) { dec_.reset(0); }

  std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) override {
    return run(context, max, nullptr).tokens;
  }
  // Draws each token from the draft model's distribution under the sampler's chain.
  Proposal propose_sampled(std::span<const int32_t> context, int64_t max, Sampler& sampler) override {
    return run(context, max, &sampler);
  }

 private:
  Proposal run(std::span<const int32_t> context, int64_t max, Sampler* sampler) {
    MIL_CHECK(!context.empty(), "draft: empty context");
    max = std::min(max, dec_.options().max_seq - int64_t(context.size()));
    if (max <= 0) return {};
    // Feed everything but the context's last token, which the first draft step feeds.
    const auto known = context.first(context.size() - 1);
    size_t common = 0;
    while (common < fed_.size() && common < known.size() && fed_[common] == known[common]) ++common;
    if (common < fed_.size()) {
      if (!dec_.can_rewind()) common = 0;
      dec_.truncate(0, int64_t(common));
      fed_.resize(common);
    }
    if (common < known.size()) {
      dec_.prefill(0, known.subspan(common));
      fed_.assign(known.begin(), known.end());
    }
    Proposal out;
    int32_t next = context.back();
    const int32_t slot = 0;
    for (int64_t i = 0; i < max; ++i) {
      dec_.decode(std::span(&slot, 1), std::span(&next, 1));
      fed_.push_back(next);
      if (sampler) {
        out.drawn_from.push_back(sampler->distribution(dec_.logits_host(), fed_));
        next = sampler->draw(out.drawn_from.back());
      } else {
        next = dec_.argmax()[0];
      }
      out.tokens.push_back(next);
    }
    return out;
  }

  nn::Decoder<T, D>& dec_;
  std::vector<int32_t> fed_;  // the tokens in the draft decoder's slot 0
};

// Refuses a draft whose tokens would mean other text than the target's: the same tokenizer (every
// token, merge, score and special id; data::tokenizer_fingerprint) and vocabulary size.
inline void check_draft_tokenizer(const text::Tokenizer& target, int64_t target_vocab,
                                  const text::Tokenizer& draft, int64_t draft_vocab,
                                  const std::string& draft_name) {
  MIL_CHECK(draft_vocab == target_vocab &&
                data::tokenizer_fingerprint(draft) == data::tokenizer_fingerprint(target),
            "the draft model '", draft_name, "' does not share the target's tokenizer (vocabularies of ",
            draft_vocab, " and ", target_vocab, " tokens",
            draft_vocab == target_vocab ? ", different tokens or merges" : "",
            "): its tokens would mean other text");
}

struct SpeculativeConfig {
  int64_t draft_max = 4;  // K: tokens proposed per target step at most
  int64_t draft_min = 0;  // proposals shorter than this are not verified (a plain decode step)
  int64_t snapshot = 0;   // the target's snapshot used to go back (Mamba layers)
  // Sampling: after a rejection, draw from max(0, p - q) (the rule). false draws from p instead,
  // which is wrong (tokens the draft favours come too often); it exists so that the statistical
  // test can show it notices.
  bool resample_residual = true;
  // Adaptive draft length: start at draft_max, then after each check 2 more when every draft was
  // kept, 1 fewer otherwise (at least max(1, draft_min), at most draft_max): a draft that keeps
  // failing wastes fewer draft steps.
  bool adaptive = false;
};

// The first rejection's replacement: a draw from max(0, p - q) normalised (q: the distribution the
// rejected token was drawn from, or all on `rejected` for a deterministic draft). `q_dense` is
// scratch of the vocabulary's size, all zero, and left so.
inline int32_t draw_residual(Sampler& sampler, const TokenDistribution& p, const TokenDistribution* q,
                             int32_t rejected, std::vector<double>& q_dense) {
  auto each_q = [&](auto&& f) {
    if (!q) return f(rejected, 1.0);
    for (size_t i = 0; i < q->ids.size(); ++i) f(q->ids[i], q->weights[i] / q->total);
  };
  each_q([&](int32_t id, double prob) {
    MIL_CHECK(id >= 0 && size_t(id) < q_dense.size(), "speculative decoding: drafted token ", id,
              " is outside the target's vocabulary of ", q_dense.size());
    q_dense[size_t(id)] = prob;
  });
  TokenDistribution residual;
  for (size_t i = 0; i < p.ids.size(); ++i) {
    const double w = p.weights[i] / p.total - q_dense[size_t(p.ids[i])];
    if (w <= 0) continue;
    residual.ids.push_back(p.ids[i]);
    residual.weights.push_back(w);
    residual.total += w;
  }
  each_q([&](int32_t id, double) { q_dense[size_t(id)] = 0; });
  // p <= q everywhere means a rejection had probability 0; rounding can still get here.
  return sampler.draw(residual.ids.empty() ? p : residual);
}

struct SpeculativeStats {
  int64_t target_steps = 0;  // verification and plain decode steps of the target after the prompt
  int64_t replays = 0;       // state restores + re-runs of kept tokens (Mamba), one per rollback
  int64_t drafted = 0;       // tokens proposed and verified
  int64_t accepted = 0;      // of them, kept
  int64_t generated = 0;     // tokens chosen, including a final stop token
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0; }
  // Tokens per target step, the first token left out (it comes from the prompt's logits, before
  // any step): 1 when no draft is kept, at most K + 1.
  double tokens_per_step() const {
    return target_steps ? double(std::max<int64_t>(generated - 1, 0)) / double(target_steps) : 0;
  }
};

// One sequence of a batched speculative call: the slot it runs in, its draft (a DecoderDraft
// serves one sequence; prompt lookup may serve several), the tokens the slot holds already (a
// chat's earlier turns, which the draft sees before `prompt`), and its own generation settings.
struct SpeculativeRequest {
  int64_t slot = 0;
  Draft* draft = nullptr;
  std::span<const int32_t> held, prompt;
  GenerateConfig cfg;
  std::function<void(std::string_view)> on_text;
};

// generate()'s contract (stop tokens, stop strings, token budget, context size) for several
// sequences at once, with the tokens proposed by each one's draft and checked by `target` in one
// step for all of them (each sequence's next token and up to K drafts). Each sequence keeps as many
// of its drafts as it accepts and goes back on its own: its KV cache is truncated, or its Mamba
// states are restored and its kept tokens run again (the replays of a step share one step too).
// The target decoder needs max_tokens and max_logits >= sequences x (K + 1) and, with Mamba layers,
// snapshot sc.snapshot. Afterwards each slot holds, as after generate(), its prompt and every
// chosen token but the last. Each sequence's tokens are those it gets alone: on the CPU the
// decoder's products are row-invariant, so a row's logits do not depend on its neighbours.
template <Element T, Device D>
std::vector<GenerateResult> speculative_generate_batch(nn::Decoder<T, D>& target,
                                                       std::span<const SpeculativeRequest> requests,
                                                       const text::Tokenizer& tokenizer,
                                                       const SpeculativeConfig& sc,
                                                       std::vector<SpeculativeStats>* stats = nullptr) {
  using clock = std::chrono::steady_clock;
  const int64_t n = int64_t(requests.size());
  MIL_CHECK(sc.draft_max >= 1 && sc.draft_min >= 0 && sc.draft_min <= sc.draft_max,
            "speculative decoding: draft lengths min ", sc.draft_min, ", max ", sc.draft_max,
            " (need 0 <= min <= max, max >= 1)");
  MIL_CHECK(target.max_tokens() >= n * (sc.draft_max + 1) && target.max_logits() >= n * (sc.draft_max + 1),
            "speculative decoding: the target decoder takes ", target.max_tokens(), " tokens and ",
            target.max_logits(), " logits rows per step; verifying ", sc.draft_max, " drafted tokens for ",
            n, " sequence(s) needs ", n * (sc.draft_max + 1), " of each (DecoderOptions max_tokens, max_logits)");
  MIL_CHECK(target.can_rewind() || (sc.snapshot >= 0 && sc.snapshot < target.options().snapshots),
            "speculative decoding: a target with Mamba layers needs a saved state to go back to "
            "after a rejection: snapshot ", sc.snapshot, " of ", target.options().snapshots,
            " (DecoderOptions::snapshots)");
  for (int64_t i = 0; i < n; ++i) {
    const SpeculativeRequest& q = requests[size_t(i)];
    MIL_CHECK(q.draft, "speculative decoding: sequence ", i, " has no draft");
    MIL_CHECK(q.cfg.max_new_tokens >= 0, "speculative decoding: max_new_tokens ", q.cfg.max_new_tokens, " < 0");
    MIL_CHECK(q.slot >= 0 && q.slot < target.options().slots, "speculative decoding: slot ", q.slot,
              " of a decoder of ", target.options().slots);
    for (int64_t j = 0; j < i; ++j)
      MIL_CHECK(requests[size_t(j)].slot != q.slot, "speculative decoding: sequences ", j, " and ", i,
                " share slot ", q.slot);
    MIL_CHECK(int64_t(q.held.size()) == target.length(q.slot), "speculative decoding: ", q.held.size(),
              " held tokens for a slot of ", target.length(q.slot));
  }
  const int64_t vocab = target.config().vocab, max_seq = target.options().max_seq;

  // A sequence's progress. The drafts of this step, its place among the step's rows, and what the
  // check decided are kept between the phases of a step.
  struct Sequence {
    const SpeculativeRequest& q;
    GenerateResult r;
    SpeculativeStats st;
    std::vector<int32_t> history;  // held + prompt + every chosen token
    TextStream out;
    // Greedy without a penalty compares with the argmax computed where the logits are; otherwise
    // each row's distribution comes from the sampler (greedy with a penalty: all on one token).
    bool device_greedy;
    Sampler sampler, draft_sampler;
    int64_t k_now;      // this step's draft length at most
    int32_t next = 0;   // chosen, not yet fed
    bool active = true;
    Proposal proposal;  // this step's drafts
    std::vector<int32_t> row_ids;
    int64_t length = 0, row = -1, kept = 0;
    int32_t after = 0;

    Sequence(const SpeculativeRequest& request, const text::Tokenizer& tokenizer, int64_t k)
        : q(request), out(tokenizer, request.cfg.stop_strings, r.text, request.on_text),
          device_greedy(request.cfg.sampling.greedy() && request.cfg.sampling.repetition_penalty == 1.f),
          sampler(request.cfg.sampling), draft_sampler(draft_config(request.cfg.sampling)), k_now(k) {}
    static SamplingConfig draft_config(SamplingConfig c) {
      c.seed ^= 0x9e3779b97f4a7c15ull;  // a stream of its own
      return c;
    }
    // Takes one chosen token; false when generation ends with it.
    bool take(int32_t token) {
      ++r.sampled;
      if (std::find(q.cfg.stop_tokens.begin(), q.cfg.stop_tokens.end(), token) != q.cfg.stop_tokens.end()) {
        r.reason = StopReason::stop_token;
        return false;
      }
      r.tokens.push_back(token);
      history.push_back(token);
      if (!out.push(token)) {
        r.reason = StopReason::stop_string;
        return false;
      }
      return r.sampled < q.cfg.max_new_tokens;
    }
    // The choice after a logits row (greedy on the device, else the sampler's draw).
    int32_t choose(std::span<const int32_t> argmax, const std::vector<float>& logits, int64_t logit_row,
                   int64_t vocab) {
      if (device_greedy) return argmax[size_t(logit_row)];
      return sampler.sample(std::span(logits).subspan(size_t(logit_row * vocab), size_t(vocab)), history);
    }
  };
  std::vector<std::unique_ptr<Sequence>> seqs;  // TextStream holds references into its Sequence
  bool host_logits = false;
  for (const SpeculativeRequest& q : requests) {
    seqs.push_back(std::make_unique<Sequence>(q, tokenizer, sc.draft_max));
    host_logits |= !seqs.back()->device_greedy;
  }
  std::vector<double> q_dense(host_logits ? size_t(vocab) : 0);
  std::vector<float> logits;

  for (auto& p : seqs) {
    Sequence& z = *p;
    z.r.prompt_tokens = int64_t(z.q.prompt.size());
    const auto t0 = clock::now();
    target.prefill(z.q.slot, z.q.prompt);
    z.r.prompt_seconds = std::chrono::duration<double>(clock::now() - t0).count();
    z.history.assign(z.q.held.begin(), z.q.held.end());
    z.history.insert(z.history.end(), z.q.prompt.begin(), z.q.prompt.end());
    z.r.reason = StopReason::max_tokens;
    if (!z.device_greedy) logits = target.logits_host();
    z.next = z.choose(target.argmax(), logits, 0, vocab);
    z.active = z.q.cfg.max_new_tokens > 0 && z.take(z.next);
  }
  const auto t1 = clock::now();

  std::vector<nn::StepRow> rows, replays;
  std::vector<Sequence*> stepped;
  for (;;) {
    // 1. Drafts, and one row per sequence: its next token, then its drafts.
    rows.clear();
    stepped.clear();
    for (auto& p : seqs) {
      Sequence& z = *p;
      if (!z.active) continue;
      z.length = target.length(z.q.slot);
      if (z.length >= max_seq) {
        z.r.reason = StopReason::context_full;
        z.active = false;
        continue;
      }
      // Drafts beyond the token budget or the context would be wasted.
      const int64_t k_max = std::min({z.k_now, z.q.cfg.max_new_tokens - z.r.sampled - 1, max_seq - z.length - 1});
      z.proposal = {};
      if (k_max > 0)
        z.proposal = z.q.cfg.sampling.greedy() ? Proposal{z.q.draft->propose(z.history, k_max), {}}
                                               : z.q.draft->propose_sampled(z.history, k_max, z.draft_sampler);
      std::vector<int32_t>& drafted = z.proposal.tokens;
      if (int64_t(drafted.size()) > k_max) drafted.resize(size_t(k_max));
      MIL_CHECK(z.proposal.drawn_from.empty() || z.proposal.drawn_from.size() >= drafted.size(),
                "speculative decoding: the draft gave ", z.proposal.drawn_from.size(), " distributions for ",
                drafted.size(), " tokens");
      if (int64_t(drafted.size()) < std::max<int64_t>(sc.draft_min, 1)) drafted.clear();  // a plain decode step
      const bool check = !drafted.empty();
      if (check && !target.can_rewind()) target.save_state(z.q.slot, sc.snapshot);
      z.row_ids.assign(1, z.next);
      z.row_ids.insert(z.row_ids.end(), drafted.begin(), drafted.end());
      z.row = int64_t(rows.size());
      rows.push_back({int32_t(z.q.slot), z.row_ids, -1, check ? nn::RowLogits::all : nn::RowLogits::last});
      stepped.push_back(&z);
    }
    if (rows.empty()) break;

    // 2. One target step for every sequence, then each one's check.
    target.step(rows);
    if (host_logits) logits = target.logits_host();
    const auto argmax = target.argmax();
    for (Sequence* zp : stepped) {
      Sequence& z = *zp;
      ++z.st.target_steps;
      const int64_t first = target.logit_offset(size_t(z.row));  // row i: after row_ids[0..i]
      const std::vector<int32_t>& drafted = z.proposal.tokens;
      const int64_t k = int64_t(drafted.size());
      z.kept = 0;
      if (k == 0) {
        z.after = z.choose(argmax, logits, first, vocab);
        continue;
      }
      if (z.device_greedy) {
        while (z.kept < k && drafted[size_t(z.kept)] == argmax[size_t(first + z.kept)]) ++z.kept;
        z.after = argmax[size_t(first + z.kept)];
      } else {
        auto row = [&](int64_t i) { return std::span(logits).subspan(size_t((first + i) * vocab), size_t(vocab)); };
        std::vector<int32_t> before = z.history;
        for (;; ++z.kept) {
          const auto p = z.sampler.distribution(row(z.kept), before);
          if (z.kept == k) {  // every draft kept: the bonus token
            z.after = z.sampler.draw(p);
            break;
          }
          const int32_t x = drafted[size_t(z.kept)];
          const TokenDistribution* qd = z.proposal.drawn_from.empty() ? nullptr : &z.proposal.drawn_from[size_t(z.kept)];
          // Kept with probability min(1, p(x) / q(x)).
          if (z.sampler.uniform() * (qd ? qd->prob(x) : 1.0) < p.prob(x)) {
            before.push_back(x);
            continue;
          }
          z.after = sc.resample_residual ? draw_residual(z.sampler, p, qd, x, q_dense) : z.sampler.draw(p);
          break;
        }
      }
      z.st.drafted += k;
      z.st.accepted += z.kept;
      if (sc.adaptive)
        z.k_now = z.kept == k ? std::min(z.k_now + 2, sc.draft_max)
                              : std::max<int64_t>({z.k_now - 1, sc.draft_min, 1});
    }

    // 3. The kept tokens and the one after them; then each slot goes back to what its sequence
    // holds: after a rejection, `next` and the kept drafts; after an end inside the kept drafts,
    // every chosen token but the last, as generate() leaves it. One truncation, or one restore and
    // replay, per sequence, and the replays of all sequences share one step.
    replays.clear();
    for (Sequence* zp : stepped) {
      Sequence& z = *zp;
      bool more = true;
      for (int64_t i = 0; i < z.kept && more; ++i) more = z.take(z.proposal.tokens[size_t(i)]);
      int64_t want = z.length + 1 + z.kept;
      if (more) {
        z.next = z.after;
        z.active = z.take(z.next);
      } else {
        z.active = false;
        want = int64_t(z.history.size()) - 1 + (z.r.reason == StopReason::stop_token ? 1 : 0);
      }
      if (target.length(z.q.slot) <= want) continue;
      if (target.can_rewind()) {
        target.truncate(z.q.slot, want);
      } else {
        target.restore_state(z.q.slot, sc.snapshot);
        replays.push_back({int32_t(z.q.slot), std::span(z.row_ids).first(size_t(want - z.length)), -1,
                           nn::RowLogits::none});
        ++z.st.replays;
      }
    }
    if (!replays.empty()) target.step(replays);
  }

  const double seconds = std::chrono::duration<double>(clock::now() - t1).count();
  std::vector<GenerateResult> results;
  if (stats) stats->clear();
  for (auto& p : seqs) {
    p->out.finish();
    p->r.generate_seconds = seconds;
    p->st.generated = p->r.sampled;
    results.push_back(std::move(p->r));
    if (stats) stats->push_back(p->st);
  }
  return results;
}

// One sequence (speculative_generate_batch with one request), in `slot`.
template <Element T, Device D>
GenerateResult speculative_generate(nn::Decoder<T, D>& target, int64_t slot, Draft& draft,
                                    const text::Tokenizer& tokenizer, std::span<const int32_t> held,
                                    std::span<const int32_t> prompt,
                                    const GenerateConfig& cfg, const SpeculativeConfig& sc,
                                    SpeculativeStats* stats = nullptr,
                                    const std::function<void(std::string_view)>& on_text = {}) {
  const SpeculativeRequest request{slot, &draft, held, prompt, cfg, on_text};
  std::vector<SpeculativeStats> st;
  auto results = speculative_generate_batch(target, std::span(&request, 1), tokenizer, sc, &st);
  if (stats) *stats = st[0];
  return std::move(results[0]);
}

}  // namespace mil::gen
