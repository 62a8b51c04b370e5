// The KV-cache decoder on the GPU (bf16): against the CPU decoder in float on the same rounded
// weights, with chunked prefill through flash attention and the cache kernel, batched decode, and
// CUDA-graph replays that must equal eager steps bit for bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <string>

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

// The step plan on the GPU, as speculative decoding runs it: verification steps of K + 1 = 2..9
// tokens (the multi-row product up to 8 rows and past it; Mamba-1's scan lanes of 8 tokens) on 1
// and 3 slots of the teacher (all attention) and of 50% hybrids (Mamba-2, Mamba-1), against the
// same tokens run as single decode steps by the float CPU decoder on the same rounded weights and
// by a bf16 GPU decoder. Two rounds: the first verification runs eagerly, then twice more from
// the rewound slots through its captured graph, which must give the same bits; then each slot
// keeps some of its tokens (all, all but the last, or only the first) and goes back as
// gen::speculative_generate does (a truncation, or the restored snapshot and one replay step of
// the kept tokens), and the second verification replays the graph at the new positions, which
// differ per slot, and must equal an eager decoder's step bit for bit. The GPU is not
// row-invariant (its products tile differently per row count), so logits are compared within bf16
// tolerance and greedy choices may part only at near-ties; the counts are reported.
TEST_CASE("decoder cuda: a verification step follows single decode steps and snapshots restore") {
  MIL_GPU_TEST_GUARD();
  const std::optional<nn::MixerKind> mixers[] = {std::nullopt, nn::MixerKind::mamba2,
                                                 nn::MixerKind::mamba1};
  for (const auto& kind : mixers) {
    const std::string model_name = kind ? nn::mixer_name(*kind) : "teacher";
    CAPTURE(model_name);
    auto base = gpu_config();
    base.attention_bias = false;
    base.d_model = 256;
    base.n_heads = 4;  // head_dim 64 (the GPU SSD's size); d_inner = d_model (Mamba-1), d_xb 128
    nn::HybridConfig h = nn::all_attention(base);
    if (kind) {
      h.attn_layers = {1};
      h.mixer = *kind;
    }
    nn::HybridModel<float, Cpu> cpu_model(h);
    cpu_model.init_random(13, 0.05f);
    auto gpu_model = nn::convert_model<bf16, Cuda>(cpu_model);
    cpu_model = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(cpu_model));
    const int64_t v = base.vocab;
    int64_t agree = 0, agree_gpu = 0, total = 0;
    for (const int64_t n : {1, 3}) {
      for (int64_t k1 = 2; k1 <= 9; ++k1) {
        CAPTURE(n);
        CAPTURE(k1);
        const nn::DecoderOptions o{.slots = 3, .max_seq = 96, .max_tokens = 64, .max_logits = 3 * 9,
                                   .snapshots = 1};
        nn::DecoderOptions eager_o = o;
        eager_o.cuda_graphs = false;
        nn::Decoder<float, Cpu> ref(cpu_model, o);
        // dec verifies (graphs), eager verifies the same without graphs, stepwise decodes.
        nn::Decoder<bf16, Cuda> dec(gpu_model, o), eager(gpu_model, eager_o), stepwise(gpu_model, o);
        const std::vector<int32_t> all_slots = {2, 0, 1};
        const std::vector<int32_t> slots(all_slots.begin(), all_slots.begin() + n);
        std::vector<int64_t> prompt, keep;
        std::vector<std::vector<int32_t>> drafts, later;  // the rows of the two rounds
        for (int32_t i = 0; i < int32_t(n); ++i) {
          const auto seq = tokens(20 + 7 * i + k1, i + 3);
          prompt.push_back(20 + 7 * i);
          keep.push_back(1 + (k1 - 2 + i) % k1);  // k1 - 1, k1, 1 tokens of the first row
          drafts.emplace_back(seq.end() - k1, seq.end());
          later.push_back(tokens(k1, i + 40));
          const auto p = std::span(seq).first(size_t(prompt.back()));
          ref.prefill(slots[size_t(i)], p);
          for (auto* d : {&dec, &eager, &stepwise}) d->prefill(slots[size_t(i)], p);
        }
        const auto rows_of = [&](const std::vector<std::vector<int32_t>>& ids) {
          std::vector<nn::StepRow> rows;
          for (size_t i = 0; i < size_t(n); ++i)
            rows.push_back({slots[i], ids[i], -1, nn::RowLogits::all});
          return rows;
        };
        // The logits after each token of `ids` from single decode steps of all slots.
        const auto decode_each = [&](auto& d, const std::vector<std::vector<int32_t>>& ids) {
          std::vector<std::vector<float>> out;
          for (int64_t j = 0; j < k1; ++j) {
            std::vector<int32_t> next;
            for (size_t i = 0; i < size_t(n); ++i) next.push_back(ids[i][size_t(j)]);
            d.decode(slots, next);
            out.push_back(d.logits_host());
          }
          return out;
        };
        // Row i of dec's last verification against row i of the decode steps.
        const auto compare = [&](const char* what, const std::vector<float>& verified,
                                 const std::vector<std::vector<float>>& want, int64_t& agreed) {
          for (int64_t j = 0; j < k1; ++j) {
            for (size_t i = 0; i < size_t(n); ++i) {
              const int64_t row = dec.logit_offset(i) + j;
              const std::vector<float> got(verified.begin() + row * v, verified.begin() + (row + 1) * v);
              const std::vector<float> exp(want[size_t(j)].begin() + int64_t(i) * v,
                                           want[size_t(j)].begin() + int64_t(i + 1) * v);
              CAPTURE(j);
              CAPTURE(i);
              test::require_close(what, got, exp, 3e-2);
              agreed += std::max_element(got.begin(), got.end()) - got.begin() ==
                        std::max_element(exp.begin(), exp.end()) - exp.begin();
            }
          }
        };
        // Round 1, from the prompts: eager, then captured; then from the rewound slots through
        // the graph.
        const auto round1 = rows_of(drafts);
        for (auto* d : {&dec, &eager})
          for (const int32_t s : slots) d->save_state(s);
        dec.step(round1);
        const auto first = dec.logits().to_vector();
        for (int replay = 0; replay < 2; ++replay) {
          for (size_t i = 0; i < size_t(n); ++i) {
            if (dec.can_rewind())
              dec.truncate(slots[i], prompt[i]);
            else
              dec.restore_state(slots[i]);
          }
          dec.step(round1);
        }
        CHECK(test::bytes_of(dec.logits().to_vector()) == test::bytes_of(first));
        const auto verified = dec.logits_host();
        eager.step(round1);  // two decoders' eager steps agree bitwise (so round 2 can compare them)
        CHECK(test::bytes_of(eager.logits().to_vector()) == test::bytes_of(first));
        for (const int32_t s : slots) {
          ref.save_state(s);
          stepwise.save_state(s);
        }
        compare("verified logits", verified, decode_each(ref, drafts), agree);
        compare("verified logits against GPU decode steps", verified, decode_each(stepwise, drafts),
                agree_gpu);
        total += n * k1;

        // Each slot keeps keep[i] tokens of its row. The verifying decoders go back as speculative
        // decoding does; the stepwise ones restore the prompt's state and decode the kept tokens.
        for (auto* d : {&dec, &eager}) {
          std::vector<nn::StepRow> replays;
          for (size_t i = 0; i < size_t(n); ++i) {
            const int64_t want = prompt[i] + keep[i];
            if (d->length(slots[i]) <= want) continue;
            if (d->can_rewind()) {
              d->truncate(slots[i], want);
            } else {
              d->restore_state(slots[i]);
              replays.push_back({slots[i], std::span(drafts[i]).first(size_t(keep[i])), -1,
                                 nn::RowLogits::none});
            }
          }
          if (!replays.empty()) d->step(replays);
        }
        const auto decode_kept = [&](auto& d) {
          for (const int32_t s : slots) d.restore_state(s);
          for (int64_t j = 0; j < k1; ++j) {
            std::vector<int32_t> some, next;
            for (size_t i = 0; i < size_t(n); ++i) {
              if (j >= keep[i]) continue;
              some.push_back(slots[i]);
              next.push_back(drafts[i][size_t(j)]);
            }
            if (!some.empty()) d.decode(some, next);
          }
        };
        decode_kept(ref);
        decode_kept(stepwise);
        for (size_t i = 0; i < size_t(n); ++i) {
          CAPTURE(i);
          const int64_t want = prompt[i] + keep[i];
          CHECK(dec.length(slots[i]) == want);
          CHECK(eager.length(slots[i]) == want);
          CHECK(ref.length(slots[i]) == want);
          CHECK(stepwise.length(slots[i]) == want);
        }

        // Round 2 at the new positions: a replay of round 1's graph equals an eager step.
        const auto round2 = rows_of(later);
        dec.step(round2);
        eager.step(round2);
        CHECK(test::bytes_of(dec.logits().to_vector()) == test::bytes_of(eager.logits().to_vector()));
        const auto verified2 = dec.logits_host();
        compare("verified logits, second round", verified2, decode_each(ref, later), agree);
        compare("verified logits against GPU decode steps, second round", verified2,
                decode_each(stepwise, later), agree_gpu);
        total += n * k1;
      }
    }
    MESSAGE(model_name << ": greedy choices equal on " << agree << " of " << total
                       << " rows (CPU decode steps), " << agree_gpu << " (GPU decode steps)");
    CHECK(agree >= total - std::max<int64_t>(2, total / 10));
    CHECK(agree_gpu >= total - std::max<int64_t>(2, total / 10));
  }
}
