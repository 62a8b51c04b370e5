// Greedy speculative decoding (generate/speculative.hpp) against plain greedy generation: the same
// tokens, text and stop reason for an all-attention, a Mamba-2 and a Mamba-1 target, with prompt
// lookup and with model drafts (one that agrees with the target, one that mostly does not), at
// every end (token budget, stop token and stop string inside kept drafts, full context); prompt
// lookup's matching; refusals.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <mil/generate/generate.hpp>
#include <mil/generate/speculative.hpp>

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
                const gen::GenerateConfig& g, int64_t max_seq = 400) {
  nn::Decoder<float, Cpu> dec(model, target_options(max_seq));
  Run r;
  r.result = gen::speculative_generate(dec, 0, draft, char_tokenizer(), {}, prompt_tokens(), g,
                                       {.draft_max = kDraftMax}, &r.stats);
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

TEST_CASE("speculative greedy: refusals") {
  nn::HybridModel<float, Cpu> model(test::small_hybrid_config(nn::LayerKind::mamba2));
  model.init_random(53, 0.3f);
  gen::PromptLookupDraft lookup;
  const auto tok = char_tokenizer();
  const auto prompt = prompt_tokens();
  auto run = [&](const nn::DecoderOptions& o, const gen::GenerateConfig& g, gen::SpeculativeConfig sc) {
    nn::Decoder<float, Cpu> dec(model, o);
    return gen::speculative_generate(dec, 0, lookup, tok, {}, prompt, g, sc);
  };
  auto sampled = greedy_config(8);
  sampled.sampling.temperature = 0.7f;
  CHECK_THROWS_WITH_AS(run(target_options(64), sampled, {}), doctest::Contains("only greedy"), Error);
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
