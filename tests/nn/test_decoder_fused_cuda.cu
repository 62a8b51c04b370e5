// The GPU decoder's steps of at most 8 rows (decode, verification) run the fused decode products
// (kernels/fused_rows.cuh) and split the attention keys as for one row: a verification step of
// an all-attention model then gives bitwise the logits of the decode steps it replaces, on the
// GPU as on the CPU, and greedy speculative decoding is exactly plain greedy decoding.
#include <doctest/doctest.h>

#include <mil/nn/decoder.hpp>

#include "common/gpu.hpp"

using namespace mil;

namespace {

nn::HybridModel<bf16, Cuda> attention_model(bool bias) {
  nn::LlamaConfig c;
  c.vocab = 301;
  c.d_model = 256;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.d_ff = 320;
  c.attention_bias = bias;
  nn::HybridModel<bf16, Cuda> m(nn::all_attention(c));
  m.init_random(21, 0.05f);
  return m;
}

std::vector<int32_t> tokens(int64_t n, int32_t seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(int32_t((seed * 41 + i * 13 + i * i) % 301));
  return t;
}

}  // namespace

TEST_CASE("decoder cuda: verifying up to 8 tokens equals decoding them, bitwise") {
  MIL_GPU_TEST_GUARD();
  for (bool bias : {false, true}) {
    const auto model = attention_model(bias);
    const int64_t vocab = model.config().llama.vocab;
    for (int64_t k1 : {2, 5, 8}) {
      CAPTURE(bias);
      CAPTURE(k1);
      const nn::DecoderOptions o{.slots = 2, .max_seq = 200, .max_tokens = 64, .max_logits = 8};
      nn::Decoder<bf16, Cuda> plain(model, o), verify(model, o);
      const auto prompt = tokens(70, int32_t(k1)), draft = tokens(k1, 9);
      for (auto* d : {&plain, &verify}) {
        d->prefill(1, tokens(33, 5));  // another sequence in the cache, untouched by the rows
        d->prefill(0, prompt);
      }
      // Plain: one token per step (eager, captured, replayed).
      std::vector<std::vector<float>> stepwise;
      for (int64_t j = 0; j < k1; ++j) {
        const int32_t slot = 0, id = draft[size_t(j)];
        plain.decode(std::span(&slot, 1), std::span(&id, 1));
        stepwise.push_back(plain.logits_host());
      }
      // Verification: the k1 tokens as one row with all their logits, twice (eager, captured).
      for (int run = 0; run < 2; ++run) {
        if (run == 1) verify.truncate(0, int64_t(prompt.size()));
        const nn::StepRow row{0, draft, -1, nn::RowLogits::all};
        verify.step(std::span(&row, 1));
        const auto all = verify.logits_host();
        for (int64_t j = 0; j < k1; ++j) {
          CAPTURE(j);
          const std::vector<float> got(all.begin() + j * vocab, all.begin() + (j + 1) * vocab);
          CHECK(test::bytes_of(got) == test::bytes_of(stepwise[size_t(j)]));
        }
      }
    }
  }
}
