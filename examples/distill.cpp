// mil-distill: a Transformer in, a distilled hybrid out (docs/METHOD.md §5), in one program that
// reads top to bottom:
//   1. label:  the teacher answers chat prompts (its pseudo-labels; held-out prompts apart)
//   2. stage1: each step of the conversion schedule: convert (init from attention, or from the
//              previous step), then distil with the MLPs frozen (CE + KL to the teacher)
//   3. stage2: supervised fine-tuning of every parameter on the labels (optional)
//   4. dpo:    stage 3 (optional): preference pairs, on-policy (chosen = the teacher's label,
//              rejected = the model's own sample) or from JSONL, with the reference's
//              log-probabilities; DPO on them; held-out preference accuracy and margin and the
//              teacher-relative metrics before and after
//   5. eval:   teacher-relative metrics on the held-out answers, before and after; curves; answers
//   draft:     (with --draft N) a speculative-decoding draft shrunk from the teacher: 2 or 4 of its
//              layers with its embeddings and head, fine-tuned with CE on the labels (METHOD §6)
// Each step writes into the output folder and is skipped when a rerun finds it done, so a killed
// run continues where it stopped (training steps from their newest checkpoint, bitwise on the CPU),
// and `--only STEP` runs one step alone.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>

#include <mil/data/preference_pairs.hpp>
#include <mil/data/preference_pairs_jsonl.hpp>
#include <mil/data/prompts.hpp>
#include <mil/data/pseudo_labels.hpp>
#include <mil/data/token_dataset.hpp>
#include <mil/distill/conversion_schedule.hpp>
#include <mil/distill/preference_eval.hpp>
#include <mil/distill/student.hpp>
#include <mil/distill/trainer.hpp>
#include <mil/eval/answers.hpp>
#include <mil/eval/teacher_relative.hpp>
#include <mil/nn/hybrid_checkpoint.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/chat_prompt.hpp>
#include <mil/text/hf_tokenizer_writer.hpp>
#include <mil/util/progress.hpp>
#include <mil/util/sha256.hpp>
#if MIL_CUDA_ENABLED && defined(__CUDACC__)
#include <mil/core/cuda_launch.hpp>
#endif

#include "common/cli.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string teacher, out, only, layout, attn_layers, mamba_layers, schedule, mixer = "mamba2";
  std::vector<std::string> prompts;
  std::string device = "auto";
  int64_t teacher_layers = 0;      // > 0: only the teacher's first N layers (tests, quick looks)
  // Labels.
  int64_t max_prompts = 2000, heldout = 64, slots = 16, max_prompt = 256, max_answer = 256;
  int64_t answers = 1;  // sampled answers per training prompt (one label each)
  int32_t topk = 0;
  // Training.
  std::string tokens = "50k", sft_tokens = "0";
  std::string trainable = "mixers";
  float lr = 1e-3f, sft_lr = 2e-5f, warmup = 0.05f, clip = 1.f, ce_weight = 1.f, kl_weight = 0.1f,
        temperature = 1.f;
  int64_t micro_batch = 4, accumulation = 1, seq_len = 256, checkpoint_every = 20;
  // Stage 3 (DPO): off unless a budget is given or --only dpo runs it (then one epoch).
  std::string dpo_tokens = "0", dpo_ref = "teacher", dpo_pairs;
  // A shrunk draft (METHOD §6): 2 or 4 teacher layers, CE on the labels for draft_epochs.
  int64_t draft = 0;
  double draft_epochs = 3;
  float draft_lr = 3e-4f;
  double dpo_epochs = 0, dpo_beta = 0.1, dpo_label_smoothing = 0, dpo_nll_weight = 0;
  float dpo_lr = 5e-7f, dpo_temperature = 1.f;
  int64_t dpo_samples = 1;
  int64_t dpo_prompts = 0;  // > 0: pairs on this many prompts beyond the labelled ones
  bool dpo_ipo = false;
  uint64_t seed = 0;
  int threads = 0;
  // Evaluation.
  int64_t eval_seqs = 32;
  std::string eval_every = "0";  // held-out metrics every this many training tokens ("0": never)
  int64_t eval_every_tokens = 0;  // the same, parsed
  std::vector<std::string> show_prompts = {"What is the capital of France?",
                                           "Give me three tips for staying healthy."};
  int64_t show_tokens = 48;
};

bool runs(const Options& o, const std::string& step) { return o.only.empty() || o.only == step; }
bool dpo_enabled(const Options& o) {
  return o.dpo_tokens != "0" || o.dpo_epochs > 0 || o.only == "dpo";
}

void say(const char* fmt, auto... args) {
  std::fprintf(stderr, "[mil-distill] ");
  std::fprintf(stderr, fmt, args...);
  std::fputc('\n', stderr);
}

// The run's identity: a folder holding a run with another identity is refused.
nlohmann::json run_identity(const Options& o, const std::string& teacher_sha256) {
  return {{"teacher_sha256", teacher_sha256}, {"teacher_layers", o.teacher_layers},
          {"prompts", o.prompts},             {"max_prompts", o.max_prompts},
          {"heldout", o.heldout},             {"seed", o.seed}};
}

void claim_output_folder(const fs::path& dir, const nlohmann::json& identity) {
  const fs::path file = dir / "run.json";
  if (fs::exists(file)) {
    const std::string diff = distill::first_difference(io::read_json_file_strict(file), identity);
    MIL_CHECK(diff.empty(), "'", dir.string(), "' holds another run (", diff,
              "); give another output folder (-o)");
    return;
  }
  MIL_CHECK(!fs::exists(dir) || fs::is_empty(dir), "'", dir.string(),
            "' is not empty and holds no mil-distill run; give a new or empty folder (-o)");
  fs::create_directories(dir);
  io::write_text_file_atomic(file, identity.dump(2) + "\n");
}

// The conversion steps: --schedule, else one step from --layout / --attn-layers / --mamba-layers.
std::vector<distill::ConversionStep> conversion_steps(const Options& o, int64_t n_layers) {
  if (!o.schedule.empty()) return distill::parse_conversion_schedule(o.schedule, n_layers);
  distill::ConversionStep s;
  s.tokens = distill::parse_token_count(o.tokens);
  auto parse_list = [&](const std::string& text) {
    std::vector<int64_t> out;
    std::stringstream ss(text);
    for (std::string item; std::getline(ss, item, ',');) {
      MIL_CHECK(!item.empty() && item.find_first_not_of("0123456789") == std::string::npos,
                "bad layer list '", text, "' (expected e.g. 1,3,5)");
      out.push_back(std::stoll(item));
      MIL_CHECK(out.back() < n_layers, "layer ", out.back(), " is beyond the teacher's ", n_layers, " layers");
    }
    std::sort(out.begin(), out.end());
    return out;
  };
  if (!o.attn_layers.empty()) {
    s.name = "custom";
    s.attn_layers = parse_list(o.attn_layers);
  } else if (!o.mamba_layers.empty()) {
    s.name = "custom";
    const auto mamba = parse_list(o.mamba_layers);
    for (int64_t l = 0; l < n_layers; ++l)
      if (!std::binary_search(mamba.begin(), mamba.end(), l)) s.attn_layers.push_back(l);
  } else {
    s.name = o.layout.empty() ? "50%" : o.layout;
    s.attn_layers = nn::attention_layout(n_layers, s.name);
  }
  MIL_CHECK(int64_t(s.attn_layers.size()) < n_layers, "the layout converts no layer");
  return {s};
}

std::string folder_name(const distill::ConversionStep& s) {
  std::string n = s.name == "custom" ? "custom" : s.name.substr(0, s.name.find('%'));
  std::replace(n.begin(), n.end(), '.', '_');
  return n == "custom" ? n : "attn" + n;
}

std::string describe(const eval::TeacherRelative& r) {
  char b[200];
  std::snprintf(b, sizeof b, "ppl ratio %.3f | KL %.3f | top-1 agreement %.1f%% (%lld tokens)",
                r.ppl_ratio, r.kl, 100 * r.top1_agreement, (long long)r.tokens);
  return b;
}

nlohmann::json to_json(const eval::TeacherRelative& r) {
  return {{"teacher_ppl", r.teacher_ppl}, {"model_ppl", r.model_ppl}, {"ppl_ratio", r.ppl_ratio},
          {"kl", r.kl},                   {"top1_agreement", r.top1_agreement},
          {"tokens", r.tokens}};
}

template <Element T, Device D>
class Pipeline {
 public:
  Pipeline(const Options& o, const nn::LoadedModel& loaded, const nn::HybridModel<T, D>& teacher,
           std::string teacher_sha256)
      : o_(o), loaded_(loaded), teacher_(teacher), teacher_sha256_(std::move(teacher_sha256)),
        dir_(o.out) {
    tmpl_ = text::detect_chat_template(loaded.chat_template);
  }

  int run() {
    // ---- 1. labels -------------------------------------------------------------------------
    if (runs(o_, "label")) label();
    if (o_.only == "label") return 0;
    const auto train = read_training_labels(), heldout = read_labels("heldout");
    say("labels: %zu training answers (%lld tokens), %zu held out", train.sequences.size(),
        (long long)train.manifest.answer_tokens, heldout.sequences.size());
    std::span<const data::LabelledSequence> eval_set(heldout.sequences);
    eval_set = eval_set.first(std::min<size_t>(eval_set.size(), size_t(o_.eval_seqs)));
    eval_set_ = eval_set;
    nlohmann::json draft_entry;
    const std::string draft_key = "draft" + std::to_string(o_.draft);  // draft2, draft4: folders of their own
    if (o_.draft > 0 && runs(o_, "draft")) {
      draft_entry = draft(train.sequences);
      if (o_.only == "draft") return finish({{"teacher", loaded_.name}, {draft_key, draft_entry}});
    }

    // ---- 2. stage 1 per conversion step ---------------------------------------------------
    const auto steps = conversion_steps(o_, loaded_.model.config().llama.n_layers);
    std::optional<nn::HybridModel<float, Cpu>> previous;
    nlohmann::json report = {{"teacher", loaded_.name}, {"steps", nlohmann::json::array()}};
    if (!draft_entry.is_null()) report[draft_key] = draft_entry;
    fs::path last_model;
    for (const auto& step : steps) {
      nn::HybridConfig cfg = loaded_.model.config();
      cfg.attn_layers = step.attn_layers;
      cfg.mixer = nn::parse_mixer(o_.mixer);
      const fs::path run_dir = dir_ / ("stage1-" + folder_name(step));
      last_model = run_dir / "model";
      if (!runs(o_, "stage1")) {
        if (fs::exists(last_model / kDone)) previous = nn::load_model(last_model.string()).model;
        continue;
      }
      auto init = distill::init_from_attention(loaded_.model, cfg, o_.seed, previous ? &*previous : nullptr);
      say("stage 1, %s attention (%lld Mamba layers of %lld): %s tokens", step.name.c_str(),
          (long long)cfg.n_mamba_layers(), (long long)cfg.llama.n_layers,
          std::to_string(step.tokens).c_str());
      auto student = distill::make_student(teacher_, cfg, distill::parse_trainable(o_.trainable), init);
      nlohmann::json entry = {{"layout", step.name}, {"attn_layers", step.attn_layers}};
      entry["before"] = evaluate(student, eval_set, "converted, before training");
      if (!fs::exists(last_model / kDone)) {
        train_stage(student, &teacher_, train.sequences, stage1_options(step.tokens, train.sequences), run_dir,
              with_label_rounds({{"stage", "1"}, {"attn_layers", step.attn_layers}, {"mixer", o_.mixer},
                                 {"trainable", o_.trainable}, {"previous", previous.has_value()}}));
        save(student, last_model);
      } else {
        say("stage 1 of this step is done already: %s", last_model.string().c_str());
        student.copy_owned_from(nn::load_model(last_model.string()).model);
      }
      entry["after"] = evaluate(student, eval_set, "after stage 1");
      entry["model"] = last_model.string();
      report["steps"].push_back(entry);
      previous.emplace(cfg);
      previous->copy_owned_from(student);
    }
    if (o_.only == "stage1") return finish(report);

    // ---- 3. stage 2: all parameters, CE on the labels ----------------------------------------
    const int64_t sft_tokens = distill::parse_token_count(o_.sft_tokens == "0" ? "1" : o_.sft_tokens);
    if (o_.sft_tokens != "0" && runs(o_, "stage2")) {
      MIL_CHECK(previous, "stage 2 needs the stage-1 model: run stage 1 first");
      const fs::path run_dir = dir_ / "stage2";
      nn::HybridModel<T, D> student(previous->config());
      student.copy_owned_from(*previous);
      if (!fs::exists(run_dir / "model" / kDone)) {
        say("stage 2 (SFT, every parameter): %lld tokens", (long long)sft_tokens);
        auto so = stage1_options(sft_tokens, train.sequences);
        so.stage = distill::Stage::sft;
        so.lr = o_.sft_lr;
        so.min_lr = o_.sft_lr / 10;
        train_stage(student, nullptr, train.sequences, so, run_dir, with_label_rounds({{"stage", "2"}}));
        save(student, run_dir / "model");
      } else {
        student.copy_owned_from(nn::load_model((run_dir / "model").string()).model);
      }
      report["stage2"] = evaluate(student, eval_set, "after stage 2");
      last_model = run_dir / "model";
    } else if (fs::exists(dir_ / "stage2" / "model" / kDone)) {
      last_model = dir_ / "stage2" / "model";
    }

    // ---- 4. stage 3: DPO on preference pairs, from the stage-2 (or stage-1) model -------------
    if (dpo_enabled(o_) && runs(o_, "dpo")) {
      MIL_CHECK(!last_model.empty() && fs::exists(last_model / kDone),
                "stage 3 needs the stage-1 or stage-2 model: run them first");
      report["stage3"] = dpo(last_model, train, heldout, eval_set);
      last_model = dir_ / "stage3" / "model";
    } else if (fs::exists(dir_ / "stage3" / "model" / kDone)) {
      last_model = dir_ / "stage3" / "model";
    }

    // ---- 5. answers side by side ------------------------------------------------------------
    if (runs(o_, "eval") && !last_model.empty() && fs::exists(last_model / kDone)) {
      const auto final_model = nn::load_model(last_model.string());
      const auto model = nn::convert_model<T, D>(final_model.model);
      const auto a = eval::greedy_answers(teacher_, loaded_.tokenizer, tmpl_, o_.show_prompts, o_.show_tokens);
      const auto b = eval::greedy_answers(model, loaded_.tokenizer, tmpl_, o_.show_prompts, o_.show_tokens);
      for (size_t i = 0; i < o_.show_prompts.size(); ++i) {
        std::printf("\n> %s\n  teacher: %s\n  hybrid:  %s\n", o_.show_prompts[i].c_str(), a[i].c_str(),
                    b[i].c_str());
        report["answers"].push_back({{"prompt", o_.show_prompts[i]}, {"teacher", a[i]}, {"hybrid", b[i]}});
      }
      // <out>/model names the final model, whichever step made it.
      const fs::path link = dir_ / "model", tmp = dir_ / ".model.tmp";
      fs::remove(tmp);
      fs::create_directory_symlink(fs::relative(last_model, dir_), tmp);
      fs::rename(tmp, link);
      std::printf("\nthe distilled hybrid: %s (%s)\n  chat with it: mil-chat -m %s\n", link.string().c_str(),
                  last_model.string().c_str(), link.string().c_str());
    }
    return finish(report);
  }

 private:
  static constexpr const char* kDone = "mil_distill_done";

  // ---- labelling ------------------------------------------------------------------------------
  // The prompt sets: the capped sample split into training and held-out, and `extra` prompts
  // beyond it (neither trained on nor held out).
  data::PromptSet read_prompts(int64_t extra) const {
    MIL_CHECK(!o_.prompts.empty(), "no prompt files (--prompts FILE...; scripts/setup.sh fetches the ",
              "default sets into data/prompts/)");
    data::PromptSetOptions po;
    po.heldout_count = o_.heldout;
    po.max_prompts = o_.max_prompts;
    po.seed = o_.seed;
    po.extra_count = extra;
    std::vector<fs::path> files(o_.prompts.begin(), o_.prompts.end());
    return data::read_prompt_set(files, po);
  }

  void label() {
    const auto set = read_prompts(0);
    say("prompts: %zu for training, %zu held out (%lld duplicates dropped)", set.train.size(),
        set.heldout.size(), (long long)set.duplicates_dropped);
    for (int64_t round = 0; round < o_.answers; ++round)
      label_into(train_labels(round), set.train, data::answer_round_seed(o_.seed, round));
    label_into("heldout", set.heldout, o_.seed);
  }

  // The folder under labels/ of the training answers of round r: each round answers every
  // training prompt once more with draws of its own (--answers N makes rounds 0..N-1).
  static std::string train_labels(int64_t round) {
    return round == 0 ? "train" : "train." + std::to_string(round + 1);
  }

  // A trainer's identity with the label rounds it trains on, so that a checkpoint is resumed only
  // on the same data (runs of one round keep the identity they always had).
  nlohmann::json with_label_rounds(nlohmann::json identity) const {
    if (o_.answers > 1) identity["answers"] = o_.answers;
    return identity;
  }

  // The training labels of every round, in one dataset (the rounds' answers one after another;
  // the trainer shuffles them); the manifest's counts are the rounds' sums.
  data::TokenDataset read_training_labels() const {
    data::TokenDataset all = read_labels(train_labels(0));
    for (int64_t round = 1; round < o_.answers; ++round) {
      MIL_CHECK(fs::exists(dir_ / "labels" / train_labels(round)), (dir_ / "labels").string(),
                " holds no answers of round ", round + 1, " (--answers ", o_.answers,
                "): run the label step first (--only label --answers ", o_.answers, ")");
      data::TokenDataset more = read_labels(train_labels(round));
      MIL_CHECK(more.manifest.prompts_sha256 == all.manifest.prompts_sha256, (dir_ / "labels").string(),
                ": the answers of round ", round + 1, " are to other prompts than round 1's");
      all.manifest.sequences += more.manifest.sequences;
      all.manifest.prompt_tokens += more.manifest.prompt_tokens;
      all.manifest.answer_tokens += more.manifest.answer_tokens;
      std::move(more.sequences.begin(), more.sequences.end(), std::back_inserter(all.sequences));
    }
    if (fs::exists(dir_ / "labels" / train_labels(o_.answers)))
      say("note: labels/%s holds a further answer round, unused with --answers %lld",
          train_labels(o_.answers).c_str(), (long long)o_.answers);
    return all;
  }

  // The teacher's answers to `prompts` into labels/<name> (resumes an interrupted run).
  void label_into(const std::string& name, const std::vector<data::Prompt>& prompts, uint64_t seed) {
    data::DatasetManifest identity;
    identity.teacher_name = loaded_.name;
    identity.teacher_sha256 = teacher_sha256_;
    identity.tokenizer_fingerprint = data::tokenizer_fingerprint(loaded_.tokenizer);
    identity.vocab_size = loaded_.tokenizer.vocab_size();
    identity.chat_template = text::to_string(tmpl_.family);
    identity.compute = std::is_same_v<D, Cpu> ? "cpu f32" : "cuda bf16";
    data::LabelConfig lc;
    lc.seed = seed;
    lc.slots = o_.slots;
    lc.max_prompt = o_.max_prompt;
    lc.max_answer = o_.max_answer;
    lc.max_step_tokens = step_tokens();
    lc.store_topk = o_.topk;
    const auto stops = text::stop_token_ids(loaded_.tokenizer, tmpl_);
    std::vector<std::vector<int32_t>> tokens;
    for (const auto& p : prompts) tokens.push_back(text::encode_chat_prompt(loaded_.tokenizer, tmpl_, p.messages));
    const fs::path out = dir_ / "labels" / name;
    say("labelling %zu %s prompts into %s", tokens.size(), name.c_str(), out.string().c_str());
    const auto s = data::label_prompts(teacher_, tokens, stops, lc, out, identity);
    say("  %lld answers, %lld answer tokens, %.1f tokens/s; skipped: %lld too long, %lld empty",
        (long long)s.sequences, (long long)s.answer_tokens,
        double(s.generated_tokens) / std::max(s.seconds, 1e-9), (long long)s.skipped_too_long,
        (long long)s.skipped_empty);
  }

  // Tokens per decoder step while sampling answers: room for prompt chunks beside a decode row
  // per slot (with as many tokens as slots, new prompts wait for finishing slots to free some).
  int64_t step_tokens() const { return std::max<int64_t>(512, 2 * o_.slots); }

  data::TokenDataset read_labels(const std::string& name) const {
    auto d = data::read_token_dataset(dir_ / "labels" / name);
    data::check_dataset_matches(d.manifest, teacher_sha256_, data::tokenizer_fingerprint(loaded_.tokenizer));
    MIL_CHECK(!d.sequences.empty(), (dir_ / "labels" / name).string(), " holds no answers");
    return d;
  }

  // ---- training -------------------------------------------------------------------------------
  // The tokens one epoch over `seqs` trains on: each sequence cut to seq_len inputs with a next token.
  double training_tokens(const std::vector<data::LabelledSequence>& seqs) const {
    double n = 0;
    for (const auto& s : seqs) n += double(std::min<int64_t>(int64_t(s.tokens.size()) - 1, o_.seq_len));
    return n;
  }

  distill::TrainOptions stage1_options(int64_t tokens, const std::vector<data::LabelledSequence>& seqs) const {
    distill::TrainOptions t;
    t.loss = {.ce_weight = o_.ce_weight, .kl_weight = o_.kl_weight, .temperature = o_.temperature};
    t.lr = o_.lr;
    t.min_lr = o_.lr / 10;
    t.micro_batch = o_.micro_batch;
    t.accumulation = o_.accumulation;
    t.seq_len = o_.seq_len;
    t.max_grad_norm = o_.clip;
    t.seed = o_.seed;
    t.checkpoint_every = o_.checkpoint_every;
    t.pad_id = std::max<int32_t>(loaded_.tokenizer.eos(), 0);
    // Steps from the token budget: a step reads micro_batch x accumulation sequences of the
    // data's mean (cut) length.
    const double mean_len = training_tokens(seqs) / double(seqs.size());
    t.steps = std::max<int64_t>(1, int64_t(double(tokens) / (mean_len * double(t.micro_batch * t.accumulation)) + 0.5));
    t.warmup_steps = int64_t(o_.warmup * float(t.steps));
    return t;
  }

  void train_stage(nn::HybridModel<T, D>& student, const nn::HybridModel<T, D>* teacher,
             const std::vector<data::LabelledSequence>& seqs, const distill::TrainOptions& t,
             const fs::path& run_dir, const nlohmann::json& identity) {
    distill::Trainer<T, D> trainer(student, teacher, seqs, t, run_dir, identity);
    run_steps(trainer, student, t, run_dir);
  }

  // Runs (or continues) a trainer to its last step, with a progress line, then draws its curves.
  // `also` adds metrics of its own to each held-out record and returns their description.
  void run_steps(distill::Trainer<T, D>& trainer, const nn::HybridModel<T, D>& student,
                 const distill::TrainOptions& t, const fs::path& run_dir,
                 const std::function<std::string(nlohmann::json&)>& also = {},
                 const char* name = nullptr) {
    using distill::Stage;
    if (trainer.resume()) say("resumed at step %lld of %lld", (long long)trainer.state().step, (long long)t.steps);
    say("%lld steps of %lld x %lld %s (<= %lld tokens), lr %g, %lld trainable parameters; "
        "writing %s", (long long)t.steps, (long long)t.micro_batch, (long long)t.accumulation,
        t.stage == Stage::dpo ? "pairs" : "sequences", (long long)t.seq_len, double(t.lr),
        (long long)student.params().trainable_numel(), run_dir.string().c_str());
    const char* names[] = {"stage 1", "stage 2", "stage 3"};
    HeldoutCurve curve(run_dir / "heldout.jsonl", trainer.state().step,
                       eval_set_.empty() ? 0 : o_.eval_every_tokens);
    util::ProgressBar bar(name ? name : names[int(t.stage)], t.steps);
    while (!trainer.done()) {
      if (curve.due(trainer.state().tokens_seen)) {
        const auto r = measure(student, eval_set_);
        auto record = to_json(r);
        const std::string more = also ? also(record) : "";
        curve.record(trainer.state().step, trainer.state().tokens_seen, record);
        bar.note("held-out at " + std::to_string(trainer.state().tokens_seen) + " tokens: " + describe(r) + more);
      }
      const auto m = trainer.step();
      char fields[160];
      if (t.stage == Stage::dpo)
        std::snprintf(fields, sizeof fields, "loss %.3f margin %.3f acc %.2f kl_ref %.3f | %.0f tok/s%s",
                      m.loss, m.reward_margin, m.accuracy, m.kl_ref, m.tokens_per_s,
                      m.skipped_total ? " | skipped steps" : "");
      else
        std::snprintf(fields, sizeof fields, "loss %.3f ce %.3f kl %.3f | %.0f tok/s%s", m.loss, m.ce,
                      m.kl, m.tokens_per_s, m.skipped_total ? " | skipped steps" : "");
      bar.update(trainer.state().step, fields);
    }
    const char* titles[] = {"stage 1: distillation", "stage 2: SFT", "stage 3: DPO"};
    const std::string title = name ? std::string(name) + ": CE" : titles[int(t.stage)];
    const std::vector<std::string> fields[] = {
        {"loss", "ce", "kl"}, {"ce"}, {"loss", "reward_margin", "kl_ref"}};
    distill::plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.svg", title, fields[int(t.stage)]);
    say("curves: %s", (run_dir / "loss.svg").string().c_str());
    if (curve.plot(run_dir / "heldout.svg", title))
      say("held-out curve: %s", (run_dir / "heldout.svg").string().c_str());
  }

  // Held-out evaluations during training, every `every` tokens seen (0: none), in heldout.jsonl
  // beside the metrics. An evaluation is made at the top of a step, before the step, and logged
  // under that step's index: a resumed run cuts the log back to its checkpoint's step and makes
  // the evaluation at that step again, so the curve is the same as an uninterrupted run's.
  class HeldoutCurve {
   public:
    HeldoutCurve(fs::path path, int64_t resumed_step, int64_t every) : path_(std::move(path)), every_(every) {
      // Without --eval-every a resumed run still cuts an earlier run's curve back to its step.
      if (every_ <= 0 && !fs::exists(path_)) return;
      log_.open(path_, resumed_step);
      for (const auto& r : distill::read_metrics(path_)) last_ = r.value("tokens_seen", int64_t(0));
    }
    bool due(int64_t tokens_seen) const { return every_ > 0 && tokens_seen / every_ > last_ / every_; }
    void record(int64_t step, int64_t tokens_seen, nlohmann::json metrics) {
      metrics["step"] = step;
      metrics["tokens_seen"] = tokens_seen;
      log_.append(metrics);
      last_ = tokens_seen;
    }
    // KL and perplexity ratio against the evaluations' order; false when there are none.
    bool plot(const fs::path& svg, const std::string& stage) const {
      if (every_ <= 0) return false;
      util::Series kl{"KL to the teacher", {}, "#d62728"}, ratio{"perplexity ratio", {}, "#1f77b4"};
      for (const auto& r : distill::read_metrics(path_)) {
        kl.y.push_back(r.value("kl", NAN));
        ratio.y.push_back(r.value("ppl_ratio", NAN));
      }
      if (kl.y.empty()) return false;
      util::write_svg_plot(svg.string(), stage + ": held-out", "evaluation (every " +
                           std::to_string(every_) + " training tokens)", "nats / ratio", {kl, ratio});
      return true;
    }

   private:
    fs::path path_;
    int64_t every_ = 0, last_ = 0;
    distill::MetricsLog log_;
  };

  // ---- draft ----------------------------------------------------------------------------------
  // A draft for speculative decoding shrunk from the teacher: layers {0, L-1} or {0, L/3, 2L/3,
  // L-1} with its embeddings, final norm and head, every parameter fine-tuned with CE on the
  // labels' answers (prompt tokens masked). Its held-out top-1 agreement with the teacher is the
  // acceptance rate a greedy speculative loop can expect per drafted token.
  nlohmann::json draft(const std::vector<data::LabelledSequence>& train) {
    const auto layers = nn::draft_layers(loaded_.model.config().llama.n_layers, o_.draft);
    const fs::path run_dir = dir_ / ("draft" + std::to_string(o_.draft));
    say("draft: teacher layers %s with its embeddings and head", nlohmann::json(layers).dump().c_str());
    nn::HybridModel<T, D> model = nn::convert_model<T, D>(nn::select_layers(loaded_.model, layers));
    nlohmann::json entry = {{"layers", layers}, {"model", (run_dir / "model").string()}};
    entry["before"] = evaluate(model, eval_set_, "draft, before training");
    if (!fs::exists(run_dir / "model" / kDone)) {
      auto t = stage1_options(int64_t(o_.draft_epochs * training_tokens(train)), train);
      t.stage = distill::Stage::sft;
      t.loss = distill::TrainOptions{}.loss;  // stage 1's loss options must not tie the draft's resume
      t.lr = o_.draft_lr;
      t.min_lr = o_.draft_lr / 10;
      say("draft: %g epochs of CE on the labels", o_.draft_epochs);
      distill::Trainer<T, D> trainer(model, nullptr, train, t, run_dir,
                                     with_label_rounds({{"stage", "draft"}, {"layers", layers}}));
      run_steps(trainer, model, t, run_dir, {}, "draft");
      save(model, run_dir / "model");
    } else {
      say("the draft is done already: %s", (run_dir / "model").string().c_str());
      model.copy_owned_from(nn::load_model((run_dir / "model").string()).model);
    }
    entry["after"] = evaluate(model, eval_set_, "draft, after training");
    say("draft: %s (mil-chat -md %s)", (run_dir / "model").string().c_str(), (run_dir / "model").string().c_str());
    return entry;
  }

  // ---- stage 3 --------------------------------------------------------------------------------
  // Makes (or finds) the pairs, trains the model at `start` on them with DPO and reports the
  // held-out preference metrics and the teacher-relative ones before and after.
  nlohmann::json dpo(const fs::path& start, const data::TokenDataset& train,
                     const data::TokenDataset& heldout, std::span<const data::LabelledSequence> eval_set) {
    const auto start_model = nn::load_model(start.string()).model;
    nn::HybridModel<T, D> policy(start_model.config());
    policy.copy_owned_from(start_model);
    // The reference: the teacher (the paper's), or a frozen copy of the starting model.
    const bool sft_ref = o_.dpo_ref == "sft";
    std::optional<nn::HybridModel<T, D>> frozen;
    if (sft_ref) frozen.emplace(start_model.config()), frozen->copy_owned_from(start_model);
    const nn::HybridModel<T, D>& reference = sft_ref ? *frozen : teacher_;
    const std::string start_sha = util::sha256_model(start);
    const std::string ref_sha = sft_ref ? start_sha : teacher_sha256_;
    const std::string tokenizer = data::tokenizer_fingerprint(loaded_.tokenizer);
    // Models named by their place in the output folder, so a moved folder continues.
    const std::string start_name = fs::relative(start, dir_).string();
    data::PairIdentity id{start_name, start_sha, tokenizer, sft_ref ? start_name : "", sft_ref ? start_sha : ""};

    // Pairs: on-policy from the labels (the model before stage 3 samples the rejected answers),
    // or the JSONL file's for training; the held-out ones always on-policy.
    data::PairConfig pc;
    pc.sampling.temperature = o_.dpo_temperature;
    pc.seed = o_.seed;
    pc.samples_per_prompt = o_.dpo_samples;
    pc.slots = o_.slots;
    pc.max_step_tokens = step_tokens();
    pc.max_answer = o_.max_answer;
    auto make_pairs = [&](const data::TokenDataset& labels, const fs::path& out) {
      say("preference pairs from %zu labels into %s", labels.sequences.size(), out.string().c_str());
      const auto s = data::make_preference_pairs(policy, teacher_, reference, labels, pc, out, id);
      say("  %lld pairs; skipped: %lld empty, %lld with the chosen answer as the only sample",
          (long long)s.pairs, (long long)s.skipped_empty, (long long)s.skipped_same_answer);
    };
    const fs::path train_dir = dir_ / "pairs" / (o_.dpo_prompts > 0 ? "dpo" : "train"),
                   heldout_dir = dir_ / "pairs" / "heldout";
    if (!o_.dpo_pairs.empty()) {
      data::JsonlPairConfig jc;
      jc.max_prompt = o_.max_prompt;
      jc.max_answer = o_.max_answer;
      say("preference pairs from %s into %s", o_.dpo_pairs.c_str(), train_dir.string().c_str());
      data::make_jsonl_preference_pairs(reference, loaded_.tokenizer, tmpl_, {fs::path(o_.dpo_pairs)},
                                        jc, train_dir, id);
    } else if (o_.dpo_prompts > 0) {
      // Prompts the model was not trained on: on its training prompts it already prefers the
      // teacher's answers (it was fitted to them), so their pairs teach DPO nothing.
      const auto set = read_prompts(o_.dpo_prompts);
      MIL_CHECK(o_.max_prompts > 0, "--dpo-prompts needs --max-prompts N: without a cap every ",
                "prompt is labelled for training and none is left for the pairs");
      MIL_CHECK(!set.extra.empty(), "--dpo-prompts ", o_.dpo_prompts, ": the prompt files hold no ",
                "prompts beyond the ", o_.max_prompts, " labelled ones (--max-prompts)");
      label_into("dpo", set.extra, o_.seed);
      make_pairs(read_labels("dpo"), train_dir);
    } else {
      make_pairs(train, train_dir);
    }
    make_pairs(heldout, heldout_dir);
    auto read_pairs = [&](const fs::path& dir) {
      auto d = data::read_preference_pairs(dir);
      data::check_pairs_match(d.manifest, ref_sha, tokenizer);
      MIL_CHECK(!d.pairs.empty(), dir.string(), " holds no pairs: every prompt was skipped");
      return d;
    };
    const auto train_pairs = read_pairs(train_dir), heldout_pairs = read_pairs(heldout_dir);
    const std::span<const data::PreferencePair> tp(train_pairs.pairs), hp(heldout_pairs.pairs);

    auto measure = [&](const char* what) {
      const auto m = distill::preference_metrics(policy, hp, o_.dpo_beta);
      say("%s: held-out preference accuracy %.1f%%, reward margin %.3f, kl_ref %.3f (%lld pairs)",
          what, 100 * m.accuracy, m.reward_margin, m.kl_ref, (long long)m.pairs);
      return nlohmann::json{{"accuracy", m.accuracy},
                            {"reward_margin", m.reward_margin},
                            {"kl_ref", m.kl_ref},
                            {"pairs", m.pairs},
                            {"teacher_relative", evaluate(policy, eval_set, what)}};
    };
    nlohmann::json entry = {{"reference", sft_ref ? "sft" : "teacher"}, {"start", start.string()}};
    entry["before"] = measure("before stage 3");
    const fs::path run_dir = dir_ / "stage3";
    if (!fs::exists(run_dir / "model" / kDone)) {
      const auto t = dpo_options(tp);
      distill::Trainer<T, D> trainer(policy, tp, t, run_dir,
                                     {{"stage", "3"}, {"start_sha256", start_sha},
                                      {"pairs_sha256", train_pairs.manifest.prompts_sha256}});
      // The held-out curve records the preference metrics too: where accuracy is reached, and at
      // what cost in KL to the teacher.
      run_steps(trainer, policy, t, run_dir, [&](nlohmann::json& record) {
        const auto m = distill::preference_metrics(policy, hp, o_.dpo_beta);
        record["preference_accuracy"] = m.accuracy;
        record["reward_margin"] = m.reward_margin;
        char text[96];
        std::snprintf(text, sizeof text, " | preference accuracy %.1f%%, margin %.3f", 100 * m.accuracy,
                      m.reward_margin);
        return std::string(text);
      });
      // In float32: a DPO update (lr 5e-7) is far below bf16's resolution of a weight, and a
      // bf16 copy would lose most of it.
      save(policy, run_dir / "model", "float32");
    } else {
      say("stage 3 is done already: %s", (run_dir / "model").string().c_str());
      policy.copy_owned_from(nn::load_model((run_dir / "model").string()).model);
    }
    entry["after"] = measure("after stage 3");
    return entry;
  }

  distill::TrainOptions dpo_options(std::span<const data::PreferencePair> pairs) const {
    distill::TrainOptions t = distill::dpo_options();
    t.lr = o_.dpo_lr;
    t.min_lr = o_.dpo_lr / 10;
    t.dpo.beta = o_.dpo_beta;
    t.dpo.label_smoothing = o_.dpo_label_smoothing;
    t.dpo.chosen_nll_weight = o_.dpo_nll_weight;
    t.dpo.objective = o_.dpo_ipo ? DpoObjective::ipo : DpoObjective::sigmoid;
    t.micro_batch = std::max<int64_t>(1, o_.micro_batch / 2);  // as many rows as other stages
    t.accumulation = o_.accumulation;
    t.max_grad_norm = o_.clip;
    t.seed = o_.seed;
    t.checkpoint_every = o_.checkpoint_every;
    t.pad_id = std::max<int32_t>(loaded_.tokenizer.eos(), 0);
    // A row holds a whole prompt and answer (the reference log-probability covers all of it).
    int64_t longest = 2, tokens = 0;
    for (const auto& p : pairs) {
      longest = std::max<int64_t>(longest, int64_t(p.prompt.size()) + std::max(p.chosen_len(), p.rejected_len()));
      tokens += 2 * int64_t(p.prompt.size()) + p.chosen_len() + p.rejected_len();
    }
    t.seq_len = longest - 1;
    // Steps from the epochs or the token budget (or one epoch).
    const double per_step = double(t.micro_batch * t.accumulation);
    const double epochs = o_.dpo_tokens != "0"
                              ? double(distill::parse_token_count(o_.dpo_tokens)) / double(tokens)
                              : o_.dpo_epochs > 0 ? o_.dpo_epochs : 1.0;
    t.steps = std::max<int64_t>(1, int64_t(std::ceil(epochs * double(pairs.size()) / per_step)));
    t.warmup_steps = int64_t(o_.warmup * float(t.steps));
    return t;
  }

  // The model in the reference format (mil-chat and the reference code load it), marked done.
  void save(const nn::HybridModel<T, D>& student, const fs::path& dir,
            const std::string& dtype = "bfloat16") {
    nn::HybridModel<float, Cpu> full(student.config());
    full.copy_owned_from(student);
    nn::HybridSaveOptions so;
    so.hf.dtype = dtype;
    nn::save_hybrid(dir, full, so);
    text::save_hf_tokenizer(dir, loaded_.tokenizer.data(), loaded_.chat_template);
    io::write_text_file_atomic(dir / kDone, "");
    say("model: %s", dir.string().c_str());
  }

  nlohmann::json evaluate(const nn::HybridModel<T, D>& model, std::span<const data::LabelledSequence> seqs,
                          const char* what) {
    if (!runs(o_, "eval") && !runs(o_, "stage1") && !runs(o_, "dpo") && !runs(o_, "draft")) return nullptr;
    util::ProgressBar bar("eval", int64_t(seqs.size()));
    const auto r = measure(model, seqs, [&](int64_t done, int64_t) { bar.update(done); });
    say("%s: %s", what, describe(r).c_str());
    return to_json(r);
  }

  eval::TeacherRelative measure(const nn::HybridModel<T, D>& model, std::span<const data::LabelledSequence> seqs,
                                std::function<void(int64_t, int64_t)> on_progress = {}) const {
    eval::EvalOptions eo;
    eo.max_len = o_.seq_len + 1;
    eo.on_progress = std::move(on_progress);
    return eval::teacher_relative(teacher_, model, seqs, eo);
  }

  // Writes report.json: this run's entries replace those of the same name, and the others stay
  // (a later `--only draft` or `--only dpo` must not drop an earlier run's stage-1 results; an
  // empty list, e.g. the steps of a run that trained no stage 1, replaces nothing).
  int finish(const nlohmann::json& report) {
    const fs::path file = dir_ / "report.json";
    nlohmann::json merged = nlohmann::json::object();
    if (fs::exists(file)) {
      try {
        merged = io::read_json_file_strict(file);
      } catch (const std::exception&) {
        merged = nullptr;  // unreadable: moved aside below
      }
      if (!merged.is_object()) {
        const fs::path aside = dir_ / "report.json.unreadable";
        say("warning: %s is not a JSON object: moved to %s, a new one is written", file.string().c_str(),
            aside.string().c_str());
        fs::rename(file, aside);
        merged = nlohmann::json::object();
      }
    }
    for (const auto& [key, value] : report.items())
      if (!(value.is_array() && value.empty())) merged[key] = value;
    io::write_text_file_atomic(file, merged.dump(2) + "\n");
    say("report: %s", (dir_ / "report.json").string().c_str());
    return 0;
  }

  const Options& o_;
  const nn::LoadedModel& loaded_;
  const nn::HybridModel<T, D>& teacher_;
  std::string teacher_sha256_;
  fs::path dir_;
  text::ChatTemplate tmpl_;
  std::span<const data::LabelledSequence> eval_set_;  // the held-out answers scored
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mil-distill: distil a Transformer into a hybrid Mamba model (label -> stage 1 -> "
               "stage 2 -> stage 3 (DPO) -> eval)"};
  Options o;
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // scripts add defaults
  app.add_option("--teacher", o.teacher, "the Transformer: GGUF file or Hugging Face folder")->required();
  app.add_option("-o,--out", o.out, "output folder (a rerun continues what it finds there)")->required();
  app.add_option("--prompts", o.prompts, "JSONL prompt files (scripts/setup.sh fetches the defaults)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  auto* only = app.add_option("--only", o.only, "run one step: label, stage1, stage2, dpo, eval or draft")
                   ->check(CLI::IsMember({"label", "stage1", "stage2", "dpo", "eval", "draft"}));
  app.add_option("--stage", o.only, "the same as --only (e.g. --stage dpo)")
      ->check(CLI::IsMember({"label", "stage1", "stage2", "dpo", "eval", "draft"}))
      ->excludes(only);
  auto* layout = app.add_option("--layout", o.layout, "attention kept: 50%, 25%, 12.5% or 0%");
  auto* attn = app.add_option("--attn-layers", o.attn_layers, "layers that keep attention, e.g. 1,3,5");
  auto* mamba = app.add_option("--mamba-layers", o.mamba_layers, "layers that become Mamba, e.g. 7,15,23");
  auto* schedule = app.add_option("--schedule", o.schedule, "stepwise conversion, e.g. 50%:200k,25%:200k");
  layout->excludes(attn, mamba, schedule);
  attn->excludes(mamba, schedule);
  mamba->excludes(schedule);
  app.add_option("--mixer", o.mixer, "mamba2 or mamba1")->check(CLI::IsMember({"mamba2", "mamba1"}));
  app.add_option("--tokens", o.tokens, "stage-1 training tokens (e.g. 50k, 2M)");
  app.add_option("--sft-tokens", o.sft_tokens, "stage-2 training tokens (0: no stage 2)");
  app.add_option("--teacher-layers", o.teacher_layers, "use only the teacher's first N layers");
  app.add_option("--draft", o.draft, "also make a speculative-decoding draft of 2 or 4 teacher layers")
      ->check(CLI::IsMember({2, 4}));
  app.add_option("--draft-epochs", o.draft_epochs, "the draft's CE epochs over the labels");
  app.add_option("--draft-lr", o.draft_lr, "the draft's peak learning rate");
  app.add_option("--max-prompts", o.max_prompts, "prompts to label at most (a seeded sample)");
  app.add_option("--answers", o.answers, "answers the teacher samples per training prompt (more labels)")
      ->check(CLI::Range(int64_t(1), int64_t(64)));
  app.add_option("--heldout", o.heldout, "held-out prompts (labelled for evaluation only)");
  app.add_option("--slots", o.slots, "prompts the teacher answers at once");
  app.add_option("--max-prompt", o.max_prompt, "longer prompts are skipped");
  app.add_option("--max-answer", o.max_answer, "answer tokens at most");
  app.add_option("--topk", o.topk, "store the teacher's top-k log-probabilities with each label");
  app.add_option("--trainable", o.trainable, "stage-1 parameters: mixers, mixers+attention or all");
  app.add_option("--lr", o.lr, "stage-1 peak learning rate");
  app.add_option("--sft-lr", o.sft_lr, "stage-2 peak learning rate");
  app.add_option("--warmup", o.warmup, "warm-up, as a fraction of the steps");
  app.add_option("--clip", o.clip, "global gradient-norm clipping (0: off)");
  app.add_option("--ce-weight", o.ce_weight, "alpha: weight of CE on the labels");
  app.add_option("--kl-weight", o.kl_weight, "beta: weight of KL(teacher || student)");
  app.add_option("--temperature", o.temperature, "KL temperature");
  app.add_option("--micro-batch", o.micro_batch, "sequences per forward/backward");
  app.add_option("--accumulation", o.accumulation, "micro-batches per optimizer step");
  app.add_option("--seq-len", o.seq_len, "longest training sequence (longer ones are cut)");
  app.add_option("--checkpoint-every", o.checkpoint_every, "optimizer steps between checkpoints");
  // Stage 3. METHOD §5's full-size settings are the defaults (beta 0.1, lr 5e-7); a few CPU steps
  // at 5e-7 move nothing measurable: CPU quick starts take e.g. --dpo-lr 1e-5 --dpo-beta 0.1.
  auto* dpo_tokens = app.add_option("--dpo-tokens", o.dpo_tokens, "stage-3 (DPO) tokens (0: no stage 3)");
  app.add_option("--dpo-epochs", o.dpo_epochs, "stage-3 epochs over the pairs (instead of --dpo-tokens)")
      ->excludes(dpo_tokens);
  app.add_option("--dpo-samples", o.dpo_samples, "student samples per prompt; the teacher's least likely is rejected");
  app.add_option("--dpo-temperature", o.dpo_temperature, "temperature of the student's samples");
  app.add_option("--dpo-ref", o.dpo_ref, "reference model: teacher or sft (the model before stage 3)")
      ->check(CLI::IsMember({"teacher", "sft"}));
  app.add_option("--dpo-beta", o.dpo_beta, "DPO beta (0.1 for 3 epochs or 0.01 for 1, METHOD §5)");
  app.add_option("--dpo-lr", o.dpo_lr, "stage-3 peak learning rate (5e-7; 1e-5 for CPU quick starts)");
  app.add_flag("--dpo-ipo", o.dpo_ipo, "IPO loss instead of sigmoid DPO");
  app.add_option("--dpo-label-smoothing", o.dpo_label_smoothing, "conservative DPO's eps, in [0, 0.5]");
  auto* dpo_pairs = app.add_option("--dpo-pairs", o.dpo_pairs,
                                   "training pairs from JSONL (prompt/chosen/rejected or ShareGPT)");
  app.add_option("--dpo-prompts", o.dpo_prompts,
                 "training pairs on N prompts beyond --max-prompts, labelled first (default: the "
                 "training labels' prompts)")
      ->check(CLI::PositiveNumber)
      ->excludes(dpo_pairs);
  app.add_option("--dpo-nll-weight", o.dpo_nll_weight,
                 "adds this times the chosen answer's mean NLL to the DPO loss (0: plain DPO)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", o.seed, "seed of prompts, labels, initialisation and data order");
  app.add_option("--threads", o.threads, "CPU threads (default: all cores)");
  app.add_option("--eval-seqs", o.eval_seqs, "held-out answers scored before and after");
  app.add_option("--eval-every", o.eval_every,
                 "also score them every this many training tokens (e.g. 2M; heldout.jsonl, heldout.svg)");
  app.add_option("--show", o.show_prompts, "prompts answered side by side at the end")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--device", o.device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  CLI11_PARSE(app, argc, argv);

  try {
    if (o.eval_every != "0") {
      o.eval_every_tokens = distill::parse_token_count(o.eval_every);
      MIL_CHECK(o.eval_seqs > 0, "--eval-every needs held-out answers to score (--eval-seqs > 0)");
    }
    MIL_CHECK(o.only != "draft" || o.draft > 0, "--only draft needs --draft 2 or 4 (the teacher layers it keeps)");
    MIL_CHECK(o.draft_epochs > 0 && o.draft_lr > 0, "--draft-epochs and --draft-lr must be > 0");
    if (o.threads > 0) cpu::set_threads(o.threads);
    say("teacher: %s", o.teacher.c_str());
    // On the GPU the teacher runs on bf16 copies: the block copy a CPU run decodes with is not kept.
    auto loaded = nn::load_model(o.teacher, examples::runs_on_gpu(o.device) ? nn::LoadFor::float_only
                                                                          : nn::LoadFor::any);
    MIL_CHECK(loaded.model.config().n_mamba_layers() == 0, "the teacher '", o.teacher,
              "' is a hybrid already; give a Transformer");
    if (o.teacher_layers > 0) loaded.model = nn::first_layers(loaded.model, o.teacher_layers);
    const std::string sha = util::sha256_model(o.teacher);
    claim_output_folder(o.out, run_identity(o, sha));
#if MIL_CUDA_ENABLED && defined(__CUDACC__)
    if (o.device == "cuda" || (o.device == "auto" && mil::cuda::device_count() > 0)) {
      MIL_CHECK(mil::cuda::device_count() > 0, "--device cuda: no CUDA device found");
      say("device: CUDA (bf16 weights, fp32 master weights and moments)");
      const auto teacher = nn::convert_model<bf16, Cuda>(loaded.model);
      return Pipeline<bf16, Cuda>(o, loaded, teacher, sha).run();
    }
#else
    MIL_CHECK(o.device != "cuda", "--device cuda: this mil-distill was built without CUDA");
#endif
    say("device: CPU (float), %d threads", cpu::threads());
    return Pipeline<float, Cpu>(o, loaded, loaded.model, sha).run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-distill: error: %s\n", e.what());
    return 1;
  }
}
