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
