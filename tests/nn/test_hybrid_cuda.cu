// Hybrid models on the GPU (bf16) against the float CPU model on the same rounded weights: the
// training forward and backward, the decoder's chunked prefill and batched decode, and CUDA-graph
// decode steps bitwise equal to eager ones. Head dim 64: the size the SSD kernels are built for.
#include <doctest/doctest.h>

#include <mil/distill/init_from_attention.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/hybrid.hpp>

#include "common/gpu.hpp"

using namespace mil;

namespace {

nn::HybridConfig gpu_hybrid(nn::MixerKind kind) {
  nn::HybridConfig h;
  h.llama.vocab = 301;
  h.llama.d_model = 256;
  h.llama.n_layers = 4;
  h.llama.n_heads = 4;
  h.llama.n_kv_heads = 2;
  h.llama.head_dim = 64;
  h.llama.d_ff = 200;
  h.attn_layers = {1};
  h.mixer = kind;
  return h;
}

std::vector<int32_t> tokens(int64_t n, int32_t seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(int32_t((seed * 37 + i * 11 + i * i) % 301));
  return t;
}

// The model from a random teacher, and the same weights rounded to bf16 on the CPU in float.
struct Pair {
  nn::HybridModel<float, Cpu> cpu;
  nn::HybridModel<bf16, Cuda> gpu;
};
Pair make_pair(nn::MixerKind kind, uint64_t seed) {
  const auto h = gpu_hybrid(kind);
  nn::HybridModel<float, Cpu> teacher(nn::all_attention(h.llama));
  teacher.init_random(seed, 0.05f);
  auto m = distill::init_from_attention(teacher, h, seed + 1);
  auto gpu = nn::convert_model<bf16, Cuda>(m);
  return {nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(m)), std::move(gpu)};
}

}  // namespace

TEST_CASE("hybrid cuda: bf16 forward and backward agree with the float CPU model") {
  MIL_GPU_TEST_GUARD();
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    CAPTURE(std::string(nn::mixer_name(kind)));
    auto [cpu_model, gpu_model] = make_pair(kind, 3);
    const int64_t batch = 2, seq = 77;  // not a multiple of any chunk length
    auto ids_v = tokens(batch * seq, 4);
    auto tgt_v = tokens(batch * seq, 5);
    auto ids = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, ids_v);
    auto tgt = Tensor<int32_t, Cpu>::from(Shape{batch * seq}, tgt_v);
    auto pos = nn::sequence_positions<Cpu>(batch, seq);
    ag::Tape ct;
    cpu_model.params().zero_grad();
    auto cl = ag::cross_entropy(ct, cpu_model.forward(ct, ids, pos, batch, seq), tgt);
    ct.backward();
    cpu_model.params().finish_backward();
    ag::Tape gt;
    gpu_model.params().zero_grad();
    auto gl = ag::cross_entropy(gt, gpu_model.forward(gt, ids.to<Cuda>(), pos.to<Cuda>(), batch, seq),
                                tgt.to<Cuda>());
    gt.backward();
    gpu_model.params().finish_backward();
    CHECK(gl.mean() == doctest::Approx(cl.mean()).epsilon(2e-2));
    // Gradients per parameter, normalised: bf16 activations along 4 layers.
    const auto g_cpu = cpu_model.params().grads().to_vector();
    const auto g_gpu = gpu_model.params().grads().to_vector();
    for (const auto& e : cpu_model.params().entries()) {
      std::vector<float> a, b(g_cpu.begin() + e.offset, g_cpu.begin() + e.offset + e.var.numel());
      for (int64_t i = 0; i < e.var.numel(); ++i) a.push_back(float(g_gpu[size_t(e.offset + i)]));
      // Per-head scalars (D, dt_bias, A_log) are sums over every token and channel of products
      // that largely cancel: bf16 activations leave them a larger relative error.
      const double tol = e.var.numel() <= gpu_hybrid(kind).llama.n_heads ? 0.15 : 6e-2;
      test::require_close("grad " + e.name, a, b, tol);
    }
  }
}

TEST_CASE("hybrid cuda: decoder prefill and batched decode follow the float CPU decoder") {
  MIL_GPU_TEST_GUARD();
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    CAPTURE(std::string(nn::mixer_name(kind)));
    auto [cpu_model, gpu_model] = make_pair(kind, 7);
    nn::DecoderOptions o;
    o.slots = 3;
    o.max_seq = 200;
    o.max_tokens = 48;  // the 100-token prompt runs in 3 chunks
    nn::Decoder<float, Cpu> ref(cpu_model, o);
    nn::Decoder<bf16, Cuda> dec(gpu_model, o);
    const std::vector<int32_t> slots = {0, 1, 2};
    const std::vector<int64_t> prompt = {100, 3, 17};
    for (size_t i = 0; i < slots.size(); ++i) {
      const auto ids = tokens(prompt[i], int32_t(i));
      ref.prefill(slots[i], ids);
      dec.prefill(slots[i], ids);
      test::require_close("prefill logits", dec.logits_host(), ref.logits_host(), 3e-2);
    }
    for (int step = 0; step < 10; ++step) {
      std::vector<int32_t> ids = step == 0 ? std::vector<int32_t>{5, 6, 7}
                                           : std::vector<int32_t>(ref.argmax().begin(), ref.argmax().end());
      ref.decode(slots, ids);
      dec.decode(slots, ids);  // step 0 eager, then captured, then replays
      CAPTURE(step);
      test::require_close("decode logits", dec.logits_host(), ref.logits_host(), 3e-2);
    }
  }
}

TEST_CASE("hybrid cuda: graph replays equal eager decode steps bitwise") {
  MIL_GPU_TEST_GUARD();
  for (auto kind : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    CAPTURE(std::string(nn::mixer_name(kind)));
    auto pair = make_pair(kind, 11);
    nn::DecoderOptions eager_o;
    eager_o.slots = 2;
    eager_o.max_seq = 64;
    eager_o.cuda_graphs = false;
    nn::DecoderOptions graph_o = eager_o;
    graph_o.cuda_graphs = true;
    nn::Decoder<bf16, Cuda> eager(pair.gpu, eager_o), graph(pair.gpu, graph_o);
    for (auto* d : {&eager, &graph}) {
      d->prefill(0, tokens(9, 1));
      d->prefill(1, tokens(2, 2));
    }
    const std::vector<int32_t> both = {1, 0}, one = {1};
    for (int step = 0; step < 6; ++step) {
      const bool two = step % 2 == 0;
      std::vector<int32_t> ids = two ? std::vector<int32_t>{int32_t(step), int32_t(step + 40)}
                                     : std::vector<int32_t>{int32_t(step + 80)};
      eager.decode(two ? both : one, ids);
      graph.decode(two ? both : one, ids);
      CAPTURE(step);
      CHECK(test::bytes_of(graph.logits().to_vector()) == test::bytes_of(eager.logits().to_vector()));
    }
  }
}
