#pragma once
// Speculative decoding, greedy: a draft proposes up to K tokens, the target checks them all in one
// step (K + 1 logits rows), and the tokens are kept while they equal the target's own greedy
// choices; the target's choice after the last kept one comes free. The output is the target's
// greedy output, token for token: on the CPU the decoder's products are row-invariant, so a
// verification row gives bitwise the logits of a decode step.
//
// Going back after a rejection: an all-attention target truncates its KV cache; a target with
// Mamba layers restores the state saved before the step and runs the kept tokens again (one more
// step of at most K + 1 tokens; the states are small, see METHOD's multistep notes). Drafts:
// prompt lookup (the tokens that followed the latest earlier occurrence of the context's last
// n-gram) and any model with the target's vocabulary (DecoderDraft).
//
// Sampling with a draft (the rejection rule of Leviathan et al.) is not here yet: a non-greedy
// configuration is refused.
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

// Proposes up to `max` tokens to follow `context` (the prompt and every token generated so far).
class Draft {
 public:
  virtual ~Draft() = default;
  virtual std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) = 0;
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

// A draft model's greedy continuation, on a decoder of its own (slot 0). It keeps the tokens it has
// been fed and, on each call, goes back to the longest prefix they share with the context: by
// truncation for an all-attention draft, by starting over for one with Mamba layers (correct, but
// it prefills the whole context again: give hybrids an all-attention draft).
template <Element T, Device D>
class DecoderDraft final : public Draft {
 public:
  // `decoder` must outlive the draft; it needs room for the context and K tokens.
  explicit DecoderDraft(nn::Decoder<T, D>& decoder) : dec_(decoder) { dec_.reset(0); }

  std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) override {
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
    std::vector<int32_t> out;
    int32_t next = context.back();
    const int32_t slot = 0;
    for (int64_t i = 0; i < max; ++i) {
      dec_.decode(std::span(&slot, 1), std::span(&next, 1));
      fed_.push_back(next);
      next = dec_.argmax()[0];
      out.push_back(next);
    }
    return out;
  }

 private:
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
};

struct SpeculativeStats {
  int64_t target_steps = 0;  // verification and plain decode steps of the target after the prompt
  int64_t replays = 0;       // extra steps re-running kept tokens after a rejection (Mamba)
  int64_t drafted = 0;       // tokens proposed and verified
  int64_t accepted = 0;      // of them, kept
  int64_t generated = 0;     // tokens chosen, including a final stop token
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0; }
  double tokens_per_step() const { return target_steps ? double(generated) / double(target_steps) : 0; }
};

// generate()'s contract (stop tokens, stop strings, token budget, context size), with the tokens
// proposed by `draft` and checked by `target` K + 1 at a time. `held` are the tokens the slot
// holds already (a chat's earlier turns), which the draft sees before `prompt`. The target decoder
// needs max_tokens and max_logits >= K + 1 and, with Mamba layers, snapshot sc.snapshot.
// Afterwards the slot holds, as after generate(), the prompt and every chosen token but the last.
template <Element T, Device D>
GenerateResult speculative_generate(nn::Decoder<T, D>& target, int64_t slot, Draft& draft,
                                    const text::Tokenizer& tokenizer, std::span<const int32_t> held,
                                    std::span<const int32_t> prompt,
                                    const GenerateConfig& cfg, const SpeculativeConfig& sc,
                                    SpeculativeStats* stats = nullptr,
                                    const std::function<void(std::string_view)>& on_text = {}) {
  using clock = std::chrono::steady_clock;
  MIL_CHECK(cfg.max_new_tokens >= 0, "speculative decoding: max_new_tokens ", cfg.max_new_tokens, " < 0");
  MIL_CHECK(cfg.sampling.greedy() && cfg.sampling.repetition_penalty == 1.f,
            "speculative decoding: only greedy decoding (temperature 0, no repetition penalty) is "
            "supported; sampling with a draft is not implemented yet");
  MIL_CHECK(sc.draft_max >= 1 && sc.draft_min >= 0 && sc.draft_min <= sc.draft_max,
            "speculative decoding: draft lengths min ", sc.draft_min, ", max ", sc.draft_max,
            " (need 0 <= min <= max, max >= 1)");
  MIL_CHECK(target.max_tokens() >= sc.draft_max + 1 && target.max_logits() >= sc.draft_max + 1,
            "speculative decoding: the target decoder takes ", target.max_tokens(), " tokens and ",
            target.max_logits(), " logits rows per step; verifying ", sc.draft_max, " drafted tokens needs ",
            sc.draft_max + 1, " of each (DecoderOptions max_tokens, max_logits)");
  MIL_CHECK(target.can_rewind() || (sc.snapshot >= 0 && sc.snapshot < target.options().snapshots),
            "speculative decoding: a target with Mamba layers needs a saved state to go back to "
            "after a rejection: snapshot ", sc.snapshot, " of ", target.options().snapshots,
            " (DecoderOptions::snapshots)");
  MIL_CHECK(int64_t(held.size()) == target.length(slot), "speculative decoding: ", held.size(),
            " held tokens for a slot of ", target.length(slot));
  SpeculativeStats local;
  SpeculativeStats& st = stats ? *stats : local;
  st = {};
  GenerateResult r;
  r.prompt_tokens = int64_t(prompt.size());
  const auto t0 = clock::now();
  target.prefill(slot, prompt);
  const auto t1 = clock::now();
  r.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();

  std::vector<int32_t> history(held.begin(), held.end());
  history.insert(history.end(), prompt.begin(), prompt.end());
  TextStream out(tokenizer, cfg.stop_strings, r.text, on_text);
  // Takes one chosen token; false when generation ends with it.
  auto take = [&](int32_t token) {
    ++r.sampled;
    if (std::find(cfg.stop_tokens.begin(), cfg.stop_tokens.end(), token) != cfg.stop_tokens.end()) {
      r.reason = StopReason::stop_token;
      return false;
    }
    r.tokens.push_back(token);
    history.push_back(token);
    if (!out.push(token)) {
      r.reason = StopReason::stop_string;
      return false;
    }
    return r.sampled < cfg.max_new_tokens;
  };

  r.reason = StopReason::max_tokens;
  const int32_t s = int32_t(slot);
  std::vector<int32_t> row_ids;
  int32_t next = target.argmax()[0];  // chosen, not yet fed
  while (cfg.max_new_tokens > 0 && take(next)) {
    const int64_t length = target.length(slot), max_seq = target.options().max_seq;
    if (length >= max_seq) {
      r.reason = StopReason::context_full;
      break;
    }
    // Drafts beyond the token budget or the context would be wasted.
    const int64_t k_max = std::min({sc.draft_max, cfg.max_new_tokens - r.sampled - 1, max_seq - length - 1});
    std::vector<int32_t> drafted = k_max > 0 ? draft.propose(history, k_max) : std::vector<int32_t>{};
    if (int64_t(drafted.size()) > k_max) drafted.resize(size_t(k_max));
    if (drafted.empty() || int64_t(drafted.size()) < sc.draft_min) {
      target.decode(std::span(&s, 1), std::span(&next, 1));
      ++st.target_steps;
      next = target.argmax()[0];
      continue;
    }
    const int64_t k = int64_t(drafted.size());
    if (!target.can_rewind()) target.save_state(slot, sc.snapshot);
    row_ids.assign(1, next);
    row_ids.insert(row_ids.end(), drafted.begin(), drafted.end());
    const nn::StepRow row{s, row_ids, -1, nn::RowLogits::all};
    target.step(std::span(&row, 1));
    ++st.target_steps;
    const auto greedy = target.argmax();  // greedy[i]: the choice after row_ids[0..i]
    int64_t kept = 0;
    while (kept < k && drafted[size_t(kept)] == greedy[size_t(kept)]) ++kept;
    const int32_t after = greedy[size_t(kept)];
    st.drafted += k;
    st.accepted += kept;
    if (kept < k) {  // go back to the state after next and the kept tokens
      if (target.can_rewind()) {
        target.truncate(slot, length + 1 + kept);
      } else {
        target.restore_state(slot, sc.snapshot);
        const nn::StepRow replay{s, std::span(row_ids).first(size_t(kept + 1)), -1, nn::RowLogits::none};
        target.step(std::span(&replay, 1));
        ++st.replays;
      }
    }
    bool more = true;
    for (int64_t i = 0; i < kept && more; ++i) more = take(drafted[size_t(i)]);
    if (!more) {
      // It ended inside the kept drafts: leave the slot as generate() does, holding every chosen
      // token but the last (the rest of the kept drafts go).
      const int64_t want = int64_t(history.size()) - 1 + (r.reason == StopReason::stop_token ? 1 : 0);
      if (target.length(slot) > want) {
        if (target.can_rewind()) {
          target.truncate(slot, want);
        } else {
          target.restore_state(slot, sc.snapshot);
          const nn::StepRow replay{s, std::span(row_ids).first(size_t(want - length)), -1, nn::RowLogits::none};
          target.step(std::span(&replay, 1));
          ++st.replays;
        }
      }
      break;
    }
    next = after;
  }
  out.finish();
  r.generate_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  st.generated = r.sampled;
  return r;
}

}  // namespace mil::gen
