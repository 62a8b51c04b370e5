// The decoder's step plan against the training forward (prefill in chunks then decode, batches of
// sequences at different lengths), and against itself: a step that verifies k tokens on n slots,
// a prefill of several slots at once, a restored snapshot and a rollback to any acceptance length
// per slot must give bitwise the logits of the single-token steps they stand for, for
// Transformers and Mamba-2 / Mamba-1 hybrids, at one and two threads.
#include <doctest/doctest.h>

#include <cstring>

#include <mil/core/threads.hpp>
#include <mil/nn/decoder.hpp>

#include "common/compare.hpp"
#include "common/small_hybrid.hpp"
#include "common/threads_scope.hpp"

using namespace mil;

namespace {

nn::LlamaConfig small_config(bool bias, bool llama3) {
  nn::LlamaConfig c;
  c.vocab = 53;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.d_ff = 40;
  c.rope_theta = 500.f;
  c.tied_embeddings = !bias;
  c.attention_bias = bias;
  c.rope_llama3_scaling = llama3;
  c.rope_original_max_positions = 16.f;
  return c;
}

// Logits [seq, vocab] of one sequence through the autograd forward.
std::vector<double> full_logits(const nn::HybridModel<double, Cpu>& model,
                                const std::vector<int32_t>& ids) {
  const int64_t seq = int64_t(ids.size());
  auto t = Tensor<int32_t, Cpu>::from(Shape{seq}, ids);
  ag::Tape tape;
  ag::NoGrad ng(tape);
  return model.forward(tape, t, nn::sequence_positions<Cpu>(1, seq), 1, seq).value().to_vector();
}

std::vector<double> row(const std::vector<double>& m, int64_t r, int64_t cols) {
  return {m.begin() + r * cols, m.begin() + (r + 1) * cols};
}

std::vector<int32_t> tokens(int64_t n, int32_t seed, int32_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t((seed * 31 + i * 17 + i * i) % vocab);
  return t;
}

}  // namespace

TEST_CASE("decoder: chunked prefill then decode equals the full forward") {
  for (bool bias : {false, true}) {
    for (bool llama3 : {false, true}) {
      CAPTURE(bias);
      CAPTURE(llama3);
      const auto cfg = small_config(bias, llama3);
      nn::HybridModel<double, Cpu> model(nn::all_attention(cfg));
      model.init_random(3, 0.3f);
      const auto ids = tokens(19, 5, int32_t(cfg.vocab));
      const auto ref = full_logits(model, ids);
      nn::DecoderOptions o;
      o.max_seq = 24;
      o.max_tokens = 4;  // the 7-token prompt runs as 4 + 3
      nn::Decoder<double, Cpu> dec(model, o);
      const int64_t prompt = 7;
      dec.prefill(0, std::span(ids).first(size_t(prompt)));
      CHECK(dec.length(0) == prompt);
      test::require_close("prefill", dec.logits().to_vector(), row(ref, prompt - 1, cfg.vocab), 1e-12);
      for (int64_t t = prompt; t < int64_t(ids.size()); ++t) {
        const int32_t slot = 0;
        dec.decode(std::span(&slot, 1), std::span(ids).subspan(size_t(t), 1));
        CAPTURE(t);
        const auto expected = row(ref, t, cfg.vocab);
        test::require_close("decode", dec.logits().to_vector(), expected, 1e-12);
        // argmax() is the index of the largest logit.
        CHECK(dec.argmax()[0] == int32_t(std::max_element(expected.begin(), expected.end()) -
                                         expected.begin()));
      }
      CHECK(dec.length(0) == int64_t(ids.size()));
    }
  }
}

TEST_CASE("decoder: a batch of sequences at different lengths decodes each as if alone") {
  const auto cfg = small_config(false, false);
  nn::HybridModel<double, Cpu> model(nn::all_attention(cfg));
  model.init_random(11, 0.3f);
  nn::DecoderOptions o;
  o.slots = 4;
  o.max_seq = 16;
  nn::Decoder<double, Cpu> dec(model, o);
  // Slots 0, 2 and 3 with prompts of 3, 7 and 1 tokens; slot 1 stays empty.
  const std::vector<int32_t> slots = {2, 0, 3};
  const std::vector<int64_t> prompt = {7, 3, 1};
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < slots.size(); ++i) {
    seqs.push_back(tokens(prompt[i] + 5, int32_t(i + 1), int32_t(cfg.vocab)));
    dec.prefill(slots[i], std::span(seqs[i]).first(size_t(prompt[i])));
  }
  for (int64_t step = 0; step < 5; ++step) {
    std::vector<int32_t> next;
    for (size_t i = 0; i < slots.size(); ++i) next.push_back(seqs[i][size_t(prompt[i] + step)]);
    dec.decode(slots, next);
    const auto logits = dec.logits().to_vector();
    REQUIRE(dec.logit_rows() == 3);
    for (size_t i = 0; i < slots.size(); ++i) {
      CAPTURE(step);
      CAPTURE(i);
      const auto ref = full_logits(model, std::vector<int32_t>(seqs[i].begin(),
                                                               seqs[i].begin() + prompt[i] + step + 1));
      test::require_close("batch", row(logits, int64_t(i), cfg.vocab),
                          row(ref, prompt[i] + step, cfg.vocab), 1e-12);
    }
  }
  CHECK(dec.length(1) == 0);
  // A reset sequence starts again from position 0.
  dec.reset(0);
  dec.prefill(0, std::span(seqs[1]).first(3));
  test::require_close("after reset", dec.logits().to_vector(),
                      row(full_logits(model, {seqs[1].begin(), seqs[1].begin() + 3}), 2, cfg.vocab),
                      1e-12);
}

TEST_CASE("decoder: bad calls are clear errors and change nothing") {
  const auto cfg = small_config(false, false);
  nn::HybridModel<float, Cpu> model(nn::all_attention(cfg));
  model.init_random(1);
  nn::DecoderOptions o;
  o.slots = 2;
  o.max_seq = 6;
  nn::Decoder<float, Cpu> dec(model, o);
  const std::vector<int32_t> four = {1, 2, 3, 4};
  dec.prefill(0, four);
  const std::vector<int32_t> three = {1, 2, 3};
  CHECK_THROWS_WITH_AS(dec.prefill(0, three), doctest::Contains("exceed the context of 6"), Error);
  CHECK(dec.length(0) == 4);
  const std::vector<int32_t> bad = {1, 53};
  CHECK_THROWS_WITH_AS(dec.prefill(1, bad), doctest::Contains("token id 53"), Error);
  CHECK(dec.length(1) == 0);
  CHECK_THROWS_WITH_AS(dec.prefill(2, three), doctest::Contains("slot 2 of 2"), Error);
  CHECK_THROWS_WITH_AS(dec.prefill(1, std::span<const int32_t>()), doctest::Contains("no tokens"),
                       Error);
  const std::vector<int32_t> dup = {0, 0}, ids = {1, 2};
  CHECK_THROWS_WITH_AS(dec.decode(dup, ids), doctest::Contains("appears twice"), Error);
  const std::vector<int32_t> one = {0};
  CHECK_THROWS_WITH_AS(dec.decode(one, ids), doctest::Contains("1 slots for 2 tokens"), Error);
  CHECK(dec.length(0) == 4);
  // Step plans: too many tokens or logits, a start past the sequence, unsaved snapshots.
  const std::vector<int32_t> two = {5, 6};
  const nn::StepRow past{1, two, 3};
  CHECK_THROWS_WITH_AS(dec.step(std::span(&past, 1)), doctest::Contains("cannot start at position 3"), Error);
  const nn::StepRow all_logits{1, three, -1, nn::RowLogits::all};  // 3 rows, 2 allowed
  CHECK_THROWS_WITH_AS(dec.step(std::span(&all_logits, 1)), doctest::Contains("max_logits"), Error);
  CHECK_THROWS_WITH_AS(dec.save_state(0), doctest::Contains("snapshot 0 of 0"), Error);
  CHECK(dec.length(1) == 0);
  nn::DecoderOptions zero;
  zero.max_seq = 0;
  using Decoder = nn::Decoder<float, Cpu>;
  CHECK_THROWS_WITH_AS(Decoder(model, zero), doctest::Contains("max_seq"), Error);
}

TEST_CASE("kv attention: cache kernel equals causal attention over the same keys") {
  // 2 sequences of 9 tokens, GQA 6 heads over 3 KV heads of 4 dims: causal attention over the
  // whole sequences must equal the cache kernel with every row at its own position.
  const int64_t seq = 9, H = 6, Hkv = 3, hd = 4, batch = 2;
  const int64_t qkvw = (H + 2 * Hkv) * hd, kvw = Hkv * hd;
  std::vector<double> qkv(size_t(batch * seq * qkvw));
  for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = std::sin(double(i) * 0.37) * 1.5;
  const AttentionShape as = attention_shape_fused(batch, seq, H, Hkv, hd);
  std::vector<double> ref(size_t(batch * seq * H * hd));
  cpu::attention_forward(ref.data(), static_cast<double*>(nullptr), qkv.data(), qkv.data() + H * hd,
                         qkv.data() + (H + Hkv) * hd, as);
  const int64_t max_seq = 12;
  std::vector<double> kc(size_t(3 * max_seq * kvw), -1.0), vc = kc;
  std::vector<int32_t> slots, pos;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) {
      slots.push_back(int32_t(2 - b));  // slots 2 and 1
      pos.push_back(int32_t(t));
    }
  const int64_t rows = batch * seq;
  cpu::kv_cache_append(kc.data(), vc.data(), qkv.data() + H * hd, qkv.data() + (H + Hkv) * hd, qkvw,
                       slots.data(), pos.data(), rows, kvw, 3, max_seq);
  std::vector<double> out(ref.size());
  const KvAttentionShape ks{rows, H, Hkv, hd, qkvw, 3, max_seq, float(1.0 / std::sqrt(double(hd)))};
  cpu::attention_kv_cache(out.data(), qkv.data(), kc.data(), vc.data(), slots.data(), pos.data(),
                          ks);
  test::require_close("kv attention", out, ref, 1e-7);  // the scale is a float in both
  pos[3] = int32_t(max_seq);
  CHECK_THROWS_WITH_AS(cpu::attention_kv_cache(out.data(), qkv.data(), kc.data(), vc.data(),
                                               slots.data(), pos.data(), ks),
                       doctest::Contains("row 3 is at position 12"), Error);
}

namespace {

// Rows [first, first + n) of a logits vector, as bytes (bitwise comparisons, NaN included).
std::vector<uint8_t> logit_rows(const std::vector<float>& l, int64_t first, int64_t n, int64_t vocab) {
  std::vector<uint8_t> out(size_t(n * vocab) * sizeof(float));
  std::memcpy(out.data(), l.data() + first * vocab, out.size());
  return out;
}

using test::ThreadsScope;


}  // namespace

TEST_CASE("step plan: verifying k tokens on n slots equals k decode steps, bitwise") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    const auto h = test::small_hybrid_config(kind);
    nn::HybridModel<float, Cpu> model(h);
    model.init_random(29, 0.3f);
    const int64_t vocab = h.llama.vocab;
    std::vector<float> first_run;  // the verification logits at 1 thread
    for (int threads : {1, 2}) {
      CAPTURE(test::layer_kind_name(kind));
      CAPTURE(threads);
      ThreadsScope scope(threads);
      // Three sequences in slots 3, 0, 2 with prompts of 5, 2 and 7 tokens; each then verifies
      // 5 tokens (the last accepted one and 4 drafted) in one step.
      const std::vector<int32_t> slots = {3, 0, 2};
      const std::vector<int64_t> prompt_len = {5, 2, 7};
      const int64_t k1 = 5, n = 3;
      const nn::DecoderOptions o{.slots = 4, .max_seq = 32, .max_tokens = 32,
                                 .max_logits = n * k1};
      nn::Decoder<float, Cpu> plan(model, o), single(model, o);
      std::vector<std::vector<int32_t>> seqs;
      for (size_t i = 0; i < slots.size(); ++i)
        seqs.push_back(tokens(prompt_len[i] + k1 + 1, int32_t(7 * i + 3), int32_t(vocab)));

      // Prefill of three slots in one step == three prefills, bitwise.
      std::vector<nn::StepRow> rows;
      for (size_t i = 0; i < slots.size(); ++i)
        rows.push_back({slots[i], std::span(seqs[i]).first(size_t(prompt_len[i]))});
      plan.step(rows);
      const auto prefill_logits = plan.logits_host();
      REQUIRE(plan.logit_rows() == 3);
      for (size_t i = 0; i < slots.size(); ++i) {
        single.prefill(slots[i], rows[i].ids);
        CHECK(logit_rows(prefill_logits, int64_t(i), 1, vocab) ==
              logit_rows(single.logits_host(), 0, 1, vocab));
      }

      // Verification: one step of 5 tokens per slot, logits for all of them.
      rows.clear();
      for (size_t i = 0; i < slots.size(); ++i)
        rows.push_back({slots[i], std::span(seqs[i]).subspan(size_t(prompt_len[i]), size_t(k1)), -1,
                        nn::RowLogits::all});
      plan.step(rows);
      const auto verified = plan.logits_host();
      REQUIRE(plan.logit_rows() == n * k1);
      for (int64_t j = 0; j < k1; ++j) {
        std::vector<int32_t> next;
        for (size_t i = 0; i < slots.size(); ++i) next.push_back(seqs[i][size_t(prompt_len[i] + j)]);
        single.decode(slots, next);
        const auto stepped = single.logits_host();
        for (size_t i = 0; i < slots.size(); ++i) {
          CAPTURE(j);
          CAPTURE(i);
          CHECK(logit_rows(verified, plan.logit_offset(i) + j, 1, vocab) ==
                logit_rows(stepped, int64_t(i), 1, vocab));
        }
      }
      // Both decoders now hold the same states: the next token gives the same logits.
      std::vector<int32_t> next;
      for (size_t i = 0; i < slots.size(); ++i) {
        CHECK(plan.length(slots[i]) == single.length(slots[i]));
        next.push_back(seqs[i][size_t(prompt_len[i] + k1)]);
      }
      plan.decode(slots, next);
      single.decode(slots, next);
      CHECK(logit_rows(plan.logits_host(), 0, n, vocab) == logit_rows(single.logits_host(), 0, n, vocab));
      // The thread count changes nothing.
      if (threads == 1) first_run = verified;
      else CHECK(logit_rows(verified, 0, n * k1, vocab) == logit_rows(first_run, 0, n * k1, vocab));
    }
  }
}

TEST_CASE("step plan: rows of different lengths in one step equal separate steps, bitwise") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    const auto h = test::small_hybrid_config(kind);
    nn::HybridModel<float, Cpu> model(h);
    model.init_random(31, 0.3f);
    const int64_t vocab = h.llama.vocab;
    const nn::DecoderOptions o{.slots = 4, .max_seq = 32, .max_tokens = 32, .max_logits = 16};
    nn::Decoder<float, Cpu> mixed(model, o), alone(model, o);
    // Rows of 3, 3, 1 and 4 tokens (three groups for the Mamba scans), one of them a fresh
    // sequence, logits of the last token or of all tokens.
    const std::vector<int32_t> slots = {1, 2, 0, 3};
    const std::vector<int64_t> prompt = {4, 6, 3, 0};
    const std::vector<int64_t> len = {3, 3, 1, 4};
    const std::vector<nn::RowLogits> want = {nn::RowLogits::all, nn::RowLogits::last,
                                             nn::RowLogits::all, nn::RowLogits::last};
    std::vector<std::vector<int32_t>> seqs;
    for (size_t i = 0; i < slots.size(); ++i) {
      seqs.push_back(tokens(prompt[i] + len[i], int32_t(5 * i + 1), int32_t(vocab)));
      if (prompt[i] == 0) continue;
      const auto p = std::span(seqs[i]).first(size_t(prompt[i]));
      mixed.prefill(slots[i], p);
      alone.prefill(slots[i], p);
    }
    std::vector<nn::StepRow> rows;
    for (size_t i = 0; i < slots.size(); ++i)
      rows.push_back({slots[i], std::span(seqs[i]).subspan(size_t(prompt[i])), -1, want[i]});
    mixed.step(rows);
    const auto together = mixed.logits_host();
    CHECK(mixed.logit_rows() == 3 + 1 + 1 + 1);
    for (size_t i = 0; i < slots.size(); ++i) {
      CAPTURE(i);
      alone.step(std::span(&rows[i], 1));
      CHECK(alone.logit_rows() == (want[i] == nn::RowLogits::all ? len[i] : 1));
      CHECK(logit_rows(together, mixed.logit_offset(i), alone.logit_rows(), vocab) ==
            logit_rows(alone.logits_host(), 0, alone.logit_rows(), vocab));
      CHECK(mixed.length(slots[i]) == prompt[i] + len[i]);
    }
  }
}

TEST_CASE("step plan: a restored snapshot takes a slot back to the saved state") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    const auto h = test::small_hybrid_config(kind);
    nn::HybridModel<float, Cpu> model(h);
    model.init_random(37, 0.3f);
    const int64_t vocab = h.llama.vocab;
    const nn::DecoderOptions o{.slots = 2, .max_seq = 32, .max_tokens = 16, .max_logits = 8,
                               .snapshots = 2};
    nn::Decoder<float, Cpu> dec(model, o), fresh(model, o);
    const auto prompt = tokens(6, 3, int32_t(vocab)), other = tokens(5, 8, int32_t(vocab));
    const auto a = tokens(4, 11, int32_t(vocab)), b = tokens(4, 12, int32_t(vocab));
    dec.prefill(0, other);  // the neighbouring slot must not be touched by slot 1's snapshots
    dec.prefill(1, prompt);
    dec.save_state(1, 1);
    auto run = [&](nn::Decoder<float, Cpu>& d, const std::vector<int32_t>& ids) {
      const nn::StepRow row{1, ids, -1, nn::RowLogits::all};
      d.step(std::span(&row, 1));
      return logit_rows(d.logits_host(), 0, int64_t(ids.size()), vocab);
    };
    const auto first = run(dec, a);
    CHECK(dec.length(1) == 10);
    dec.restore_state(1, 1);
    CHECK(dec.length(1) == 6);
    CHECK(run(dec, a) == first);  // the same tokens again: the same logits
    dec.restore_state(1, 1);
    fresh.prefill(1, prompt);
    CHECK(run(dec, b) == run(fresh, b));  // another continuation, as if the first never ran
    // Slot 0 kept its own state throughout.
    fresh.reset(0);
    fresh.prefill(0, other);
    const int32_t slot0 = 0, next = 9;
    dec.decode(std::span(&slot0, 1), std::span(&next, 1));
    fresh.decode(std::span(&slot0, 1), std::span(&next, 1));
    CHECK(logit_rows(dec.logits_host(), 0, 1, vocab) == logit_rows(fresh.logits_host(), 0, 1, vocab));
    CHECK_THROWS_WITH_AS(dec.restore_state(0, 0), doctest::Contains("never saved"), Error);
  }
}

// What the speculative loop does after a verification step: each slot keeps its first a + 1 rows
// (the token before the drafts and a accepted drafts) and goes back on the rest, by truncating its
// KV cache (Transformers) or by restoring its state saved before the step and running the kept
// rows again, every slot's replay in one step (hybrids). At every acceptance length 0..k, a
// different one per slot, the slots must then continue exactly as if only the kept tokens had
// been decoded one at a time.
TEST_CASE("step plan: going back to any acceptance length per slot equals decoding the kept tokens") {
  for (nn::LayerKind kind : test::kLayerKinds) {
    CAPTURE(test::layer_kind_name(kind));
    const auto h = test::small_hybrid_config(kind);
    nn::HybridModel<float, Cpu> model(h);
    model.init_random(41, 0.3f);
    const int64_t vocab = h.llama.vocab, k1 = 5, n = 3;  // k1 = the token before + 4 drafts
    const std::vector<int32_t> slots = {2, 0, 3};
    const std::vector<int64_t> prompt_len = {4, 7, 2};
    const nn::DecoderOptions o{.slots = 4, .max_seq = 32, .max_tokens = 32, .max_logits = n * k1,
                               .snapshots = 1};
    for (int64_t shift = 0; shift < k1; ++shift) {  // slot i keeps (shift + 2i) % k1 drafts
      CAPTURE(shift);
      nn::Decoder<float, Cpu> spec(model, o), plain(model, o);
      std::vector<std::vector<int32_t>> seqs;
      std::vector<int64_t> accepted;
      for (size_t i = 0; i < slots.size(); ++i) {
        seqs.push_back(tokens(prompt_len[i] + k1 + 1, int32_t(5 * i + 2), int32_t(vocab)));
        accepted.push_back((shift + 2 * int64_t(i)) % k1);
        spec.prefill(slots[i], std::span(seqs[i]).first(size_t(prompt_len[i])));
        plain.prefill(slots[i], std::span(seqs[i]).first(size_t(prompt_len[i])));
        if (!spec.can_rewind()) spec.save_state(slots[i], 0);
      }
      std::vector<nn::StepRow> rows, replays;
      for (size_t i = 0; i < slots.size(); ++i)
        rows.push_back({slots[i], std::span(seqs[i]).subspan(size_t(prompt_len[i]), size_t(k1)), -1,
                        nn::RowLogits::all});
      spec.step(rows);
      for (size_t i = 0; i < slots.size(); ++i) {
        const auto kept = std::span(seqs[i]).subspan(size_t(prompt_len[i]), size_t(accepted[i] + 1));
        if (spec.can_rewind()) {
          spec.truncate(slots[i], prompt_len[i] + int64_t(kept.size()));
        } else {
          spec.restore_state(slots[i], 0);
          replays.push_back({slots[i], kept, -1, nn::RowLogits::none});
        }
        for (int32_t t : kept) plain.decode(std::span(&slots[i], 1), std::span(&t, 1));
      }
      if (!replays.empty()) spec.step(replays);
      // The same lengths, and the same logits for each slot's next token (its state is right).
      std::vector<int32_t> next;
      for (size_t i = 0; i < slots.size(); ++i) {
        CAPTURE(i);
        CHECK(spec.length(slots[i]) == prompt_len[i] + accepted[i] + 1);
        CHECK(spec.length(slots[i]) == plain.length(slots[i]));
        next.push_back(seqs[i][size_t(prompt_len[i] + k1)]);
      }
      spec.decode(slots, next);
      plain.decode(slots, next);
      CHECK(logit_rows(spec.logits_host(), 0, n, vocab) == logit_rows(plain.logits_host(), 0, n, vocab));
    }
  }
}
