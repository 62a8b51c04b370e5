// eval/teacher_relative.hpp: the metrics on hand-made logits, the answer mask, and the batched,
// padded driver against a plain per-sequence computation written here.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <mil/eval/teacher_relative.hpp>

#include "common/error_of.hpp"

using namespace mil;

namespace {

nn::LlamaConfig tiny_llama() {
  nn::LlamaConfig c;
  c.vocab = 40;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 16;
  c.d_ff = 64;
  return c;
}

// A student-like model: layer 0 a Mamba-2 mixer, layer 1 attention.
nn::HybridConfig tiny_hybrid() {
  nn::HybridConfig h;
  h.llama = tiny_llama();
  h.attn_layers = {1};
  return h;
}

data::LabelledSequence make_sequence(int64_t len, int32_t prompt_len, uint64_t seed, int64_t vocab) {
  data::LabelledSequence s;
  s.prompt_len = prompt_len;
  for (int64_t t = 0; t < len; ++t)
    s.tokens.push_back(int32_t(rng::uniform(seed, 7, uint64_t(t), 0.f, 1.f) * float(vocab)) % int32_t(vocab));
  return s;
}

// Sequences of mixed lengths, prompts and one without answer tokens.
std::vector<data::LabelledSequence> mixed_sequences(int64_t vocab) {
  return {make_sequence(9, 4, 1, vocab),  make_sequence(5, 1, 2, vocab),
          make_sequence(12, 6, 3, vocab), make_sequence(7, 7, 4, vocab),  // prompt only
          make_sequence(9, 0, 5, vocab),  make_sequence(20, 3, 6, vocab),
          make_sequence(3, 2, 7, vocab)};
}

// log-softmax of one row, in double.
std::vector<double> log_probs(const float* x, int64_t vocab) {
  double mx = x[0];
  for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, double(x[v]));
  double z = 0;
  for (int64_t v = 0; v < vocab; ++v) z += std::exp(double(x[v]) - mx);
  std::vector<double> out(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) out[size_t(v)] = double(x[v]) - mx - std::log(z);
  return out;
}

// Logits [len, vocab] of one sequence alone (no batch, no padding).
std::vector<float> logits_alone(const nn::HybridModel<float, Cpu>& m, std::vector<int32_t> ids) {
  ag::Tape tape;
  ag::NoGrad no_grad(tape);
  const int64_t n = int64_t(ids.size());
  auto l = m.forward(tape, Tensor<int32_t, Cpu>::from(Shape{n}, ids), nn::sequence_positions<Cpu>(1, n), 1, n);
  return std::vector<float>(l.value().data(), l.value().data() + l.value().numel());
}

}  // namespace

TEST_CASE("teacher_relative: hand-computed metrics on a three-token vocabulary") {
  // Position 1: teacher p = (0.8, 0.1, 0.1), model uniform, label 0; both argmax 0 (the model's
  // by the tie rule). Position 2: teacher (0.1, 0.2, 0.7), model (0.7, 0.2, 0.1), label 2.
  const float t1[3] = {float(std::log(0.8)), float(std::log(0.1)), float(std::log(0.1))};
  const float m1[3] = {0.f, 0.f, 0.f};
  const float t2[3] = {float(std::log(0.1)), float(std::log(0.2)), float(std::log(0.7))};
  const float m2[3] = {float(std::log(0.7)), float(std::log(0.2)), float(std::log(0.1))};
  eval::TeacherRelativeSums sums;
  sums.add_position(t1, m1, 3, 0);
  sums.add_position(t2, m2, 3, 2);
  const auto r = sums.result();
  const double teacher_nll = (-std::log(0.8) - std::log(0.7)) / 2;
  const double model_nll = (std::log(3.0) - std::log(0.1)) / 2;
  const double kl1 = 0.8 * std::log(0.8 * 3) + 2 * 0.1 * std::log(0.1 * 3);
  const double kl2 = 0.1 * std::log(0.1 / 0.7) + 0.2 * std::log(1.0) + 0.7 * std::log(0.7 / 0.1);
  CHECK(r.tokens == 2);
  CHECK(r.teacher_nll == doctest::Approx(teacher_nll).epsilon(1e-6));
  CHECK(r.model_nll == doctest::Approx(model_nll).epsilon(1e-6));
  CHECK(r.teacher_ppl == doctest::Approx(std::exp(teacher_nll)).epsilon(1e-6));
  CHECK(r.model_ppl == doctest::Approx(std::exp(model_nll)).epsilon(1e-6));
  CHECK(r.ppl_ratio == doctest::Approx(std::exp(model_nll - teacher_nll)).epsilon(1e-6));
  CHECK(r.kl == doctest::Approx((kl1 + kl2) / 2).epsilon(1e-6));
  CHECK(r.top1_agreement == 0.5);
  // The direction of the KL: KL(model || teacher) is larger at position 1 (0.511 against 0.460)
  // and the same at position 2.
  const double reverse = (std::log(1 / 2.4) + 2 * std::log(1 / 0.3)) / 3;
  CHECK(std::abs(r.kl - (reverse + kl2) / 2) > 2e-2);
}

TEST_CASE("teacher_relative: prompt positions do not count and answer positions do") {
  const int64_t vocab = 5, len = 7;
  const int32_t prompt_len = 3;  // rows 2..5 predict the answer tokens 3..6
  std::vector<int32_t> tokens = {1, 4, 0, 2, 3, 3, 1};
  std::vector<float> teacher(size_t(len * vocab)), model(teacher.size());
  for (size_t i = 0; i < teacher.size(); ++i) {
    teacher[i] = rng::uniform(11, 0, i, -2.f, 2.f);
    model[i] = rng::uniform(12, 0, i, -2.f, 2.f);
  }
  auto score = [&](const std::vector<float>& m) {
    eval::TeacherRelativeSums s;
    s.add_sequence(teacher.data(), m.data(), vocab, tokens, prompt_len);
    return s.result();
  };
  const auto base = score(model);
  CHECK(base.tokens == len - prompt_len);
  CHECK(base.sequences == 1);
  for (int64_t row = 0; row < len; ++row) {
    CAPTURE(row);
    auto changed = model;
    for (int64_t v = 0; v < vocab; ++v) changed[size_t(row * vocab + v)] = v == 0 ? 9.f : -9.f;
    const auto r = score(changed);
    const bool counts = row >= prompt_len - 1 && row < len - 1;
    CHECK((r.model_nll != base.model_nll) == counts);
    CHECK((r.kl != base.kl) == counts);
  }
  // No prompt: every position but the last predicts an answer token.
  eval::TeacherRelativeSums all;
  all.add_sequence(teacher.data(), model.data(), vocab, tokens, 0);
  CHECK(all.result().tokens == len - 1);
}

TEST_CASE("teacher_relative: a model against itself has ratio 1 and KL 0 and agreement 1") {
  nn::HybridModel<float, Cpu> m(tiny_hybrid());
  m.init_random(3, 0.2f);
  const auto seqs = mixed_sequences(tiny_llama().vocab);
  const auto r = eval::teacher_relative(m, m, seqs, {.max_len = 16, .batch_tokens = 24, .on_progress = {}});
  CHECK(r.tokens > 0);
  CHECK(r.ppl_ratio == 1.0);
  CHECK(r.kl == 0.0);
  CHECK(r.top1_agreement == 1.0);
  CHECK(r.teacher_ppl == r.model_ppl);
}

TEST_CASE("teacher_relative: batched and padded run equals each sequence run alone") {
  nn::HybridModel<float, Cpu> teacher(nn::all_attention(tiny_llama()));
  teacher.init_random(1, 0.3f);
  nn::HybridModel<float, Cpu> model(tiny_hybrid());
  model.init_random(2, 0.3f);
  const int64_t vocab = tiny_llama().vocab, max_len = 16;
  const auto seqs = mixed_sequences(vocab);

  // The reference: each sequence cut to max_len, run alone, scored with the formulas directly.
  double t_nll = 0, m_nll = 0, kl = 0;
  int64_t agree = 0, tokens = 0, sequences = 0;
  for (const auto& s : seqs) {
    std::vector<int32_t> ids(s.tokens.begin(), s.tokens.begin() + std::min<int64_t>(max_len, int64_t(s.tokens.size())));
    const int64_t n = int64_t(ids.size());
    const auto lt = logits_alone(teacher, ids), lm = logits_alone(model, ids);
    bool any = false;
    for (int64_t t = 0; t + 1 < n; ++t) {
      if (t + 1 < s.prompt_len) continue;
      const auto pt = log_probs(lt.data() + t * vocab, vocab), pm = log_probs(lm.data() + t * vocab, vocab);
      const int32_t y = ids[size_t(t + 1)];
      t_nll -= pt[size_t(y)];
      m_nll -= pm[size_t(y)];
      for (int64_t v = 0; v < vocab; ++v) kl += std::exp(pt[size_t(v)]) * (pt[size_t(v)] - pm[size_t(v)]);
      agree += std::max_element(pt.begin(), pt.end()) - pt.begin() == std::max_element(pm.begin(), pm.end()) - pm.begin();
      ++tokens;
      any = true;
    }
    sequences += any;
  }
  REQUIRE(tokens > 0);
  // Batches of several sequences (padded) and of one (the 20-token one alone, cut to 16).
  for (int64_t batch_tokens : {int64_t(1), int64_t(40), int64_t(1000)}) {
    CAPTURE(batch_tokens);
    int64_t calls = 0;
    const auto r = eval::teacher_relative(
        teacher, model, seqs,
        {.max_len = max_len, .batch_tokens = batch_tokens, .on_progress = [&](int64_t, int64_t) { ++calls; }});
    CHECK(r.tokens == tokens);
    CHECK(r.sequences == sequences);
    CHECK(calls >= 1);
    CHECK(r.teacher_nll == doctest::Approx(t_nll / double(tokens)).epsilon(1e-5));
    CHECK(r.model_nll == doctest::Approx(m_nll / double(tokens)).epsilon(1e-5));
    CHECK(r.kl == doctest::Approx(kl / double(tokens)).epsilon(1e-4));
    CHECK(r.top1_agreement == doctest::Approx(double(agree) / double(tokens)).epsilon(1e-12));
    CHECK(r.ppl_ratio == doctest::Approx(std::exp((m_nll - t_nll) / double(tokens))).epsilon(1e-5));
  }
  // Random models differ: the metrics must see it.
  CHECK(kl > 0);
}

TEST_CASE("teacher_relative: refuses mismatched vocabularies and bad sequences") {
  nn::HybridModel<float, Cpu> teacher(nn::all_attention(tiny_llama()));
  auto other_cfg = tiny_llama();
  other_cfg.vocab = 41;
  nn::HybridModel<float, Cpu> other(nn::all_attention(other_cfg));
  const auto seqs = mixed_sequences(tiny_llama().vocab);
  CHECK(test::error_of([&] { eval::teacher_relative(teacher, other, seqs); })
            .find("vocabulary (41) is not the teacher's (40)") != std::string::npos);
  auto bad = seqs;
  bad[2].tokens[5] = 40;
  CHECK(test::error_of([&] { eval::teacher_relative(teacher, teacher, bad); })
            .find("sequence 2 token 5 is 40") != std::string::npos);
  bad = seqs;
  bad[1].prompt_len = 6;
  CHECK(test::error_of([&] { eval::teacher_relative(teacher, teacher, bad); })
            .find("sequence 1 has prompt_len 6 for 5 tokens") != std::string::npos);
}
