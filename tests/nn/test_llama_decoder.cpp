// The KV-cache decoder against the training forward: prefill (in chunks) then decode, and batches
// of sequences at different lengths, must give the logits the full-sequence forward gives.
#include <doctest/doctest.h>

#include <mil/nn/decoder.hpp>

#include "common/compare.hpp"

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
std::vector<double> full_logits(const nn::LlamaModel<double, Cpu>& model,
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
      nn::LlamaModel<double, Cpu> model(cfg);
      model.init_random(3, 0.3f);
      const auto ids = tokens(19, 5, int32_t(cfg.vocab));
      const auto ref = full_logits(model, ids);
      nn::DecoderOptions o;
      o.max_seq = 24;
      o.max_chunk = 4;  // the 7-token prompt runs as 4 + 3
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
  nn::LlamaModel<double, Cpu> model(cfg);
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
  nn::LlamaModel<float, Cpu> model(cfg);
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
