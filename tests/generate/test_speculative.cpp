// Speculative decoding (generate/speculative.hpp). Greedy, against plain greedy generation: the same
// tokens, text and stop reason for an all-attention, a Mamba-2 and a Mamba-1 target, with prompt
// lookup and with model drafts (one that agrees with the target, one that mostly does not), at
// every end (token budget, stop token and stop string inside kept drafts, full context), with a
// repetition penalty too. Sampling: a statistical test that each generated token has the target's
// distribution. Prompt lookup's matching; refusals.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <mil/generate/generate.hpp>
#include <mil/generate/speculative.hpp>

#include "common/sanitized.hpp"
#include "common/small_hybrid.hpp"

using namespace mil;

namespace {

// A byte-level tokenizer of 61 tokens: the characters '0' .. 'k' (printable ASCII maps to itself)
// and one merge, "01", so that any id sequence has a text.
text::Tokenizer char_tokenizer() {
  text::TokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt2";
  for (int i = 0; i < 60; ++i) d.tokens.push_back(std::string(1, char('0' + i)));
  d.tokens.push_back("01");
  d.merges = {"0 1"};
  return text::Tokenizer(std::move(d));
}

// A prompt with a repeated stretch, so that prompt lookup finds matches from the start.
std::vector<int32_t> prompt_tokens() {
  std::vector<int32_t> p;
  for (int r = 0; r < 3; ++r)
    for (int32_t t : {5, 17, 29, 41, 53, 6}) p.push_back(t);
  p.push_back(5);
  return p;
}

gen::GenerateConfig greedy_config(int64_t n) {
  gen::GenerateConfig g;
  g.max_new_tokens = n;
  g.sampling.temperature = 0;
  return g;
}

constexpr int64_t kDraftMax = 4;

nn::DecoderOptions target_options(int64_t max_seq) {
  return {.slots = 1, .max_seq = max_seq, .max_tokens = 32, .max_logits = kDraftMax + 1,
          .snapshots = 1};
}

struct Run {
  gen::GenerateResult result;
  gen::SpeculativeStats stats;
  int64_t length = 0;         // tokens the slot holds afterwards
  std::vector<float> follow;  // the logits after one more token: the state is right too
};

// Appends one token and keeps the logits, unless the context is full.
void follow_up(nn::Decoder<float, Cpu>& dec, Run& r) {
  r.length = dec.length(0);
  if (r.length >= dec.options().max_seq) return;
  const int32_t slot = 0, token = 7;
  dec.decode(std::span(&slot, 1), std::span(&token, 1));
  r.follow = dec.logits_host();
}

Run speculative(const nn::HybridModel<float, Cpu>& model, gen::Draft& draft,
                const gen::GenerateConfig& g, int64_t max_seq = 400,
                gen::SpeculativeConfig sc = {.draft_max = kDraftMax}) {
  nn::Decoder<float, Cpu> dec(model, target_options(max_seq));
  Run r;
  r.result = gen::speculative_generate(dec, 0, draft, char_tokenizer(), {}, prompt_tokens(), g, sc, &r.stats);
  follow_up(dec, r);
  return r;
}

Run plain(const nn::HybridModel<float, Cpu>& model, const gen::GenerateConfig& g, int64_t max_seq = 400) {
  nn::Decoder<float, Cpu> dec(model, {.slots = 1, .max_seq = max_seq});
  Run r;
  r.result = gen::generate(dec, 0, char_tokenizer(), prompt_tokens(), g);
  follow_up(dec, r);
  return r;
}

void check_same(const gen::GenerateResult& a, const gen::GenerateResult& b) {
  CHECK(a.tokens == b.tokens);
  CHECK(a.text == b.text);
  CHECK(a.reason == b.reason);
  CHECK(a.sampled == b.sampled);
}

// The same output, and the slot left in the same state (length, and the logits of a next token).
void check_same(const Run& a, const Run& b) {
  check_same(a.result, b.result);
  CHECK(a.length == b.length);
  CHECK(a.follow == b.follow);
}

// Proposes what `inner` does with its last token changed: each step with two or more drafts keeps
// some and rejects the last, so that an end can come inside kept drafts after a rejection.
class LastWrongDraft final : public gen::Draft {
 public:
  explicit LastWrongDraft(gen::Draft& inner) : inner_(inner) {}
  std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) override {
    auto d = inner_.propose(context, max);
    if (d.size() >= 2) d.back() = (d.back() + 1) % 60;
    return d;
  }

 private:
  gen::Draft& inner_;
};

}  // namespace

TEST_CASE("speculative greedy: prompt lookup and model drafts give the target's greedy tokens") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    nn::HybridModel<float, Cpu> model(test::small_hybrid_config(kind));
    model.init_random(41, 0.3f);
    const auto g = greedy_config(300);
    const auto want = plain(model, g);
    REQUIRE(want.result.tokens.size() == 300);

    gen::PromptLookupDraft lookup;
    const auto a = speculative(model, lookup, g);
    check_same(a, want);
    // The fixture reaches both paths: kept drafts (with the bonus token) and rejections.
    CHECK(a.stats.accepted > 0);
    CHECK(a.stats.accepted < a.stats.drafted);
    CHECK(a.stats.target_steps < 300);  // kept drafts save target steps
    CHECK(a.stats.generated == 300);
    if (kind == nn::LayerKind::attention) CHECK(a.stats.replays == 0);  // truncation instead
    else CHECK(a.stats.replays > 0);

    // The target as its own draft: every draft is kept.
    nn::Decoder<float, Cpu> same_dec(model, {.slots = 1, .max_seq = 400});
    gen::DecoderDraft<float, Cpu> same(same_dec);
    const auto b = speculative(model, same, g);
    check_same(b, want);
    CHECK(b.stats.accepted == b.stats.drafted);
    CHECK(b.stats.target_steps <= (300 + kDraftMax) / (kDraftMax + 1) + 1);

    // Another model as the draft: mostly rejected, the output is still the target's.
    nn::HybridModel<float, Cpu> other(test::small_hybrid_config(nn::LayerKind::attention));
    other.init_random(43, 0.3f);
    nn::Decoder<float, Cpu> other_dec(other, {.slots = 1, .max_seq = 400});
    gen::DecoderDraft<float, Cpu> wrong(other_dec);
    const auto c = speculative(model, wrong, g);
    check_same(c, want);
    CHECK(c.stats.accepted < c.stats.drafted / 2);
    // Adaptive draft length: the same tokens; the failing draft proposes fewer tokens per step,
    // the always-right one keeps proposing K.
    gen::SpeculativeConfig adaptive{.draft_max = kDraftMax, .adaptive = true};
    const auto d = speculative(model, wrong, g, 400, adaptive);
    check_same(d, want);
    CHECK(d.stats.drafted < c.stats.drafted * 3 / 4);
    const auto e = speculative(model, same, g, 400, adaptive);
    check_same(e, want);
    CHECK(e.stats.drafted == b.stats.drafted);
  }
}

TEST_CASE("speculative greedy: every end comes where plain generation's does") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    nn::HybridModel<float, Cpu> model(test::small_hybrid_config(kind));
    model.init_random(47, 0.3f);
    const auto base = plain(model, greedy_config(120)).result;
    REQUIRE(base.tokens.size() == 120);
    nn::Decoder<float, Cpu> same_dec(model, {.slots = 1, .max_seq = 400});
    gen::DecoderDraft<float, Cpu> same(same_dec);  // every draft kept: ends inside kept drafts

    for (int64_t n : {0, 1, 2, 5, 6, 7, 33}) {  // budgets at and around draft boundaries
      CAPTURE(n);
      check_same(speculative(model, same, greedy_config(n)), plain(model, greedy_config(n)));
    }
    // Ends inside kept drafts: with every draft kept, the target's own choice ("next") is
    // generated token 0, 5, 10, ... (K + 1 = 5 per step) and the drafts are the others, so a stop
    // at a token index that is not a multiple of 5, i.e. sampled % 5 != 1, lands inside them.
    auto ends_in_drafts = [](const Run& r) { return r.result.sampled % (kDraftMax + 1) != 1; };
    int64_t stop_tokens_in_drafts = 0, stop_strings_in_drafts = 0;
    for (size_t f = 20; f < 60; f += 3) {  // a stop token: a generated token's id
      auto g = greedy_config(120);
      g.stop_tokens = {base.tokens[f]};
      const auto want = plain(model, g);
      CHECK(want.result.reason == gen::StopReason::stop_token);
      check_same(speculative(model, same, g), want);
      stop_tokens_in_drafts += ends_in_drafts(want);
    }
    for (size_t c = 20; c < 60; c += 3) {  // a stop string: two characters of the text
      auto g = greedy_config(120);
      g.stop_strings = {base.text.substr(c, 2)};
      const auto want = plain(model, g);
      CHECK(want.result.reason == gen::StopReason::stop_string);
      check_same(speculative(model, same, g), want);
      stop_strings_in_drafts += ends_in_drafts(want);
    }
    CHECK(stop_tokens_in_drafts > 0);  // the fixture reaches the case
    CHECK(stop_strings_in_drafts > 0);
    // Ends inside kept drafts after a rejection: the last draft of every step is wrong, so each
    // step keeps K - 1 and rolls back once. The slot goes straight to what the end leaves: one
    // rollback per step, never a second for the end.
    LastWrongDraft wrong(same);
    int64_t ends_after_rejection[2] = {};  // by a stop token, by a stop string
    for (size_t f = 20; f < 100; f += 3) {  // stop tokens, then stop strings
      auto g = greedy_config(120);
      if (f < 60) g.stop_tokens = {base.tokens[f]};
      else g.stop_strings = {base.text.substr(f - 40, 2)};
      const auto want = plain(model, g);
      const auto got = speculative(model, wrong, g);
      check_same(got, want);
      // With K - 1 = 3 kept per step, 4 tokens a step: an end at an index that is not 0 mod 4
      // (sampled % 4 != 1) comes inside the kept drafts.
      ends_after_rejection[f >= 60] += got.result.sampled % kDraftMax != 1;
      CHECK(got.stats.drafted == kDraftMax * got.stats.target_steps);  // every step: 4 drafts, 3 kept
      CHECK(got.stats.accepted == (kDraftMax - 1) * got.stats.target_steps);
      if (kind == nn::LayerKind::attention) CHECK(got.stats.replays == 0);
      else CHECK(got.stats.replays == got.stats.target_steps);
    }
    CHECK(ends_after_rejection[0] > 0);  // the fixture reaches both kinds of end
    CHECK(ends_after_rejection[1] > 0);
    for (int64_t max_seq : {int64_t(prompt_tokens().size()) + 1, int64_t(prompt_tokens().size()) + 9,
                            int64_t(prompt_tokens().size()) + 10}) {  // a full context
      CAPTURE(max_seq);
      const auto want = plain(model, greedy_config(120), max_seq);
      CHECK(want.result.reason == gen::StopReason::context_full);
      gen::PromptLookupDraft lookup;
      check_same(speculative(model, same, greedy_config(120), max_seq), want);
      check_same(speculative(model, lookup, greedy_config(120), max_seq), want);
    }
  }
}

TEST_CASE("speculative greedy with a repetition penalty: the tokens of plain generation") {
  // The penalty changes each row's logits by the tokens before it, drafts included: the
  // verification compares with the sampler's choice on the host, not the decoder's argmax.
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    nn::HybridModel<float, Cpu> model(test::small_hybrid_config(kind));
    model.init_random(61, 0.3f);
    auto g = greedy_config(150);
    g.sampling.repetition_penalty = 1.3f;
    g.sampling.repeat_last_n = 16;
    const auto want = plain(model, g);
    REQUIRE(want.result.tokens.size() == 150);
    CHECK(want.result.tokens != plain(model, greedy_config(150)).result.tokens);  // it matters
    gen::PromptLookupDraft lookup;
    const auto a = speculative(model, lookup, g);
    check_same(a, want);
    CHECK(a.stats.accepted > 0);
    CHECK(a.stats.accepted < a.stats.drafted);
    nn::Decoder<float, Cpu> same_dec(model, {.slots = 1, .max_seq = 400});
    gen::DecoderDraft<float, Cpu> same(same_dec);  // greedy without the penalty: some differ
    const auto b = speculative(model, same, g);
    check_same(b, want);
    CHECK(b.stats.accepted > 0);
    CHECK(b.stats.accepted < b.stats.drafted);
  }
}

namespace {

// Pearson's chi-square test of `counts` against the probabilities `expected` (cells expecting
// fewer than 5 draws pooled into one): the p-value, from the Wilson-Hilferty approximation of the
// chi-square distribution (good to a few percent in the tail, far finer than the thresholds used).
double chi_square_p(const std::vector<int64_t>& counts, const std::vector<double>& expected, int64_t n) {
  double stat = 0, pooled_seen = 0, pooled_expected = 0;
  int64_t cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = expected[i] * double(n);
    if (e < 5) {
      pooled_seen += double(counts[i]);
      pooled_expected += e;
      continue;
    }
    stat += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++cells;
  }
  if (pooled_expected >= 5 || pooled_seen > 0) {
    const double e = std::max(pooled_expected, 1e-9);
    stat += (pooled_seen - e) * (pooled_seen - e) / e;
    ++cells;
  }
  const double k = double(cells - 1), z = (std::cbrt(stat / k) - (1 - 2 / (9 * k))) / std::sqrt(2 / (9 * k));
  return 0.5 * std::erfc(z / std::sqrt(2.0));
}

// The target's exact distribution of generated tokens 0, 1 and 2 after `prompt` (each a sum over
// the tokens before it), under the sampler's chain.
std::vector<std::vector<double>> exact_marginals(const nn::HybridModel<float, Cpu>& model,
                                                 const gen::SamplingConfig& sc,
                                                 const std::vector<int32_t>& prompt) {
  const size_t vocab = size_t(model.config().llama.vocab);
  nn::Decoder<float, Cpu> dec(model, {.slots = 1, .max_seq = 64});
  gen::Sampler sampler(sc);
  auto after = [&](const std::vector<int32_t>& ctx) {
    dec.reset(0);
    dec.prefill(0, ctx);
    return sampler.distribution(dec.logits_host(), ctx);
  };
  std::vector<std::vector<double>> m(3, std::vector<double>(vocab));
  const auto p0 = after(prompt);
  for (size_t a = 0; a < p0.ids.size(); ++a) {
    const double pa = p0.weights[a] / p0.total;
    m[0][size_t(p0.ids[a])] += pa;
    auto ctx = prompt;
    ctx.push_back(p0.ids[a]);
    const auto p1 = after(ctx);
    for (size_t b = 0; b < p1.ids.size(); ++b) {
      const double pb = pa * p1.weights[b] / p1.total;
      m[1][size_t(p1.ids[b])] += pb;
      ctx.push_back(p1.ids[b]);
      const auto p2 = after(ctx);
      for (size_t c = 0; c < p2.ids.size(); ++c) m[2][size_t(p2.ids[c])] += pb * p2.weights[c] / p2.total;
      ctx.pop_back();
    }
  }
  return m;
}

}  // namespace

TEST_CASE("speculative sampling: each generated token has the target's distribution") {
  // A Mamba-2 target (rejections restore and replay its state) and drafts that differ from it: a
  // model of the same weights' pattern at another scale, which samples from distributions of its
  // own, and, deterministic as prompt lookup is, the target's greedy choice. With K = 1 and four
  // tokens (the first three tested): token 0 comes from the prompt's logits, token 1 is the first
  // verified one (a kept draft or the residual's draw after a rejection), token 2 is either the
  // bonus token after a kept draft or the verified one of the step after a rejection (from the
  // Mamba state restored and replayed); with K = 2, tokens 1 and 2 can both be verified in one
  // step. Each position's counts over `n` runs (seeds 0 .. n-1) go through a chi-square test
  // against the target's exact marginals: p >= 1e-3 passes. The second
  // sampling chain has top-k, top-p, min-p and a repetition penalty, which looks at the drafted
  // tokens before each row. Drawing from p instead of max(0, p - q) after a rejection favours
  // the draft's tokens: the same test gives p < 1e-6 there.
  nn::HybridModel<float, Cpu> model(test::small_hybrid_config(nn::LayerKind::mamba2));
  model.init_random(67, 0.5f);
  nn::HybridModel<float, Cpu> other(test::small_hybrid_config(nn::LayerKind::mamba2));
  other.init_random(67, 0.35f);
  const std::vector<int32_t> prompt = {5, 17, 29, 5};
  // Under the sanitizers (a memory check, 10x slower) fewer runs and no test of the test, which
  // needs the full sample to reach p < 1e-6; Release runs it all.
  const int64_t n = test::kSanitizedBuild ? 400 : 4000;
  const auto tok = char_tokenizer();
  // Proposes the target's greedy tokens and, as prompt lookup, no distribution: q(x) = 1.
  struct Deterministic final : gen::Draft {
    gen::DecoderDraft<float, Cpu>& model;
    explicit Deterministic(gen::DecoderDraft<float, Cpu>& m) : model(m) {}
    std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) override {
      return model.propose(context, max);
    }
  };

  gen::SamplingConfig plain_softmax{.temperature = 1.f, .top_k = 0, .top_p = 1.f, .min_p = 0.f};
  gen::SamplingConfig truncated{.temperature = 0.8f, .top_k = 12, .top_p = 0.9f, .min_p = 0.02f,
                                .repetition_penalty = 1.4f, .repeat_last_n = 3};
  for (const auto& sc : {plain_softmax, truncated}) {
    CAPTURE(sc.top_k);
    const auto want = exact_marginals(model, sc, prompt);
    nn::Decoder<float, Cpu> dec(model, target_options(64));
    nn::Decoder<float, Cpu> other_dec(other, {.slots = 1, .max_seq = 64});
    nn::Decoder<float, Cpu> self_dec(model, {.slots = 1, .max_seq = 64});
    gen::DecoderDraft<float, Cpu> model_draft(other_dec), self_draft(self_dec);
    Deterministic greedy_self(self_draft);
    for (gen::Draft* draft : {static_cast<gen::Draft*>(&model_draft), static_cast<gen::Draft*>(&greedy_self)}) {
      const char* name = draft == &greedy_self ? "deterministic" : "sampling draft";
      CAPTURE(name);
      // K = 2 rejects at either draft: the residual uses that position's p and q, and p after a
      // kept draft looks at it (the penalty).
      const std::pair<int64_t, bool> runs[] = {{1, true}, {1, false}, {2, true}};
      for (const auto& [k, residual] : runs) {
        if (test::kSanitizedBuild && !residual) continue;
        CAPTURE(k);
        CAPTURE(residual);
        std::vector<std::vector<int64_t>> counts(3, std::vector<int64_t>(want[0].size()));
        gen::SpeculativeStats total, st;
        for (int64_t i = 0; i < n; ++i) {
          gen::GenerateConfig g;
          g.max_new_tokens = 4;
          g.sampling = sc;
          g.sampling.seed = uint64_t(i);
          dec.reset(0);
          const auto r = gen::speculative_generate(dec, 0, *draft, tok, {}, prompt, g,
                                                   {.draft_max = k, .resample_residual = residual}, &st);
          REQUIRE(r.tokens.size() == 4);
          for (size_t pos = 0; pos < 3; ++pos) ++counts[pos][size_t(r.tokens[pos])];
          total.drafted += st.drafted;
          total.accepted += st.accepted;
          total.replays += st.replays;
        }
        // The fixture reaches kept drafts (so bonus tokens) and rejections (so residual draws
        // and replays of the Mamba state).
        CHECK(total.accepted > n / 20);
        CHECK(total.drafted - total.accepted > n / 5);
        CHECK(total.replays > 0);
        const double p0 = chi_square_p(counts[0], want[0], n), p1 = chi_square_p(counts[1], want[1], n),
                     p2 = chi_square_p(counts[2], want[2], n);
        MESSAGE("p-values ", p0, " ", p1, " ", p2, " acceptance ", double(total.accepted) / double(total.drafted));
        CHECK(p0 >= 1e-3);  // token 0 does not depend on the draft
        if (residual) {
          CHECK(p1 >= 1e-3);
          CHECK(p2 >= 1e-3);
        } else {
          CHECK(std::min(p1, p2) < 1e-6);
        }
      }
    }
  }
}

TEST_CASE("prompt lookup: the longest n-gram's latest earlier occurrence") {
  gen::PromptLookupDraft lookup(3, 1);
  using V = std::vector<int32_t>;
  // "1 2 3" occurs at 0 and 5; the latest earlier one (5) is followed by 9 9.
  const V ctx = {1, 2, 3, 4, 4, 1, 2, 3, 9, 9, 1, 2, 3};
  CHECK(lookup.propose(ctx, 2) == V{9, 9});
  CHECK(lookup.propose(ctx, 5) == V{9, 9, 1, 2, 3});  // runs into the tail itself
  CHECK(lookup.propose(ctx, 0).empty());
  // No trigram match, a bigram one: "7 8" at 0, followed by 5.
  CHECK(lookup.propose(V{7, 8, 5, 6, 0, 7, 8}, 3) == V{5, 6, 0});
  // Only a unigram: 8 at 1, followed by 2.
  CHECK(lookup.propose(V{3, 8, 2, 5, 8}, 1) == V{2});
  CHECK(lookup.propose(V{1, 2, 3}, 4).empty());  // nothing repeats
  CHECK(lookup.propose(V{4}, 4).empty());
  gen::PromptLookupDraft bigrams_only(2, 2);
  CHECK(bigrams_only.propose(V{3, 8, 2, 5, 8}, 1).empty());
  CHECK_THROWS_AS(gen::PromptLookupDraft(1, 2), Error);
}

TEST_CASE("speculative: refusals") {
  nn::HybridModel<float, Cpu> model(test::small_hybrid_config(nn::LayerKind::mamba2));
  model.init_random(53, 0.3f);
  gen::PromptLookupDraft lookup;
  const auto tok = char_tokenizer();
  const auto prompt = prompt_tokens();
  auto run = [&](const nn::DecoderOptions& o, const gen::GenerateConfig& g, gen::SpeculativeConfig sc) {
    nn::Decoder<float, Cpu> dec(model, o);
    return gen::speculative_generate(dec, 0, lookup, tok, {}, prompt, g, sc);
  };
  auto no_snapshot = target_options(64);
  no_snapshot.snapshots = 0;
  CHECK_THROWS_WITH_AS(run(no_snapshot, greedy_config(8), {}), doctest::Contains("snapshots"), Error);
  CHECK_THROWS_WITH_AS(run(target_options(64), greedy_config(8), {.draft_max = 8}),
                       doctest::Contains("max_logits"), Error);
  CHECK_THROWS_WITH_AS(run(target_options(64), greedy_config(8), {.draft_max = 0}),
                       doctest::Contains("draft lengths"), Error);
  CHECK_THROWS_WITH_AS(run(target_options(64), greedy_config(8), {.snapshot = 1}),
                       doctest::Contains("snapshot 1 of 1"), Error);
  nn::Decoder<float, Cpu> busy(model, target_options(64));
  busy.prefill(0, prompt);  // the slot holds tokens the call was not told of
  CHECK_THROWS_WITH_AS(gen::speculative_generate(busy, 0, lookup, tok, {}, prompt, greedy_config(8), {}),
                       doctest::Contains("held tokens"), Error);
}

TEST_CASE("speculative greedy: a slot that holds earlier tokens, and the caller's snapshot kept") {
  // As in mil-chat: the conversation so far is in the slot, with its state saved in snapshot 0;
  // the speculative loop goes back through snapshot 1 and the draft sees the whole conversation.
  nn::HybridModel<float, Cpu> model(test::small_hybrid_config(nn::LayerKind::mamba2));
  model.init_random(59, 0.3f);
  const auto all = prompt_tokens();
  const auto held = std::span(all).first(12), prompt = std::span(all).subspan(12);
  const auto want = plain(model, greedy_config(80)).result;
  auto o = target_options(400);
  o.snapshots = 2;
  nn::Decoder<float, Cpu> dec(model, o);
  dec.prefill(0, held);
  dec.save_state(0, 0);
  // Prompt lookup, recording the context of its first call.
  struct Recording final : gen::Draft {
    gen::PromptLookupDraft lookup;
    std::vector<int32_t> first;
    std::vector<int32_t> propose(std::span<const int32_t> context, int64_t max) override {
      if (first.empty()) first.assign(context.begin(), context.end());
      return lookup.propose(context, max);
    }
  } draft;
  gen::SpeculativeStats stats;
  const auto got = gen::speculative_generate(dec, 0, draft, char_tokenizer(), held, prompt,
                                             greedy_config(80), {.draft_max = kDraftMax, .snapshot = 1},
                                             &stats);
  check_same(got, want);
  CHECK(stats.replays > 0);
  CHECK(stats.accepted > 0);
  // The first proposal saw the held tokens, the prompt and the first generated token.
  std::vector<int32_t> context = all;
  context.push_back(want.tokens[0]);
  CHECK(draft.first == context);
  dec.restore_state(0, 0);
  CHECK(dec.length(0) == 12);
}

TEST_CASE("speculative, batched: each sequence gets its own tokens, acceptance and slot state") {
  // Three sequences in one decoder (slots 2, 0, 3 of 4), each with a draft that is right at a
  // different rate (the target itself: all kept; prompt lookup: some; another model: few), other
  // prompts, budgets and one stop token, and slot 3 holding earlier tokens. Each must end with
  // exactly what it gets alone in a decoder of its own (tokens, text, reason; the slot's length
  // and the logits of a next token), for greedy decoding and for sampling (each sequence's
  // sampler keeps its own stream). A row's logits taken from another sequence's place in the
  // step, or one sequence's rewind applied to another, would show here.
  const auto tok = char_tokenizer();
  const auto base = prompt_tokens();
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    nn::HybridModel<float, Cpu> model(test::small_hybrid_config(kind));
    model.init_random(41, 0.3f);
    nn::HybridModel<float, Cpu> other(test::small_hybrid_config(nn::LayerKind::attention));
    other.init_random(73, 0.3f);
    const std::vector<int32_t> prompt_a = base;
    const std::vector<int32_t> prompt_b(base.begin() + 3, base.end());
    const std::vector<int32_t> held_c = {9, 9, 40}, prompt_c = {41, 53, 6, 5, 17};
    for (bool sampling : {false, true}) {
      CAPTURE(sampling);
      auto config = [&](int64_t n, uint64_t seed) {
        gen::GenerateConfig g = greedy_config(n);
        if (sampling) g.sampling = {.temperature = 0.9f, .top_k = 20, .top_p = 0.95f, .seed = seed};
        return g;
      };
      // Greedy, sequence 0 stops at a token of its own run whose first occurrence is not a
      // target's choice (with every draft kept, those are tokens 0, 5, 10, ...): it ends inside
      // kept drafts and goes back while the others go on. Sequence 1 decodes greedily beside
      // sampling ones: the logits of one step serve the device's argmax and the host's sampler.
      auto cfg_a = config(70, 1);
      if (!sampling) {
        nn::Decoder<float, Cpu> dec(model, {.slots = 1, .max_seq = 400});
        const auto run = gen::generate(dec, 0, tok, prompt_b, cfg_a).tokens;
        for (size_t f = 20; f < run.size() && cfg_a.stop_tokens.empty(); ++f)
          if (f % (kDraftMax + 1) != 0 && std::find(run.begin(), run.end(), run[f]) == run.begin() + ptrdiff_t(f))
            cfg_a.stop_tokens = {run[f]};
        REQUIRE(!cfg_a.stop_tokens.empty());
      }
      const gen::GenerateConfig cfgs[] = {cfg_a, greedy_config(150), config(50, 3)};
      const std::vector<int32_t>* prompts[] = {&prompt_b, &prompt_a, &prompt_c};
      const int64_t slots[] = {2, 0, 3};

      // Alone: each sequence in a decoder of its own, with its own draft decoder.
      struct Alone {
        Run run;
        gen::SpeculativeStats stats;
      };
      std::vector<Alone> alone;
      for (int i = 0; i < 3; ++i) {
        nn::Decoder<float, Cpu> same_dec(model, {.slots = 1, .max_seq = 400}), wrong_dec(other, {.slots = 1, .max_seq = 400});
        gen::DecoderDraft<float, Cpu> same(same_dec), wrong(wrong_dec);
        gen::PromptLookupDraft lookup;
        gen::Draft* draft = i == 0 ? static_cast<gen::Draft*>(&same) : i == 1 ? static_cast<gen::Draft*>(&lookup) : &wrong;
        nn::Decoder<float, Cpu> dec(model, target_options(400));
        const std::span<const int32_t> held = i == 2 ? std::span(held_c) : std::span<const int32_t>{};
        if (!held.empty()) dec.prefill(0, held);
        Alone a;
        a.run.result = gen::speculative_generate(dec, 0, *draft, tok, held, *prompts[i], cfgs[i],
                                                 {.draft_max = kDraftMax}, &a.stats);
        follow_up(dec, a.run);
        alone.push_back(std::move(a));
      }

      // Together: one decoder of 4 slots, one step per round for all of them.
      nn::Decoder<float, Cpu> same_dec(model, {.slots = 1, .max_seq = 400}), wrong_dec(other, {.slots = 1, .max_seq = 400});
      gen::DecoderDraft<float, Cpu> same(same_dec), wrong(wrong_dec);
      gen::PromptLookupDraft lookup;
      auto o = target_options(400);
      o.slots = 4;
      o.max_logits = 3 * (kDraftMax + 1);
      nn::Decoder<float, Cpu> dec(model, o);
      dec.prefill(3, held_c);
      dec.prefill(1, prompt_a);  // a slot outside the call keeps its tokens
      std::vector<gen::SpeculativeRequest> requests;
      gen::Draft* drafts[] = {&same, &lookup, &wrong};
      for (int i = 0; i < 3; ++i)
        requests.push_back({slots[i], drafts[i], i == 2 ? std::span<const int32_t>(held_c) : std::span<const int32_t>{},
                            *prompts[i], cfgs[i], {}});
      std::vector<gen::SpeculativeStats> stats;
      const auto results = gen::speculative_generate_batch(dec, std::span(requests), tok, {.draft_max = kDraftMax}, &stats);
      REQUIRE(results.size() == 3);
      REQUIRE(stats.size() == 3);
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        check_same(results[size_t(i)], alone[size_t(i)].run.result);
        CHECK(dec.length(slots[i]) == alone[size_t(i)].run.length);
        const auto &got = stats[size_t(i)], &want = alone[size_t(i)].stats;
        CHECK(got.drafted == want.drafted);
        CHECK(got.accepted == want.accepted);
        CHECK(got.generated == want.generated);
        CHECK(got.target_steps == want.target_steps);
        CHECK(got.replays == want.replays);
      }
      CHECK(dec.length(1) == int64_t(prompt_a.size()));
      // The slots' states: the logits after one more token each, in one step.
      const std::vector<int32_t> follow_slots = {2, 0, 3}, follow_tokens = {7, 7, 7};
      dec.decode(follow_slots, follow_tokens);
      const auto logits = dec.logits_host();
      const size_t vocab = size_t(model.config().llama.vocab);
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        const std::vector<float> row(logits.begin() + ptrdiff_t(size_t(i) * vocab),
                                     logits.begin() + ptrdiff_t(size_t(i + 1) * vocab));
        CHECK(row == alone[size_t(i)].run.follow);
      }
      // The fixture reaches its cases: sequence 0 stopped (greedy: inside kept drafts), and
      // different acceptance per sequence.
      if (!sampling) {
        CHECK(results[0].reason == gen::StopReason::stop_token);
        CHECK(stats[0].accepted == stats[0].drafted);
        CHECK(results[0].sampled % (kDraftMax + 1) != 1);
      }
      CHECK(stats[1].accepted > 0);
      CHECK(stats[2].accepted < stats[2].drafted);
      CHECK(stats[0].acceptance() > stats[2].acceptance());
    }
  }
  // Refusals: a shared slot, room for fewer rows than the sequences need.
  nn::HybridModel<float, Cpu> model(test::small_hybrid_config(nn::LayerKind::mamba2));
  model.init_random(71, 0.3f);
  gen::PromptLookupDraft lookup;
  const auto prompt = prompt_tokens();
  auto o = target_options(64);
  o.slots = 2;
  nn::Decoder<float, Cpu> dec(model, o);
  const gen::SpeculativeRequest twice[] = {{0, &lookup, {}, prompt, greedy_config(4), {}},
                                           {0, &lookup, {}, prompt, greedy_config(4), {}}};
  CHECK_THROWS_WITH_AS(gen::speculative_generate_batch(dec, std::span(twice), tok, {.draft_max = 1}),
                       doctest::Contains("share slot 0"), Error);
  const gen::SpeculativeRequest two[] = {{0, &lookup, {}, prompt, greedy_config(4), {}},
                                         {1, &lookup, {}, prompt, greedy_config(4), {}}};
  CHECK_THROWS_WITH_AS(gen::speculative_generate_batch(dec, std::span(two), tok, {.draft_max = kDraftMax}),
                       doctest::Contains("for 2 sequence(s) needs 10"), Error);
}

TEST_CASE("speculative: a draft with another tokenizer is refused") {
  const auto tok = char_tokenizer();
  gen::check_draft_tokenizer(tok, 61, char_tokenizer(), 61, "same");  // no throw
  text::TokenizerData other = tok.data();
  other.tokens[7] = "#";  // one token spelled differently
  CHECK_THROWS_WITH_AS(gen::check_draft_tokenizer(tok, 61, text::Tokenizer(other), 61, "draft-dir"),
                       doctest::Contains("'draft-dir' does not share the target's tokenizer"), Error);
  CHECK_THROWS_WITH_AS(gen::check_draft_tokenizer(tok, 61, char_tokenizer(), 64, "wide"),
                       doctest::Contains("vocabularies of 64 and 61"), Error);
}
