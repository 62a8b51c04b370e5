// mil-eval: how close students come to their teacher, without an external judge
// (docs/METHOD.md §7): on held-out teacher answers, perplexity and its ratio to the teacher's,
// token KL(teacher || model) and top-1 agreement; passkey retrieval at 1x, 2x, 4x, 8x and 20x a
// training length, capped at the teacher's context, with the teacher's own score as the
// baseline; with --pairs, held-out preference accuracy and reward margin against the pairs'
// stored reference log-probabilities (stage 3, docs/METHOD.md §5); and greedy answers of teacher
// and models to a few prompts, side by side.
//
//   mil-eval --teacher models/SmolLM2-135M-Instruct.Q4_1.gguf -m runs/student
//            --data data/heldout --passkey-train-len 512 --json eval.json
//
// Prints a table (the teacher's row first) and the answers; --json writes everything.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include <mil/data/preference_pair.hpp>
#include <mil/data/token_dataset.hpp>
#include <mil/distill/preference_eval.hpp>
#include <mil/eval/passkey.hpp>
#include <mil/eval/sequences_json.hpp>
#include <mil/eval/teacher_relative.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/util/progress.hpp>

using namespace mil;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

struct Options {
  std::string teacher, data, sequences, pairs, json, device = "auto", chat_template;
  double beta = 0.1;  // scale of the rewards beta (logp - ref)
  std::vector<std::string> models, prompts = {"What is the capital of France?",
                                              "Write a haiku about the sea.",
                                              "Explain in two sentences why the sky is blue."};
  int64_t max_seqs = 0, max_len = 2048, batch_tokens = 2048, answer_tokens = 64;
  eval::PasskeyOptions passkey;
};

// One evaluated model (the teacher is the first) and what was measured.
struct Entry {
  explicit Entry(const std::string& p) : path(p), loaded(nn::load_model(p)) {}
  std::string path;
  nn::LoadedModel loaded;
  std::optional<text::ChatTemplate> tmpl;
  std::optional<eval::TeacherRelative> relative;
  std::optional<distill::PreferenceMetrics> preference;
  std::vector<eval::PasskeyScore> passkey;
  std::vector<std::string> answers;
};

// The held-out sequences of --data, checked to come from this teacher and tokenizer.
std::vector<data::LabelledSequence> read_heldout(const Options& o, const Entry& teacher) {
  auto d = data::read_token_dataset(o.data);
  data::check_dataset_matches(d.manifest, util::sha256_model(o.teacher),
                              data::tokenizer_fingerprint(teacher.loaded.tokenizer));
  return std::move(d.sequences);
}

// A progress bar for one piece of work, as a callback for the library.
std::function<void(int64_t, int64_t)> progress(std::optional<util::ProgressBar>& bar,
                                               const std::string& label) {
  bar.reset();
  return [&bar, label](int64_t done, int64_t total) {
    if (!bar) bar.emplace(label, total);
    bar->update(done);
  };
}

// models[i] is entries[i]'s model on the device (models[0] the teacher).
template <Element T, Device D>
void evaluate(const Options& o, std::vector<Entry>& entries,
              const std::vector<const nn::HybridModel<T, D>*>& models,
              const std::vector<data::LabelledSequence>& heldout,
              std::span<const data::PreferencePair> pairs) {
  std::optional<util::ProgressBar> bar;
  for (size_t i = 0; i < entries.size(); ++i) {
    Entry& e = entries[i];
    const std::string name = i == 0 ? "teacher" : e.loaded.name;
    if (!heldout.empty() && i > 0) {  // the teacher's own figures come with every model's
      eval::EvalOptions eo{o.max_len, o.batch_tokens, progress(bar, "held-out " + name)};
      e.relative = eval::teacher_relative(*models[0], *models[i], heldout, eo);
    }
    if (!pairs.empty() && i > 0) {
      std::fprintf(stderr, "[mil-eval] preference pairs: %s\n", name.c_str());
      e.preference = distill::preference_metrics(*models[i], pairs, o.beta);
    }
    if (o.passkey.trials > 0) {
      eval::PasskeyOptions po = o.passkey;
      po.on_progress = progress(bar, "passkey " + name);
      e.passkey = eval::passkey_accuracy(*models[i], e.loaded.tokenizer, po);
    }
    e.answers = eval::greedy_answers(*models[i], e.loaded.tokenizer, e.tmpl, o.prompts, o.answer_tokens);
  }
}

// The teacher's row is the baseline: its perplexity (from any model's run), ratio 1, KL 0,
// agreement 1 by definition.
void print_table(const std::vector<Entry>& entries) {
  std::printf("\n%-28s %9s %7s %8s %6s", "model", "ppl", "ratio", "KL", "top-1");
  for (const auto& s : entries[0].passkey) std::printf("  pk %5lld", (long long)s.length);
  std::printf("\n");
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    std::string name = (i == 0 ? "teacher: " : "") + e.loaded.name;
    if (name.size() > 28) name = name.substr(0, 25) + "...";
    std::printf("%-28s", name.c_str());
    const auto& r = entries.back().relative;
    if (r && i == 0)
      std::printf(" %9.4f %7.4f %8.5f %6.4f", r->teacher_ppl, 1.0, 0.0, 1.0);
    else if (r)
      std::printf(" %9.4f %7.4f %8.5f %6.4f", e.relative->model_ppl, e.relative->ppl_ratio,
                  e.relative->kl, e.relative->top1_agreement);
    else
      std::printf(" %9s %7s %8s %6s", "-", "-", "-", "-");
    for (const auto& s : e.passkey) std::printf("  %8.2f", s.accuracy());
    std::printf("\n");
  }
  if (!entries[0].passkey.empty())
    std::printf("(pk N: passkey accuracy with prompts of N tokens; %lld trials each)\n",
                (long long)entries[0].passkey[0].trials);
}

// Against the pairs' reference: the share of pairs whose chosen answer gets the larger reward,
// the mean reward margin and the mean (logp - ref) per answer token.
void print_preferences(const std::vector<Entry>& entries, double beta) {
  if (entries.size() < 2 || !entries[1].preference) return;
  std::printf("\n%-28s %9s %9s %8s   (preference pairs: %lld, beta %g)\n", "model", "accuracy",
              "margin", "kl_ref", (long long)entries[1].preference->pairs, beta);
  for (size_t i = 1; i < entries.size(); ++i) {
    const auto& m = *entries[i].preference;
    std::string name = entries[i].loaded.name;
    if (name.size() > 28) name = name.substr(0, 25) + "...";
    std::printf("%-28s %9.4f %9.4f %8.5f\n", name.c_str(), m.accuracy, m.reward_margin, m.kl_ref);
  }
}

void print_answers(const Options& o, const std::vector<Entry>& entries) {
  for (size_t p = 0; p < o.prompts.size(); ++p) {
    std::printf("\n### %s\n", o.prompts[p].c_str());
    for (size_t i = 0; i < entries.size(); ++i)
      std::printf("[%s] %s\n", (i == 0 ? "teacher: " + entries[i].loaded.name : entries[i].loaded.name).c_str(),
                  entries[i].answers[p].c_str());
  }
}

ojson to_json(const Options& o, const std::vector<Entry>& entries, int64_t heldout_sequences) {
  auto model_json = [&](const Entry& e, bool teacher) {
    ojson j;
    j["name"] = e.loaded.name;
    j["path"] = e.path;
    if (const auto& rel = entries.back().relative) {
      const auto& r = teacher ? *rel : *e.relative;
      j["perplexity"] = teacher ? r.teacher_ppl : r.model_ppl;
      j["nll"] = teacher ? r.teacher_nll : r.model_nll;
      if (!teacher) {
        j["perplexity_ratio"] = r.ppl_ratio;
        j["kl"] = r.kl;
        j["top1_agreement"] = r.top1_agreement;
      }
      j["answer_tokens"] = r.tokens;
    }
    if (e.preference)
      j["preference"] = {{"pairs", e.preference->pairs},
                         {"accuracy", e.preference->accuracy},
                         {"reward_margin", e.preference->reward_margin},
                         {"kl_ref", e.preference->kl_ref}};
    ojson pk = ojson::array();
    for (const auto& s : e.passkey)
      pk.push_back({{"length", s.length}, {"multiple", s.multiple}, {"correct", s.correct},
                    {"trials", s.trials}, {"accuracy", s.accuracy()}});
    j["passkey"] = pk;
    return j;
  };
  ojson out;
  out["data"] = {{"path", o.data + o.sequences}, {"sequences", heldout_sequences}, {"max_len", o.max_len}};
  if (!o.pairs.empty()) out["pairs"] = {{"path", o.pairs}, {"beta", o.beta}};
  out["passkey"] = {{"train_len", o.passkey.train_len}, {"context", o.passkey.context},
                    {"trials", o.passkey.trials}, {"seed", o.passkey.seed}};
  out["teacher"] = model_json(entries[0], true);
  out["models"] = ojson::array();
  for (size_t i = 1; i < entries.size(); ++i) out["models"].push_back(model_json(entries[i], false));
  out["answers"] = ojson::array();
  for (size_t p = 0; p < o.prompts.size(); ++p) {
    ojson a = {{"prompt", o.prompts[p]}, {"teacher", entries[0].answers[p]}};
    a["models"] = ojson::array();
    for (size_t i = 1; i < entries.size(); ++i) a["models"].push_back(entries[i].answers[p]);
    out["answers"].push_back(a);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"mil-eval: teacher-relative metrics, passkey retrieval and side-by-side answers"};
  app.add_option("--teacher", o.teacher, "the teacher: GGUF file or Hugging Face folder")->required();
  app.add_option("-m,--model", o.models, "a model to evaluate (repeatable): hybrid folder, GGUF "
                                         "file or Hugging Face folder")
      ->required();
  app.add_option("--data", o.data, "held-out token dataset labelled by the teacher (without it: "
                                   "passkey and answers only)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--sequences", o.sequences, "held-out sequences as JSON instead of --data: "
                                             "[{\"tokens\": [...], \"prompt_len\": n}, ...]")
      ->check(CLI::ExistingFile)
      ->excludes("--data");
  app.add_option("--pairs", o.pairs, "held-out preference pairs (mil-distill's pairs/heldout): "
                                    "preference accuracy and reward margin of each model")
      ->check(CLI::ExistingDirectory);
  app.add_option("--beta", o.beta, "DPO beta that scales the rewards of --pairs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-seqs", o.max_seqs, "held-out sequences to use; 0 = all")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-len", o.max_len, "tokens per held-out sequence at most")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 20))
      ->capture_default_str();
  app.add_option("--batch-tokens", o.batch_tokens, "padded tokens per forward pass")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24))
      ->capture_default_str();
  app.add_option("--passkey-train-len", o.passkey.train_len,
                 "training length that the passkey lengths (1x 2x 4x 8x 20x) multiply")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24))
      ->capture_default_str();
  app.add_option("--passkey-trials", o.passkey.trials, "prompts per passkey length; 0 = no passkey")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--passkey-context", o.passkey.context,
                 "cap on passkey prompt + answer; default: the teacher's context")
      ->check(CLI::Range(int64_t(16), int64_t(1) << 24));
  app.add_option("--seed", o.passkey.seed, "seed of the passkey keys and depths")->capture_default_str();
  app.add_option("--prompts", o.prompts, "prompts for the side-by-side answers (repeatable)");
  app.add_option("--answer-tokens", o.answer_tokens, "tokens per side-by-side answer at most")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 16))
      ->capture_default_str();
  app.add_option("--chat-template", o.chat_template,
                 "template family when a model's is not recognised (chatml, zephyr, llama3, "
                 "llama2, mistral)");
  app.add_option("--json", o.json, "write the results here as JSON");
  app.add_option("--device", o.device, "cpu, cuda or auto")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const bool context_given = app.count("--passkey-context") > 0;

  try {
    std::vector<Entry> entries;
    entries.emplace_back(o.teacher);
    for (const std::string& path : o.models) entries.emplace_back(path);
    for (Entry& e : entries) {
      e.tmpl = o.chat_template.empty()
                   ? text::detect_chat_template(e.loaded.chat_template)
                   : text::chat_template_for_family(text::parse_chat_family(o.chat_template));
      std::fprintf(stderr, "[mil-eval] %s: %s, %lld layers (%lld attention)\n", e.path.c_str(),
                   e.loaded.name.c_str(), (long long)e.loaded.model.config().llama.n_layers,
                   (long long)e.loaded.model.config().attn_layers.size());
    }
    if (!context_given) {
      o.passkey.context = nn::stored_context_length(o.teacher);
      MIL_CHECK(o.passkey.context > 0 || o.passkey.trials == 0, "the teacher '", o.teacher,
                "' names no context length: give --passkey-context");
    }
    std::vector<data::LabelledSequence> heldout;
    if (!o.data.empty() || !o.sequences.empty()) {
      heldout = o.data.empty() ? eval::read_sequences_json(o.sequences) : read_heldout(o, entries[0]);
      if (o.max_seqs > 0 && int64_t(heldout.size()) > o.max_seqs) heldout.resize(size_t(o.max_seqs));
      MIL_CHECK(!heldout.empty(), "no held-out sequences in '", o.data + o.sequences, "'");
      for (size_t i = 1; i < entries.size(); ++i)
        MIL_CHECK(data::tokenizer_fingerprint(entries[i].loaded.tokenizer) ==
                      data::tokenizer_fingerprint(entries[0].loaded.tokenizer),
                  "model '", entries[i].path, "' has another tokenizer than the teacher: token ",
                  "ids of the held-out data would mean other text to it");
      std::fprintf(stderr, "[mil-eval] %s: %zu held-out sequences\n", (o.data + o.sequences).c_str(),
                   heldout.size());
    }
    data::PreferenceDataset pairs;
    if (!o.pairs.empty()) {
      pairs = data::read_preference_pairs(o.pairs);
      // Any reference is fine (the pairs name theirs); the token ids must be the models'.
      for (const Entry& e : entries)
        data::check_pairs_match(pairs.manifest, pairs.manifest.pairs.reference_sha256,
                                data::tokenizer_fingerprint(e.loaded.tokenizer));
      MIL_CHECK(!pairs.pairs.empty(), "no preference pairs in '", o.pairs, "'");
      std::fprintf(stderr, "[mil-eval] %s: %zu preference pairs (reference %s)\n", o.pairs.c_str(),
                   pairs.pairs.size(), pairs.manifest.pairs.reference_name.c_str());
    }
#if MIL_CUDA_ENABLED && defined(__CUDACC__)
    if (o.device == "cuda" || (o.device == "auto" && mil::cuda::device_count() > 0)) {
      MIL_CHECK(mil::cuda::device_count() > 0, "--device cuda: no CUDA device found");
      std::fprintf(stderr, "[mil-eval] device: CUDA (bf16)\n");
      std::vector<nn::HybridModel<bf16, Cuda>> gpu;
      std::vector<const nn::HybridModel<bf16, Cuda>*> models;
      for (const Entry& e : entries) gpu.push_back(nn::convert_model<bf16, Cuda>(e.loaded.model));
      for (const auto& m : gpu) models.push_back(&m);
      evaluate(o, entries, models, heldout, std::span<const data::PreferencePair>(pairs.pairs));
    } else
#else
    MIL_CHECK(o.device != "cuda", "--device cuda: this mil-eval was built without CUDA");
#endif
    {
      std::fprintf(stderr, "[mil-eval] device: CPU (float)\n");
      std::vector<const nn::HybridModel<float, Cpu>*> models;
      for (const Entry& e : entries) models.push_back(&e.loaded.model);
      evaluate(o, entries, models, heldout, std::span<const data::PreferencePair>(pairs.pairs));
    }
    print_table(entries);
    print_preferences(entries, o.beta);
    print_answers(o, entries);
    if (!o.json.empty()) {
      io::write_text_file_atomic(o.json, to_json(o, entries, int64_t(heldout.size())).dump(2) + "\n");
      std::printf("\nresults: %s\n", o.json.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-eval: error: %s\n", e.what());
    return 1;
  }
}
