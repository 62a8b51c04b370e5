// The KV-cache decoder on the GPU (bf16): against the CPU decoder in float on the same rounded
// weights, with chunked prefill through flash attention and the cache kernel, batched decode, and
// CUDA-graph replays that must equal eager steps bit for bit.
#include <doctest/doctest.h>

#include <mil/nn/decoder.hpp>

#include "common/gpu.hpp"

using namespace mil;

namespace {

nn::LlamaConfig gpu_config() {
  nn::LlamaConfig c;
  c.vocab = 301;
  c.d_model = 128;
  c.n_layers = 3;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.d_ff = 200;
  c.attention_bias = true;
  return c;
}

std::vector<int32_t> tokens(int64_t n, int32_t seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(int32_t((seed * 37 + i * 11 + i * i) % 301));
  return t;
}

}  // namespace

TEST_CASE("decoder cuda: bf16 prefill and batched decode follow the float CPU decoder") {
  MIL_GPU_TEST_GUARD();
  nn::HybridModel<float, Cpu> cpu_model(nn::all_attention(gpu_config()));
  cpu_model.init_random(5, 0.05f);
  // Both models hold the same bf16-rounded weights.
  auto gpu_model = nn::convert_model<bf16, Cuda>(cpu_model);
  cpu_model = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(cpu_model));
  nn::DecoderOptions o;
  o.slots = 3;
  o.max_seq = 160;
  o.max_tokens = 64;  // the 100-token prompt: flash attention, then the cache kernel
  nn::Decoder<float, Cpu> ref(cpu_model, o);
  nn::Decoder<bf16, Cuda> dec(gpu_model, o);
  const std::vector<int32_t> slots = {0, 1, 2};
  const std::vector<int64_t> prompt = {100, 3, 17};
  for (size_t i = 0; i < slots.size(); ++i) {
    const auto ids = tokens(prompt[i], int32_t(i));
    ref.prefill(slots[i], ids);
    dec.prefill(slots[i], ids);
    test::require_close("prefill logits", dec.logits_host(), ref.logits_host(), 2e-2);
  }
  int agree = 0, total = 0;
  for (int step = 0; step < 12; ++step) {
    const auto next = std::vector<int32_t>(ref.argmax().begin(), ref.argmax().end());
    std::vector<int32_t> ids = step == 0 ? std::vector<int32_t>{5, 6, 7} : next;
    ref.decode(slots, ids);
    dec.decode(slots, ids);  // step 0 eager, then captured, then graph replays
    CAPTURE(step);
    test::require_close("decode logits", dec.logits_host(), ref.logits_host(), 2e-2);
    for (size_t i = 0; i < slots.size(); ++i) agree += dec.argmax()[i] == ref.argmax()[i];
    total += 3;
  }
  MESSAGE("greedy choices equal on " << agree << " of " << total);
  CHECK(agree >= total - 2);
}

TEST_CASE("decoder cuda: graph replays equal eager steps bitwise") {
  MIL_GPU_TEST_GUARD();
  nn::HybridModel<float, Cpu> cpu_model(nn::all_attention(gpu_config()));
  cpu_model.init_random(9, 0.05f);
  auto gpu_model = nn::convert_model<bf16, Cuda>(cpu_model);
  nn::DecoderOptions eager_o;
  eager_o.slots = 2;
  eager_o.max_seq = 64;
  eager_o.cuda_graphs = false;
  nn::DecoderOptions graph_o = eager_o;
  graph_o.cuda_graphs = true;
  nn::Decoder<bf16, Cuda> eager(gpu_model, eager_o), graph(gpu_model, graph_o);
  for (auto* d : {&eager, &graph}) {
    d->prefill(0, tokens(9, 1));
    d->prefill(1, tokens(2, 2));
  }
  const std::vector<int32_t> both = {1, 0}, one = {1};
  for (int step = 0; step < 6; ++step) {
    // Alternate batch sizes: each size gets its own graph.
    const bool pair = step % 2 == 0;
    std::vector<int32_t> ids = pair ? std::vector<int32_t>{int32_t(step), int32_t(step + 40)}
                                    : std::vector<int32_t>{int32_t(step + 80)};
    eager.decode(pair ? both : one, ids);
    graph.decode(pair ? both : one, ids);
    CAPTURE(step);
    CHECK(test::bytes_of(graph.logits().to_vector()) == test::bytes_of(eager.logits().to_vector()));
  }
  CHECK(graph.length(0) == 9 + 3);
  CHECK(graph.length(1) == 2 + 6);
}

// The step plan on the GPU: a verification step of 5 tokens on 3 slots of a 50% Mamba-2 hybrid
// against 5 decode steps of the float CPU decoder on the same rounded weights, and a snapshot
// restored and replayed through a captured graph. The GPU is not row-invariant (its products
// tile differently per row count), so logits are compared within bf16 tolerance and greedy
// choices may part only at near-ties; the count is reported.
TEST_CASE("decoder cuda: a verification step follows single decode steps and snapshots restore") {
  MIL_GPU_TEST_GUARD();
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    CAPTURE(nn::mixer_name(kind));
    auto base = gpu_config();
    base.attention_bias = false;
    base.d_model = 256;
    base.n_heads = 4;  // head_dim 64 (the GPU SSD's size); d_inner = d_model (Mamba-1), d_xb 128
    nn::HybridConfig h = nn::all_attention(base);
    h.attn_layers = {1};
    h.mixer = kind;
    nn::HybridModel<float, Cpu> cpu_model(h);
    cpu_model.init_random(13, 0.05f);
    auto gpu_model = nn::convert_model<bf16, Cuda>(cpu_model);
    cpu_model = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(cpu_model));
    const int64_t k1 = 5;
    const nn::DecoderOptions o{.slots = 3, .max_seq = 96, .max_tokens = 64, .max_logits = 3 * k1,
                               .snapshots = 1};
    nn::Decoder<float, Cpu> ref(cpu_model, o);
    nn::Decoder<bf16, Cuda> dec(gpu_model, o);
    const std::vector<int32_t> slots = {2, 0, 1};
    std::vector<std::vector<int32_t>> seqs;
    std::vector<nn::StepRow> rows;
    for (int32_t i = 0; i < 3; ++i) seqs.push_back(tokens(20 + 7 * i + k1, i + 3));
    for (size_t i = 0; i < 3; ++i) {
      const auto prompt = std::span(seqs[i]).first(seqs[i].size() - size_t(k1));
      ref.prefill(slots[i], prompt);
      dec.prefill(slots[i], prompt);
      dec.save_state(slots[i]);
      rows.push_back({slots[i], std::span(seqs[i]).last(size_t(k1)), -1, nn::RowLogits::all});
    }
    dec.step(rows);  // eager, then captured
    const auto first = dec.logits().to_vector();
    for (int replay = 0; replay < 2; ++replay) {  // from the restored states, through the graph
      for (size_t i = 0; i < 3; ++i) dec.restore_state(slots[i]);
      dec.step(rows);
    }
    CHECK(test::bytes_of(dec.logits().to_vector()) == test::bytes_of(first));
    const auto verified = dec.logits_host();
    int agree = 0, total = 0;
    for (int64_t j = 0; j < k1; ++j) {
      std::vector<int32_t> next;
      for (size_t i = 0; i < 3; ++i) next.push_back(rows[i].ids[size_t(j)]);
      ref.decode(slots, next);
      const auto want = ref.logits_host();
      for (size_t i = 0; i < 3; ++i) {
        const int64_t v = cpu_model.config().llama.vocab;
        const auto row = dec.logit_offset(i) + j;
        const std::vector<float> got(verified.begin() + row * v, verified.begin() + (row + 1) * v);
        const std::vector<float> exp(want.begin() + int64_t(i) * v, want.begin() + int64_t(i + 1) * v);
        CAPTURE(j);
        CAPTURE(i);
        test::require_close("verified logits", got, exp, 3e-2);
        agree += std::max_element(got.begin(), got.end()) - got.begin() ==
                 std::max_element(exp.begin(), exp.end()) - exp.begin();
        ++total;
      }
    }
    MESSAGE("greedy choices equal on " << agree << " of " << total);
    CHECK(agree >= total - 2);
  }
}
