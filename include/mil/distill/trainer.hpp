#pragma once
// The training loop of distillation stages 1 and 2 (docs/METHOD.md §5), reusable from C++:
//   stage 1 (distill): the frozen teacher runs forward without a tape, the student forward and
//     backward; loss = alpha * CE(student, label) + beta * tau^2 * KL(teacher || student) on the
//     answer tokens (ag::distill_loss). The student owns only what it trains (distill/student.hpp).
//   stage 2 (sft): every parameter trains with CE on the labels.
//   stage 3 (dpo): every parameter trains with the DPO loss (ag::dpo_loss) on preference pairs
//     against their stored reference log-probabilities; a micro-batch is `micro_batch` whole
//     pairs, the chosen and the rejected answer of each on consecutive rows, and the step's loss
//     is the mean over its pairs.
// AdamW (0.9, 0.98), linear warm-up + cosine decay, global-norm clipping, gradient accumulation of
// micro-batches into one optimizer step, normalised per answer token over the whole step. A step
// whose loss or gradient is not finite changes no weight and is counted. Checkpoints every
// `checkpoint_every` steps (distill/train_checkpoint.hpp) make `resume()` continue bitwise.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "../autograd/distill_loss.hpp"
#include "../autograd/dpo_loss.hpp"
#include "../data/batch.hpp"
#include "../data/preference_pair.hpp"
#include "../data/sequence.hpp"
#include "../nn/hybrid.hpp"
#include "../optim/adamw.hpp"
#include "../optim/schedule.hpp"
#include "metrics_log.hpp"
#include "train_checkpoint.hpp"

namespace mil::distill {

enum class Stage { distill, sft, dpo };
inline const char* to_string(Stage s) {
  return s == Stage::distill ? "distill" : s == Stage::sft ? "sft" : "dpo";
}

struct TrainOptions {
  Stage stage = Stage::distill;
  ag::DistillLossConfig loss{.ce_weight = 1.f, .kl_weight = 0.1f};  // stage 1 (METHOD §5)
  ag::DpoLossConfig dpo{};    // stage 3: beta 0.1, sigmoid loss, no label smoothing
  float lr = 1e-3f, min_lr = 0.f;
  int64_t warmup_steps = 0, steps = 100;
  int64_t micro_batch = 4;    // sequences per forward/backward (stage 3: pairs, two sequences each)
  int64_t accumulation = 1;   // micro-batches per optimizer step
  int64_t seq_len = 256;      // longest training row (longer sequences are cut)
  float max_grad_norm = 1.f;  // 0: no clipping
  float weight_decay = 0.f;
  uint64_t seed = 0;          // data order
  int64_t checkpoint_every = 0;  // optimizer steps between checkpoints; 0: at the end only
  int32_t pad_id = 0;

  void validate() const {
    MIL_CHECK(lr > 0 && std::isfinite(lr) && min_lr >= 0 && min_lr <= lr, "training: lr ", lr,
              " / min lr ", min_lr, " must satisfy 0 <= min lr <= lr");
    MIL_CHECK(steps >= 1 && warmup_steps >= 0 && warmup_steps <= steps, "training: ", steps,
              " steps with ", warmup_steps, " warm-up steps");
    MIL_CHECK(micro_batch >= 1 && accumulation >= 1 && seq_len >= 2, "training: micro-batch ",
              micro_batch, ", accumulation ", accumulation, ", sequence length ", seq_len);
    MIL_CHECK(max_grad_norm >= 0 && weight_decay >= 0 && checkpoint_every >= 0,
              "training: negative clipping, weight decay or checkpoint interval");
    MIL_CHECK(loss.temperature > 0 && loss.ce_weight >= 0 && loss.kl_weight >= 0,
              "training: loss weights must be >= 0 and the temperature > 0");
    if (stage == Stage::dpo) check_dpo_params(dpo.params());
  }
  // The settings that define a run: a resume must find the same.
  nlohmann::json to_json() const {
    nlohmann::json j = {{"stage", to_string(stage)},
            {"ce_weight", loss.ce_weight},
            {"kl_weight", loss.kl_weight},
            {"temperature", loss.temperature},
            {"mean_over_all_rows", loss.mean_over_all_rows},
            {"lr", lr},
            {"min_lr", min_lr},
            {"warmup_steps", warmup_steps},
            {"steps", steps},
            {"micro_batch", micro_batch},
            {"accumulation", accumulation},
            {"seq_len", seq_len},
            {"max_grad_norm", max_grad_norm},
            {"weight_decay", weight_decay},
            {"seed", seed},
            {"pad_id", pad_id}};
    if (stage == Stage::dpo) {  // only here, so stage 1/2 runs keep the settings they saved
      j["dpo"] = {{"beta", dpo.beta},
                  {"label_smoothing", dpo.label_smoothing},
                  {"ipo", dpo.objective == DpoObjective::ipo}};
      // Only when used, so checkpoints saved before the option existed still resume.
      if (dpo.chosen_nll_weight != 0) j["dpo"]["chosen_nll_weight"] = dpo.chosen_nll_weight;
    }
    return j;
  }
};

// Stage 3's settings for full-size runs (METHOD §5): beta 0.1, learning rate 5e-7. On a CPU a
// few steps at 5e-7 move nothing measurable; quick starts there take lr 1e-5 (mil-distill).
inline TrainOptions dpo_options() {
  TrainOptions o;
  o.stage = Stage::dpo;
  o.dpo.beta = 0.1;
  o.lr = 5e-7f;
  o.micro_batch = 2;
  return o;
}

template <Element T, Device D>
class Trainer {
 public:
  // `teacher` is needed by stage 1 only. `data` must outlive the trainer. `run_dir` receives
  // checkpoints/ and metrics.jsonl; `identity` joins the options in the run's settings (model
  // layout, dataset, ...), so a resume in the same folder must match it too.
  // Stages 1 and 2.
  Trainer(nn::HybridModel<T, D>& student, const nn::HybridModel<T, D>* teacher,
          std::span<const data::LabelledSequence> data, const TrainOptions& options,
          const std::filesystem::path& run_dir, const nlohmann::json& identity = nlohmann::json::object())
      : Trainer(student, teacher, data, {}, options, run_dir, identity) {}
  // Stage 3 on `pairs` (which must outlive the trainer), each of whose sequences must fit in
  // seq_len + 1 tokens: the stored reference log-probability covers the whole answer.
  Trainer(nn::HybridModel<T, D>& policy, std::span<const data::PreferencePair> pairs,
          const TrainOptions& options, const std::filesystem::path& run_dir,
          const nlohmann::json& identity = nlohmann::json::object())
      : Trainer(policy, nullptr, {}, pairs, options, run_dir, identity) {
    for (size_t i = 0; i < pairs.size(); ++i) {
      const data::PreferencePair& p = pairs[i];
      const int64_t longest = int64_t(p.prompt.size()) + std::max(p.chosen_len(), p.rejected_len());
      MIL_CHECK(!p.prompt.empty() && p.chosen_len() > 0 && p.rejected_len() > 0 &&
                    longest <= o_.seq_len + 1,
                "training: preference pair ", i, " has ", p.prompt.size(), " prompt, ",
                p.chosen_len(), " chosen and ", p.rejected_len(), " rejected tokens; a DPO row ",
                "holds a whole prompt and answer of at most seq_len + 1 = ", o_.seq_len + 1,
                " tokens (raise seq_len)");
    }
  }

  const TrainState& state() const { return state_; }
  bool done() const { return state_.step >= o_.steps; }
  const optim::AdamW<T, D>& optimizer() const { return opt_; }

  // Continues from the newest checkpoint in run_dir/checkpoints, if any (and the run's metrics
  // are cut back to it). Returns whether one was found. The CPU thread count becomes the saved
  // run's, so the continuation is bitwise the same.
  bool resume() {
    auto s = load_train_checkpoint(run_dir_ / "checkpoints", state_.settings, student_.params(), opt_);
    if (!s) {
      log_.open(run_dir_ / "metrics.jsonl", 0);
      return false;
    }
    state_ = *s;
    opt_.set_steps_taken(state_.step - state_.skipped_steps);
    opt_.set_steps_skipped(0);
    if (state_.threads != cpu::threads()) {
      std::fprintf(stderr, "[mil] resuming with %d CPU threads, as the saved run had (not %d)\n",
                   state_.threads, cpu::threads());
      cpu::set_threads(state_.threads);
    }
    order_ = data::epoch_order(items(), o_.seed, state_.epoch);
    log_.open(run_dir_ / "metrics.jsonl", state_.step);
    return true;
  }

  // One optimizer step over `accumulation` micro-batches.
  StepMetrics step() {
    if (!log_.is_open()) log_.open(run_dir_ / "metrics.jsonl", 0);
    MIL_CHECK(!done(), "training: all ", o_.steps, " steps are done");
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<data::TrainBatch> micro;
    std::vector<std::vector<double>> micro_refs;  // stage 3: per sequence of each micro-batch
    int64_t answer = 0, rows = 0;
    for (int64_t i = 0; i < o_.accumulation; ++i) {
      const std::vector<int64_t> picks = next_picks();
      micro.push_back(o_.stage == Stage::dpo ? pair_batch(picks, micro_refs.emplace_back())
                                             : sequence_batch(picks));
      answer += micro.back().answer_tokens;
      rows += micro.back().batch * micro.back().seq_len;
    }
    StepMetrics m;
    m.step = state_.step;
    m.lr = schedule_.lr(state_.step);
    bool finite = answer > 0;
    if (o_.stage == Stage::dpo) {
      m.dpo = true;
      m.kl = NAN;  // no teacher distribution in this stage; kl_ref is the policy's drift
      finite = dpo_step(micro, micro_refs, m);
    }
    for (const auto& b : micro) {
      if (!finite || o_.stage == Stage::dpo) break;
      // The share of this micro-batch in the step's normalisation (per answer token, or per
      // row for the reference's batch mean).
      const bool by_rows = o_.stage == Stage::distill && o_.loss.mean_over_all_rows;
      const double share = by_rows ? double(b.batch * b.seq_len) / double(rows)
                                   : double(b.answer_tokens) / double(answer);
      const auto [ce, kl] = forward_backward(b, float(share));
      finite = std::isfinite(ce) && std::isfinite(kl);
      m.ce += share * ce;
      m.kl += share * kl;
      m.tokens += b.input_tokens;
    }
    const double tau = o_.loss.temperature;
    if (o_.stage != Stage::dpo)
      m.loss = o_.stage == Stage::sft
                   ? m.ce
                   : o_.loss.ce_weight * m.ce + o_.loss.kl_weight * tau * tau * m.kl;
    m.answer_tokens = answer;
    if (finite) {
      const auto r = opt_.step(m.lr);
      m.grad_norm = r.grad_norm;
      m.skipped = r.skipped;
    } else {
      student_.params().zero_grad();
      m.skipped = true;
    }
    state_.skipped_steps += m.skipped;
    state_.step += 1;
    state_.tokens_seen += m.tokens;
    state_.answer_tokens_seen += answer;
    m.skipped_total = state_.skipped_steps;
    m.tokens_seen = state_.tokens_seen;
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.tokens_per_s = double(m.tokens) / std::max(m.seconds, 1e-9);
    log_.append(m);
    if ((o_.checkpoint_every > 0 && state_.step % o_.checkpoint_every == 0) || done()) checkpoint();
    return m;
  }

  void checkpoint() {
    save_train_checkpoint(run_dir_ / "checkpoints", state_, student_.params(), opt_);
  }

 private:
  // Shared by both constructors: `data` for stages 1 and 2, `pairs` for stage 3.
  Trainer(nn::HybridModel<T, D>& student, const nn::HybridModel<T, D>* teacher,
          std::span<const data::LabelledSequence> data, std::span<const data::PreferencePair> pairs,
          const TrainOptions& options, const std::filesystem::path& run_dir,
          const nlohmann::json& identity)
      : student_(student), teacher_(teacher), data_(data), pairs_(pairs), o_(options),
        run_dir_(run_dir),
        opt_(student.params(), {.beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-8f,
                                .weight_decay = options.weight_decay,
                                .max_grad_norm = options.max_grad_norm}),
        schedule_{options.lr, options.warmup_steps, options.steps, options.min_lr} {
    o_.validate();
    const bool given_pairs = data.empty() && !pairs.empty();
    MIL_CHECK(!given_pairs || o_.stage == Stage::dpo, "training: preference pairs are stage 3's ",
              "data, not stage ", to_string(o_.stage), "'s");
    MIL_CHECK(!(o_.stage == Stage::dpo && !data.empty()), "training: stage 3 trains on ",
              "preference pairs, not sequences");
    MIL_CHECK(o_.stage != Stage::distill || teacher, "training: stage 1 needs the teacher");
    MIL_CHECK(items() > 0, "training: no ",
              o_.stage == Stage::dpo ? "preference pairs" : "sequences", " to train on");
    MIL_CHECK(student.params().trainable_numel() > 0, "training: the student has nothing to train");
    state_.settings = {{"options", o_.to_json()}, {"identity", identity}};
    state_.threads = cpu::threads();
    order_ = data::epoch_order(items(), o_.seed, 0);
  }

  // Sequences (stages 1 and 2) or pairs (stage 3) in an epoch.
  int64_t items() const { return int64_t(o_.stage == Stage::dpo ? pairs_.size() : data_.size()); }

  // The next micro_batch items of the seeded order.
  std::vector<int64_t> next_picks() {
    std::vector<int64_t> picks;
    for (int64_t i = 0; i < o_.micro_batch; ++i) {
      if (state_.cursor >= int64_t(order_.size())) {  // next epoch, freshly shuffled
        state_.epoch += 1;
        state_.cursor = 0;
        order_ = data::epoch_order(items(), o_.seed, state_.epoch);
      }
      picks.push_back(order_[size_t(state_.cursor++)]);
    }
    return picks;
  }

  // Rows as long as the longest sequence of the batch needs (at most seq_len): less padding.
  data::TrainBatch rows_of(std::span<const data::LabelledSequence> seqs,
                           std::span<const int64_t> picks) const {
    int64_t longest = 0;
    for (int64_t i : picks) longest = std::max<int64_t>(longest, int64_t(seqs[size_t(i)].tokens.size()));
    return data::make_batch(seqs, picks, std::clamp<int64_t>(longest - 1, 1, o_.seq_len), o_.pad_id);
  }
  data::TrainBatch sequence_batch(const std::vector<int64_t>& picks) const {
    return rows_of(data_, picks);
  }
  // Row 2k holds the chosen and row 2k + 1 the rejected answer of pick k (one row per sequence,
  // which the constructor made sure fits); `refs` gets their reference log-probabilities.
  data::TrainBatch pair_batch(const std::vector<int64_t>& picks, std::vector<double>& refs) const {
    std::vector<data::LabelledSequence> seqs;
    for (int64_t i : picks) {
      const data::PreferencePair& p = pairs_[size_t(i)];
      seqs.push_back(data::chosen_sequence(p));
      seqs.push_back(data::rejected_sequence(p));
      refs.push_back(p.ref_logp_chosen);
      refs.push_back(p.ref_logp_rejected);
    }
    std::vector<int64_t> all(seqs.size());
    std::iota(all.begin(), all.end(), int64_t(0));
    return rows_of(seqs, all);
  }

  // Stage 3: forward and backward of each micro-batch, its loss weighing its share of the step's
  // pairs; fills the DPO metrics of `m` (means over the step's pairs). Returns whether all was
  // finite.
  bool dpo_step(const std::vector<data::TrainBatch>& micro,
                const std::vector<std::vector<double>>& refs, StepMetrics& m) {
    int64_t pairs = 0, right = 0, answer = 0, chosen_tokens = 0;
    double drift = 0, chosen_nll = 0;
    for (const auto& b : micro) pairs += b.batch / 2;
    for (size_t i = 0; i < micro.size(); ++i) {
      const data::TrainBatch& b = micro[i];
      const double share = double(b.batch / 2) / double(pairs);
      const ag::DpoLoss loss = dpo_forward_backward(b, refs[i], float(share));
      if (!std::isfinite(loss.mean())) return false;
      m.loss += share * loss.mean();
      for (int64_t p = 0; p < loss.pairs(); ++p) {
        m.chosen_reward += loss.chosen_rewards[size_t(p)] / double(pairs);
        m.rejected_reward += loss.rejected_rewards[size_t(p)] / double(pairs);
        right += loss.chosen_rewards[size_t(p)] > loss.rejected_rewards[size_t(p)];
        chosen_nll -= loss.policy_logps[size_t(2 * p)];
        chosen_tokens += loss.answer_tokens[size_t(2 * p)];
      }
      for (size_t s = 0; s < loss.policy_logps.size(); ++s) {
        drift += loss.policy_logps[s] - refs[i][s];
        answer += loss.answer_tokens[s];
      }
      m.tokens += b.input_tokens;
    }
    m.reward_margin = m.chosen_reward - m.rejected_reward;
    m.accuracy = double(right) / double(pairs);
    m.kl_ref = drift / double(answer);
    m.ce = chosen_nll / double(chosen_tokens);
    return std::isfinite(m.loss);
  }

  // One stage-3 micro-batch: sequence s of the batch is its row s.
  ag::DpoLoss dpo_forward_backward(const data::TrainBatch& b, const std::vector<double>& refs,
                                   float share) {
    const auto ids = Tensor<int32_t, D>::from(Shape{b.batch * b.seq_len}, b.ids);
    const auto targets = Tensor<int32_t, D>::from(Shape{b.batch * b.seq_len}, b.targets);
    const auto pos = nn::sequence_positions<D>(b.batch, b.seq_len);
    std::vector<int64_t> offsets(size_t(b.batch) + 1);
    for (int64_t s = 0; s <= b.batch; ++s) offsets[size_t(s)] = s * b.seq_len;
    ag::Tape tape;
    const auto logits = student_.forward(tape, ids, pos, b.batch, b.seq_len);
    ag::DpoLossConfig c = o_.dpo;
    c.ignore_index = data::kIgnoreTarget;
    c.grad_scale = share;
    const ag::DpoLoss loss = ag::dpo_loss(tape, logits, targets, offsets, refs, c);
    if (std::isfinite(loss.mean())) tape.backward();
    return loss;
  }

  // Forward and backward of one micro-batch whose loss weighs `share` of the step; returns its
  // mean CE and KL (per answer token, or per row for the batch mean).
  std::pair<double, double> forward_backward(const data::TrainBatch& b, float share) {
    const auto ids = Tensor<int32_t, D>::from(Shape{b.batch * b.seq_len}, b.ids);
    const auto targets = Tensor<int32_t, D>::from(Shape{b.batch * b.seq_len}, b.targets);
    const auto pos = nn::sequence_positions<D>(b.batch, b.seq_len);
    ag::Tape tape;
    std::pair<double, double> out{0, 0};
    if (o_.stage == Stage::distill) {
      ag::Tape teacher_tape;
      ag::NoGrad frozen(teacher_tape);
      const auto teacher_logits = teacher_->forward(teacher_tape, ids, pos, b.batch, b.seq_len);
      const auto logits = student_.forward(tape, ids, pos, b.batch, b.seq_len);
      ag::DistillLossConfig c = o_.loss;
      c.ce_weight *= share;
      c.kl_weight *= share;
      const auto loss = ag::distill_loss(tape, logits, teacher_logits.value(), targets, c);
      out = {loss.mean_ce(), loss.mean_kl()};
    } else {
      const auto logits = student_.forward(tape, ids, pos, b.batch, b.seq_len);
      out.first = ag::cross_entropy(tape, logits, targets, share).mean();
    }
    if (std::isfinite(out.first) && std::isfinite(out.second)) tape.backward();
    return out;
  }

  nn::HybridModel<T, D>& student_;
  const nn::HybridModel<T, D>* teacher_;
  std::span<const data::LabelledSequence> data_;
  std::span<const data::PreferencePair> pairs_;
  TrainOptions o_;
  std::filesystem::path run_dir_;
  optim::AdamW<T, D> opt_;
  optim::CosineSchedule schedule_;
  TrainState state_;
  std::vector<int64_t> order_;
  MetricsLog log_;
};

}  // namespace mil::distill
