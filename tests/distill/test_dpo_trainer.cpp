// Stage 3 (DPO) in the distillation trainer, on the CPU with tiny random models: a short run
// raises the held-out preference accuracy and reward margin; the gradient scales with beta (so it
// vanishes as beta -> 0); gradient accumulation gives the step the gradient of the mean over all
// its pairs; a stopped and resumed run equals an uninterrupted one bitwise; bad input is refused
// with a clear message.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <mil/data/preference_pairs.hpp>
#include <mil/distill/preference_eval.hpp>
#include <mil/distill/student.hpp>
#include <mil/distill/trainer.hpp>

#include "common/error_of.hpp"
#include "data/small_models.hpp"
#include "run_files.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {

nn::LlamaConfig dpo_llama() { return test::small_llama(61); }

// Pairs whose chosen answers use tokens 1..8 and rejected answers tokens 40..59: a preference a
// policy can learn from some pairs and show on others. Prompts of 3..5 tokens, answers of 3..6,
// from Philox stream `seed`; the reference log-probabilities are `reference`'s.
std::vector<data::PreferencePair> make_pairs(const nn::HybridModel<float, Cpu>& reference, int n,
                                             uint64_t seed) {
  std::vector<data::PreferencePair> out;
  for (int i = 0; i < n; ++i) {
    auto draw = [&](uint64_t k, float lo, float hi) {
      return int32_t(rng::uniform(seed, uint64_t(i), k, lo, hi - 0.01f));
    };
    data::PreferencePair p;
    const int prompt = 3 + draw(0, 0, 3), chosen = 3 + draw(1, 0, 4), rejected = 3 + draw(2, 0, 4);
    for (int t = 0; t < prompt; ++t) p.prompt.push_back(draw(10 + uint64_t(t), 9, 40));
    for (int t = 0; t < chosen; ++t) p.chosen.push_back(draw(20 + uint64_t(t), 1, 9));
    for (int t = 0; t < rejected; ++t) p.rejected.push_back(draw(30 + uint64_t(t), 40, 60));
    out.push_back(std::move(p));
  }
  data::score_pairs(reference, std::span(out), 4);
  return out;
}

struct DpoFixture {
  nn::HybridModel<float, Cpu> teacher{nn::all_attention(dpo_llama())};
  nn::HybridConfig config;
  std::vector<data::PreferencePair> train, heldout;
  DpoFixture() {
    teacher.init_random(3, 0.1f);
    config.llama = dpo_llama();
    config.attn_layers = nn::attention_layout(2, "50%");
    train = make_pairs(teacher, 32, 21);
    heldout = make_pairs(teacher, 12, 22);
  }
  // The stage-2 model of stage 3: every parameter its own.
  nn::HybridModel<float, Cpu> policy() const {
    auto student = distill::make_student(teacher, config, distill::Trainable::mixers,
                                         distill::init_from_attention(teacher, config, 5));
    nn::HybridModel<float, Cpu> full(config);
    full.copy_owned_from(student);
    return full;
  }
  static distill::TrainOptions options(int64_t steps) {
    distill::TrainOptions o = distill::dpo_options();
    o.lr = 3e-3f;  // tiny models and few steps: far above the full-size 5e-7
    o.warmup_steps = 1;
    o.steps = steps;
    o.micro_batch = 2;
    o.accumulation = 2;
    o.seq_len = 12;
    o.seed = 4;
    o.checkpoint_every = 1;
    return o;
  }
};

using test::file_bytes, test::metrics_without_timings;
fs::path fresh_dir(const std::string& name) { return test::fresh_run_dir("dpo_" + name); }

}  // namespace

TEST_CASE("dpo: a short run raises held-out preference accuracy and reward margin") {
  DpoFixture fx;
  auto policy = fx.policy();
  const auto before_w = policy.params().values().to_vector();
  const double beta = fx.options(1).dpo.beta;
  const auto before = distill::preference_metrics(policy, std::span<const data::PreferencePair>(fx.heldout), beta);
  const fs::path dir = fresh_dir("learn");
  distill::Trainer<float, Cpu> trainer(policy, fx.train, DpoFixture::options(30), dir);
  while (!trainer.done()) trainer.step();
  const auto after = distill::preference_metrics(policy, std::span<const data::PreferencePair>(fx.heldout), beta);
  MESSAGE("held-out accuracy " << before.accuracy << " -> " << after.accuracy << ", margin "
                               << before.reward_margin << " -> " << after.reward_margin
                               << ", kl_ref " << before.kl_ref << " -> " << after.kl_ref);
  // A sign error in the loss or its gradient would push them down; a dead gradient keep them.
  CHECK(after.accuracy >= 0.9);
  CHECK(after.accuracy > before.accuracy);
  CHECK(after.reward_margin > before.reward_margin + 0.5);
  // Every parameter trains in stage 3: the MLPs too.
  const auto& w = policy.weights().layers[0].mlp.w_down;
  CHECK(std::memcmp(w.value().data(), fx.teacher.weights().layers[0].mlp.w_down.value().data(),
                    size_t(w.numel()) * sizeof(float)) != 0);
  CHECK(policy.params().values().to_vector() != before_w);
  // metrics.jsonl carries the DPO fields, and the training margin and accuracy rose too.
  const auto rows = distill::read_metrics(dir / "metrics.jsonl");
  REQUIRE(rows.size() == 30);
  for (const char* k : {"reward_margin", "accuracy", "kl_ref", "chosen_reward", "rejected_reward"})
    CHECK_MESSAGE(rows.back()[k].is_number(), k);
  CHECK(rows.back()["stage"] == "dpo");
  CHECK(rows.back()["kl"].is_null());
  CHECK(rows.back()["reward_margin"].get<double>() > rows.front()["reward_margin"].get<double>());
  CHECK(rows.back()["loss"].get<double>() < rows.front()["loss"].get<double>());
  fs::remove_all(dir);
}

TEST_CASE("dpo: the gradient scales with beta and vanishes as beta goes to 0") {
  DpoFixture fx;
  auto grad_norm = [&](double beta) {
    auto policy = fx.policy();
    auto o = DpoFixture::options(1);
    o.dpo.beta = beta;
    o.max_grad_norm = 0;
    const fs::path dir = fresh_dir("beta");
    distill::Trainer<float, Cpu> trainer(policy, fx.train, o, dir);
    const double g = trainer.step().grad_norm;
    fs::remove_all(dir);
    return g;
  };
  const double g1 = grad_norm(0.1), g6 = grad_norm(1e-6), g7 = grad_norm(1e-7);
  MESSAGE("gradient norm " << g1 << " at beta 0.1, " << g6 << " at 1e-6, " << g7 << " at 1e-7");
  // As beta -> 0 the sigmoid loss's gradient is beta / 2 per unit of log-probability: a beta
  // that never reached the loss (ratio 1) or was applied twice (ratio 100) breaks the ratio 10.
  CHECK(g1 > 1e-2);
  CHECK(std::abs(g6 / g7 / 10 - 1) < 1e-3);
  CHECK(g7 < 1e-5 * g1);
}

TEST_CASE("dpo: accumulated micro-batches give the gradient of the mean over the step's pairs") {
  DpoFixture fx;
  auto first_step = [&](int64_t micro, int64_t accumulation) {
    auto policy = fx.policy();
    auto o = DpoFixture::options(1);
    o.micro_batch = micro;
    o.accumulation = accumulation;
    o.max_grad_norm = 0;
    const fs::path dir = fresh_dir("accumulate");
    distill::Trainer<float, Cpu> trainer(policy, fx.train, o, dir);
    const auto m = trainer.step();
    fs::remove_all(dir);
    return m;
  };
  // The same 4 pairs (the first 4 of the seeded order) in one micro-batch or two.
  const auto one = first_step(4, 1), two = first_step(2, 2);
  MESSAGE("gradient norm " << one.grad_norm << " in one micro-batch, " << two.grad_norm << " in two");
  CHECK(std::abs(two.loss / one.loss - 1) < 1e-5);
  CHECK(std::abs(two.reward_margin - one.reward_margin) < 1e-5);
  CHECK(two.accuracy == one.accuracy);
  // Without each micro-batch's share the two-batch gradient would be twice as large.
  CHECK(std::abs(two.grad_norm / one.grad_norm - 1) < 1e-4);
}

TEST_CASE("dpo: a stopped and resumed run equals an uninterrupted run bitwise") {
  DpoFixture fx;
  const int64_t steps = 6;
  const fs::path a = fresh_dir("straight"), b = fresh_dir("resumed");
  {
    auto policy = fx.policy();
    distill::Trainer<float, Cpu> t(policy, fx.train, DpoFixture::options(steps), a);
    CHECK(!t.resume());
    while (!t.done()) t.step();
  }
  for (int64_t stop : {int64_t(2), int64_t(3), steps}) {  // stopped after 2, then 3 steps, then run to the end
    auto policy = fx.policy();
    distill::Trainer<float, Cpu> t(policy, fx.train, DpoFixture::options(steps), b);
    CHECK(t.resume() == (stop > 2));
    while (!t.done() && t.state().step < stop) t.step();
  }
  const auto ma = metrics_without_timings(a), mb = metrics_without_timings(b);
  REQUIRE(ma.size() == size_t(steps));
  CHECK(ma == mb);  // loss, rewards, accuracy, kl_ref, gradient norm, to the last bit
  const auto last = fs::path("checkpoints") / distill::ckpt_detail::step_name(steps) / "state.safetensors";
  CHECK(file_bytes(a / last) == file_bytes(b / last));
  // Another beta is another run: its folder is refused.
  auto o = DpoFixture::options(steps);
  o.dpo.beta = 0.2;
  auto policy = fx.policy();
  distill::Trainer<float, Cpu> other(policy, fx.train, o, a);
  const std::string e = test::error_of([&] { other.resume(); });
  CHECK(e.find("options.dpo.beta") != std::string::npos);
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST_CASE("dpo: no pairs or pairs too long for a row or the wrong stage get a clear error") {
  DpoFixture fx;
  auto policy = fx.policy();
  const fs::path dir = fresh_dir("bad");
  std::vector<data::PreferencePair> none;
  CHECK(test::error_of([&] { distill::Trainer<float, Cpu>(policy, none, DpoFixture::options(1), dir); })
            .find("no preference pairs to train on") != std::string::npos);
  auto o = DpoFixture::options(1);
  o.seq_len = 6;  // pairs have up to 5 + 6 tokens
  const std::string too_long =
      test::error_of([&] { distill::Trainer<float, Cpu>(policy, fx.train, o, dir); });
  CHECK(too_long.find("raise seq_len") != std::string::npos);
  CHECK(too_long.find("preference pair ") != std::string::npos);
  auto sft = DpoFixture::options(1);
  sft.stage = distill::Stage::sft;
  CHECK(test::error_of([&] { distill::Trainer<float, Cpu>(policy, fx.train, sft, dir); })
            .find("stage 3's data") != std::string::npos);
  std::vector<data::LabelledSequence> seqs(1);
  seqs[0].tokens = {1, 2, 3};
  seqs[0].prompt_len = 1;
  CHECK(test::error_of([&] {
          distill::Trainer<float, Cpu>(policy, nullptr, seqs, DpoFixture::options(1), dir);
        }).find("not sequences") != std::string::npos);
  auto bad_beta = DpoFixture::options(1);
  bad_beta.dpo.beta = 0;
  CHECK(test::error_of([&] { distill::Trainer<float, Cpu>(policy, fx.train, bad_beta, dir); })
            .find("beta must be positive") != std::string::npos);
  fs::remove_all(dir);
}
