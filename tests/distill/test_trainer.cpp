// Distillation stages 1 and 2 on the CPU: a short stage 1 lowers the held-out KL to the teacher
// and leaves every frozen parameter bitwise unchanged; a run killed with SIGKILL at random moments
// and resumed gives per-step losses and final state bitwise equal to an uninterrupted run; steps
// with non-finite losses change nothing; checkpoints cut short and folders of other runs are
// refused or skipped with a clear message; stepwise conversion carries trained layers over.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <mil/distill/conversion_schedule.hpp>
#include <mil/distill/student.hpp>
#include <mil/distill/trainer.hpp>
#include <mil/eval/teacher_relative.hpp>

#include "common/child_process.hpp"
#include "common/error_of.hpp"
#include "run_files.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {

nn::LlamaConfig tiny_llama() {
  nn::LlamaConfig c;
  c.vocab = 61;
  c.d_model = 32;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.d_ff = 48;
  c.rope_theta = 10000.f;
  return c;
}

nn::HybridConfig half_hybrid(const nn::LlamaConfig& c) {
  nn::HybridConfig h;
  h.llama = c;
  h.attn_layers = nn::attention_layout(c.n_layers, "50%");
  return h;
}

// Sequences of 10..25 tokens whose first 3..5 are the prompt, drawn from Philox stream `seed`.
std::vector<data::LabelledSequence> random_sequences(int n, uint64_t seed, int64_t vocab) {
  std::vector<data::LabelledSequence> out;
  for (int i = 0; i < n; ++i) {
    data::LabelledSequence s;
    const int len = 10 + int(rng::uniform(seed, uint64_t(i), 0, 0.f, 16.f));
    s.prompt_len = 3 + int(rng::uniform(seed, uint64_t(i), 1, 0.f, 3.f));
    for (int t = 0; t < len; ++t)
      s.tokens.push_back(int32_t(rng::uniform(seed, uint64_t(i), uint64_t(t + 2), 0.f, float(vocab) - 0.01f)));
    out.push_back(std::move(s));
  }
  return out;
}

// Mean KL(teacher || model) over the answer positions of `seqs`, from each model's logits (by
// eval::teacher_relative, independent of the loss kernel).
double heldout_kl(const nn::HybridModel<float, Cpu>& teacher, const nn::HybridModel<float, Cpu>& model,
                  const std::vector<data::LabelledSequence>& seqs) {
  return eval::teacher_relative(teacher, model, std::span(seqs)).kl;
}

struct Fixture {
  nn::HybridModel<float, Cpu> teacher{nn::all_attention(tiny_llama())};
  nn::HybridConfig config = half_hybrid(tiny_llama());
  std::vector<data::LabelledSequence> train = random_sequences(48, 11, tiny_llama().vocab);
  std::vector<data::LabelledSequence> heldout = random_sequences(12, 12, tiny_llama().vocab);
  Fixture() { teacher.init_random(3, 0.1f); }

  nn::HybridModel<float, Cpu> student() const {
    return distill::make_student(teacher, config, distill::Trainable::mixers,
                                 distill::init_from_attention(teacher, config, 5));
  }
  static distill::TrainOptions options(int64_t steps) {
    distill::TrainOptions o;
    o.loss = {.ce_weight = 0.f, .kl_weight = 1.f};
    o.lr = 1e-2f;
    o.warmup_steps = 2;
    o.steps = steps;
    o.micro_batch = 3;
    o.accumulation = 2;
    o.seq_len = 20;
    o.seed = 9;
    o.checkpoint_every = 1;
    return o;
  }
};

using test::fresh_run_dir, test::file_bytes, test::metrics_without_timings;

// Runs (or resumes) the fixture's training in `dir` to the end.
void train_to_end(const fs::path& dir, int64_t steps) {
  Fixture fx;
  auto student = fx.student();
  distill::Trainer<float, Cpu> trainer(student, &fx.teacher, fx.train, Fixture::options(steps), dir);
  trainer.resume();
  while (!trainer.done()) trainer.step();
}

const test::RegisterChild kTrainChild("trainer_resume", [] {
  const char* dir = std::getenv("MIL_TRAIN_DIR");
  const char* steps = std::getenv("MIL_TRAIN_STEPS");
  if (!dir || !steps) return 2;
  train_to_end(dir, std::atoll(steps));
  return 0;
});

}  // namespace

TEST_CASE("distill: stage 1 lowers the held-out KL and leaves frozen parameters bitwise unchanged") {
  Fixture fx;
  auto student = fx.student();
  const auto teacher_before = fx.teacher.params().values().to_vector();
  const auto own_before = student.params().values().to_vector();
  const double kl_before = heldout_kl(fx.teacher, student, fx.heldout);
  const fs::path dir = fresh_run_dir("kl");
  distill::Trainer<float, Cpu> trainer(student, &fx.teacher, fx.train, Fixture::options(40), dir);
  while (!trainer.done()) trainer.step();
  const double kl_after = heldout_kl(fx.teacher, student, fx.heldout);
  MESSAGE("held-out KL " << kl_before << " -> " << kl_after);
  CHECK(kl_after < 0.7 * kl_before);  // a sign error or a dead gradient would not get there
  // Frozen: the teacher's tensors, which the student borrows (not copies).
  CHECK(fx.teacher.params().values().to_vector() == teacher_before);
  CHECK(student.weights().layers[1].mlp.w_down.value().data() ==
        fx.teacher.weights().layers[1].mlp.w_down.value().data());
  CHECK(student.weights().layers[1].attn.wqkv.value().data() ==
        fx.teacher.weights().layers[1].attn.wqkv.value().data());
  // Only the Mamba mixers are the student's own, and they moved.
  for (const auto& e : student.params().entries())
    if (e.owned()) CHECK_MESSAGE(!fx.config.is_attention(std::stoll(e.name.substr(7))), e.name);
  CHECK(student.params().values().to_vector() != own_before);
  CHECK(trainer.state().skipped_steps == 0);
  const auto metrics = distill::read_metrics(dir / "metrics.jsonl");
  REQUIRE(metrics.size() == 40);
  CHECK(metrics.back()["kl"].get<double>() < metrics.front()["kl"].get<double>());
  fs::remove_all(dir);
}

// The newest checkpoint's step in `dir`, or 0.
int64_t newest_checkpoint(const fs::path& dir) {
  int64_t newest = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir / "checkpoints", ec))
    newest = std::max(newest, distill::ckpt_detail::step_of(e.path()));
  return newest;
}

TEST_CASE("distill: a run killed at random moments and resumed equals an uninterrupted run bitwise") {
  const int64_t steps = 24;
  const fs::path a = fresh_run_dir("straight"), b = fresh_run_dir("killed");
  train_to_end(a, steps);
  // The child trains in `b` (resuming what it finds there). Each time, it is killed with SIGKILL
  // once it has checkpointed 1-3 steps beyond where it started, plus 0-3 ms, so kills land
  // anywhere in a step or a checkpoint write; the last child runs to the end.
  int kills = 0, resumed_kills = 0;
  for (int attempt = 0;; ++attempt) {
    REQUIRE(attempt < 60);
    const int64_t start = newest_checkpoint(b);
    const int64_t target = start + 1 + int64_t(rng::uniform(77, uint64_t(attempt), 0, 0.f, 2.99f));
    const pid_t pid = test::spawn_child("trainer_resume", {"MIL_TRAIN_DIR=" + b.string(),
                                                           "MIL_TRAIN_STEPS=" + std::to_string(steps)});
    REQUIRE(pid > 0);
    int status = 0;
    bool exited = false;
    while (!exited && newest_checkpoint(b) < target) {
      exited = waitpid(pid, &status, WNOHANG) == pid;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (exited) {
      REQUIRE(WIFEXITED(status));
      REQUIRE(WEXITSTATUS(status) == 0);
      break;
    }
    const auto extra = std::chrono::microseconds(int64_t(rng::uniform(77, uint64_t(attempt), 1, 0.f, 3000.f)));
    std::this_thread::sleep_for(extra);
    const int code = test::wait_or_kill(pid, std::chrono::milliseconds(0));
    if (code == 0) break;  // it finished first
    REQUIRE(code == -1);
    ++kills;
    resumed_kills += start > 0;
  }
  MESSAGE(kills << " kills, " << resumed_kills << " of them in a resumed run");
  CHECK(kills >= 3);
  CHECK(resumed_kills >= 2);
  // Every step's loss, CE, KL, lr and gradient norm, to the last bit.
  const auto ma = metrics_without_timings(a), mb = metrics_without_timings(b);
  REQUIRE(ma.size() == size_t(steps));
  CHECK(ma == mb);
  const auto last = fs::path("checkpoints") / distill::ckpt_detail::step_name(steps) / "state.safetensors";
  CHECK(file_bytes(a / last) == file_bytes(b / last));  // weights and moments
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST_CASE("distill: a step with a non-finite loss changes no weight and is counted") {
  Fixture fx;
  // Token 7's embedding is NaN: every sequence below reads it.
  fx.teacher.weights().tok_embeddings.value().data()[7 * tiny_llama().d_model] = NAN;
  std::vector<data::LabelledSequence> poisoned(2);
  poisoned[0].tokens = {1, 2, 7, 3, 4, 5};
  poisoned[0].prompt_len = 3;
  poisoned[1].tokens = {7, 7, 2, 1, 9};
  poisoned[1].prompt_len = 2;
  auto student = fx.student();
  const auto before = student.params().values().to_vector();
  const fs::path dir = fresh_run_dir("nan");
  auto o = Fixture::options(3);
  o.micro_batch = 1;
  distill::Trainer<float, Cpu> trainer(student, &fx.teacher, poisoned, o, dir);
  for (int i = 0; i < 3; ++i) CHECK(trainer.step().skipped);
  CHECK(trainer.state().skipped_steps == 3);
  CHECK(student.params().values().to_vector() == before);
  fs::remove_all(dir);
}

TEST_CASE("distill: checkpoints cut short are skipped or named and other runs are refused") {
  const fs::path dir = fresh_run_dir("cut");
  train_to_end(dir, 3);  // keeps step-2 and step-3
  const fs::path c2 = dir / "checkpoints/step-00000002", c3 = dir / "checkpoints/step-00000003";
  REQUIRE(fs::exists(c2 / "COMPLETE"));
  REQUIRE(fs::exists(c3 / "COMPLETE"));
  Fixture fx;
  auto student = fx.student();
  {  // no completion marker: the newest is skipped, the one before it is used
    fs::remove(c3 / "COMPLETE");
    distill::Trainer<float, Cpu> t(student, &fx.teacher, fx.train, Fixture::options(3), dir);
    CHECK(t.resume());
    CHECK(t.state().step == 2);
  }
  {  // a marker but a state file cut short: a clear error naming the file, nothing resumed
    fs::resize_file(c2 / "state.safetensors", fs::file_size(c2 / "state.safetensors") / 2);
    distill::Trainer<float, Cpu> t(student, &fx.teacher, fx.train, Fixture::options(3), dir);
    const std::string e = test::error_of([&] { t.resume(); });
    CHECK(e.find("step-00000002/state.safetensors") != std::string::npos);
  }
  {  // the folder holds a run with other settings
    const fs::path other = fresh_run_dir("other");
    train_to_end(other, 2);
    auto o = Fixture::options(2);
    o.lr = 1e-3f;
    distill::Trainer<float, Cpu> t(student, &fx.teacher, fx.train, o, other);
    const std::string e = test::error_of([&] { t.resume(); });
    CHECK(e.find("other settings") != std::string::npos);
    CHECK(e.find("options.lr") != std::string::npos);
    fs::remove_all(other);
  }
  fs::remove_all(dir);
}

TEST_CASE("distill: stage 2 trains every parameter with CE on the labels") {
  Fixture fx;
  auto first = fx.student();
  nn::HybridModel<float, Cpu> full(fx.config);
  full.copy_owned_from(first);  // owns everything, the teacher's frozen parts copied
  const auto before = full.params().values().to_vector();
  auto o = Fixture::options(30);
  o.stage = distill::Stage::sft;
  const fs::path dir = fresh_run_dir("sft");
  distill::Trainer<float, Cpu> trainer(full, nullptr, fx.train, o, dir);
  double first_ce = trainer.step().ce, last_ce = 0;
  while (!trainer.done()) last_ce = trainer.step().ce;
  CHECK(last_ce < first_ce);
  // The MLPs train too in stage 2.
  const auto& w = full.weights().layers[0].mlp.w_down;
  const auto* original = fx.teacher.weights().layers[0].mlp.w_down.value().data();
  CHECK(std::memcmp(w.value().data(), original, size_t(w.numel()) * sizeof(float)) != 0);
  CHECK(full.params().values().to_vector() != before);
  fs::remove_all(dir);
}

TEST_CASE("distill: conversion schedules parse and each step starts from the previous one") {
  const auto s = distill::parse_conversion_schedule("50%:20k,25%:1.5M,0%:300", 8);
  REQUIRE(s.size() == 3);
  CHECK(s[0].attn_layers == std::vector<int64_t>{1, 3, 5, 7});
  CHECK(s[1].attn_layers == std::vector<int64_t>{3, 7});
  CHECK(s[1].tokens == 1500000);
  CHECK(s[2].attn_layers.empty());
  CHECK(s[2].tokens == 300);
  CHECK(test::error_of([] { distill::parse_conversion_schedule("25%:1k,50%:1k", 8); }).find("only converts more") !=
        std::string::npos);
  CHECK(test::error_of([] { distill::parse_conversion_schedule("50%:1k,50%:1k", 8); }).find("converts no layer") !=
        std::string::npos);
  CHECK(test::error_of([] { distill::parse_conversion_schedule("50%", 8); }).find("LAYOUT:TOKENS") != std::string::npos);
  CHECK(test::error_of([] { distill::parse_conversion_schedule("50%:abc", 8); }).find("bad token count") !=
        std::string::npos);
  CHECK(test::error_of([] { distill::parse_conversion_schedule("33%:1k", 8); }).find("unknown attention layout") !=
        std::string::npos);

  // Step 2 (25%) starts from step 1's trained Mamba layers; the newly converted ones from attention.
  Fixture fx;
  auto step1 = fx.student();
  {
    distill::Trainer<float, Cpu> t(step1, &fx.teacher, fx.train, Fixture::options(5), fresh_run_dir("step1"));
    while (!t.done()) t.step();
  }
  nn::HybridModel<float, Cpu> step1_full(fx.config);
  step1_full.copy_owned_from(step1);
  nn::HybridConfig c25 = fx.config;
  c25.attn_layers = nn::attention_layout(4, "25%");
  const auto step2 = distill::init_from_attention(fx.teacher, c25, 5, &step1_full);
  const auto fresh = distill::init_from_attention(fx.teacher, c25, 5);
  auto same = [](const ag::Var<float, Cpu>& x, const ag::Var<float, Cpu>& y) {
    return x.value().to_vector() == y.value().to_vector();
  };
  CHECK(same(step2.weights().layers[0].mamba2.in_proj, step1.weights().layers[0].mamba2.in_proj));
  CHECK(!same(step2.weights().layers[0].mamba2.in_proj, fresh.weights().layers[0].mamba2.in_proj));
  CHECK(same(step2.weights().layers[1].mamba2.in_proj, fresh.weights().layers[1].mamba2.in_proj));
  fs::remove_all(fresh_run_dir("step1"));
}
