// mil-bench: how fast a model reads prompts and generates, in the manner of llama.cpp's
// llama-bench. "ppN" prefills N tokens into each of B sequences; "tgN" generates N tokens in each
// of B sequences after a short prompt (greedy, one decode step over all B at once). Each test runs
// once untimed, then -r times; the result is tokens/s as mean ± standard deviation.
//
//   mil-bench -m models/SmolLM2-135M-Instruct.Q4_1.gguf               (pp512 and tg128, batch 1)
//   mil-bench -m MODEL -m out/hybrid50 -p 128,512 -n 128 -b 1,8 -o csv
//   mil-bench -m MODEL -p 0 -n 128 --lookup -md DRAFT --draft-max 2,4,8   (speculative decoding)
//
// MODEL is a GGUF file, a Hugging Face folder or a hybrid folder (from mil-convert), as for
// mil-chat. pp and tg tests read random token ids (fixed seed). A draft guesses nothing in random
// tokens, so the speculative tests (--lookup, -md) generate after a chat prompt (--prompt, through
// the model's chat template) in each of B sequences, one target step checking every sequence's
// drafts, and "tgN chat" is plain generation after the same prompt: the speed-up is the ratio of
// two rows. The table goes to stdout (-o md); -o csv, json
// and jsonl give one record per test with the run's context (build, time, CPU or GPU, threads,
// model file). Progress goes to stderr.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/generate/generate.hpp>
#include <mil/generate/speculative.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/chat_prompt.hpp>
#include <mil/util/sha256.hpp>

#include "common/cli.hpp"

using namespace mil;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int64_t kShortPrompt = 8;      // tokens prefilled before a tgN test generates
constexpr uint64_t kTokenSeed = 20240;   // of the random prompts: every run reads the same tokens

struct Options {
  std::vector<std::string> models;
  std::vector<int64_t> n_prompt{512}, n_gen{128}, batch{1}, draft_max{4};
  std::string draft_model, output = "md", device = "auto";
  // Text whose answer repeats itself, so that drafts have something to guess.
  std::string prompt =
      "Here is a list: red apple, green pear, yellow banana, purple grape, orange tangerine. "
      "Repeat the list word for word three times, then extend it with ten more fruits in the "
      "same style.";
  bool lookup = false, float_weights = false, q8_activations = false;
  int64_t repetitions = 3;
  int threads = 0;
  bool speculate() const { return lookup || !draft_model.empty(); }
};

enum class Drafting { none, lookup, model };

const char* to_string(Drafting d) {
  switch (d) {
    case Drafting::none: return "none";
    case Drafting::lookup: return "lookup";
    case Drafting::model: return "model";
  }
  return "?";
}

// One row of the results.
struct Test {
  int64_t n_prompt = 0;  // ppN: N; otherwise the prompt before the generation
  int64_t n_gen = 0;     // 0: a ppN test
  int64_t batch = 1;
  bool chat = false;  // generation after the chat prompt (speculative tests and their baseline)
  Drafting drafting = Drafting::none;
  int64_t draft_max = 0;

  std::string name() const {
    if (n_gen == 0) return "pp" + std::to_string(n_prompt);
    const std::string tg = "tg" + std::to_string(n_gen), k = " K" + std::to_string(draft_max);
    switch (drafting) {
      case Drafting::none: return chat ? tg + " chat" : tg;
      case Drafting::lookup: return tg + "+lookup" + k;
      case Drafting::model: return tg + "+draft" + k;
    }
    return tg;
  }
};

// Speculation counts summed over sequences and runs. `tokens`: the tokens generated after each
// sequence's first, which comes from its prompt's logits rather than from a target step.
struct SpeculationCounts {
  int64_t drafted = 0, accepted = 0, target_steps = 0, replays = 0, tokens = 0;

  void add(const SpeculationCounts& o) {
    drafted += o.drafted, accepted += o.accepted, target_steps += o.target_steps;
    replays += o.replays, tokens += o.tokens;
  }
  void add(const gen::SpeculativeStats& s) {
    add(SpeculationCounts{s.drafted, s.accepted, s.target_steps, s.replays, std::max<int64_t>(s.generated - 1, 0)});
  }
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0; }
  double tokens_per_step() const { return target_steps ? double(tokens) / double(target_steps) : 0; }
};

// One measured run: its speed and, for a speculative one, its counts.
struct Run {
  double tokens_per_second = 0;
  std::optional<SpeculationCounts> speculation;
};

struct Result {
  Test test;
  std::vector<double> samples;  // tokens/s of each timed run
  std::optional<SpeculationCounts> speculation;  // summed over the timed runs

  double mean() const { return std::accumulate(samples.begin(), samples.end(), 0.0) / double(samples.size()); }
  // The sample standard deviation (0 for a single run).
  double stddev() const {
    if (samples.size() < 2) return 0;
    const double m = mean();
    double sum = 0;
    for (double s : samples) sum += (s - m) * (s - m);
    return std::sqrt(sum / double(samples.size() - 1));
  }
};

// What makes results comparable across runs: the program, when, and on what.
struct RunContext {
  std::string build, time_utc, cpu, gpu, backend = "cpu", dtype = "f32";
  int threads = 0;
};

struct ModelInfo {
  std::string path, name, layout, mixer;  // layout: "30 attn", "15 attn + 15 mamba2"
  std::string weights;  // what the products read: "blocks" (a GGUF file's), "float", "bf16"
  int64_t bytes = 0, params = 0, layers = 0, attention_layers = 0, mamba_layers = 0;
  int64_t context = 0;  // the context length stored with the model; 0 when it names none
};

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with("model name")) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t first = line.find_first_not_of(' ', colon + 1);
    return first == std::string::npos ? std::string() : line.substr(first);
  }
  return "unknown";
}

#if MIL_CUDA_ENABLED && defined(__CUDACC__)
std::string gpu_name() {
  int device = 0;
  MIL_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp p{};
  MIL_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}
#endif

// Bytes of the model file, or of a folder's weight and configuration files.
int64_t model_bytes(const std::string& path) {
  if (!fs::is_directory(path)) return int64_t(fs::file_size(path));
  int64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && util::is_model_file(e.path())) bytes += int64_t(e.file_size());
  return bytes;
}

ModelInfo describe(const std::string& path, const nn::LoadedModel& loaded) {
  const auto& c = loaded.model.config();
  ModelInfo m{.path = path, .name = loaded.name};
  m.layers = c.llama.n_layers;
  m.mamba_layers = c.n_mamba_layers();
  m.attention_layers = m.layers - m.mamba_layers;
  m.mixer = m.mamba_layers ? nn::mixer_name(c.mixer) : "";
  if (m.attention_layers) m.layout = std::to_string(m.attention_layers) + " attn";
  if (m.mamba_layers)
    m.layout += (m.layout.empty() ? "" : " + ") + std::to_string(m.mamba_layers) + " " + m.mixer;
  m.bytes = model_bytes(path);
  for (const auto& e : loaded.model.params().entries()) m.params += e.var.numel();  // blocks too
  m.context = nn::stored_context_length(path);
  return m;
}

// The chat prompt's tokens: through the model's chat template when it has one of a known family,
// else the text as is.
std::vector<int32_t> chat_prompt_ids(const nn::LoadedModel& m, const std::string& prompt) {
  const auto& tok = m.tokenizer;
  if (!m.chat_template.empty()) {
    try {
      const auto tmpl = text::detect_chat_template(m.chat_template);
      const text::ChatMessage user{"user", prompt};
      return text::encode_chat_prompt(tok, tmpl, std::span(&user, 1));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[mil-bench] %s: %s; the prompt goes in without a template\n",
                   m.name.c_str(), e.what());
    }
  }
  return tok.encode(prompt, tok.data().add_bos, true);
}

// The tests of one model, in the order they run: per batch size its pp and tg tests, then per
// batch size the speculative ones with their baseline.
std::vector<Test> plan_tests(const Options& o, int64_t chat_prompt_tokens) {
  std::vector<Test> tests;
  for (int64_t b : o.batch) {
    for (int64_t n : o.n_prompt)
      if (n > 0) tests.push_back({.n_prompt = n, .batch = b});
    for (int64_t n : o.n_gen)
      if (n > 0) tests.push_back({.n_prompt = kShortPrompt, .n_gen = n, .batch = b});
  }
  if (!o.speculate()) return tests;
  for (int64_t b : o.batch)
  for (int64_t n : o.n_gen) {
    if (n == 0) continue;
    const Test baseline{.n_prompt = chat_prompt_tokens, .n_gen = n, .batch = b, .chat = true};
    tests.push_back(baseline);
    for (int64_t k : o.draft_max) {
      if (o.lookup) {
        Test t = baseline;
        t.drafting = Drafting::lookup, t.draft_max = k;
        tests.push_back(t);
      }
      if (!o.draft_model.empty()) {
        Test t = baseline;
        t.drafting = Drafting::model, t.draft_max = k;
        tests.push_back(t);
      }
    }
  }
  return tests;
}

void check_context(const std::vector<Test>& tests, const ModelInfo& m) {
  for (const Test& t : tests)
    MIL_CHECK(m.context == 0 || t.n_prompt + t.n_gen <= m.context, "test ", t.name(), " needs ",
              t.n_prompt + t.n_gen, " tokens per sequence", t.chat ? " (with the chat prompt)" : "",
              "; the context of '", m.path, "' is ", m.context, " tokens");
}

std::vector<std::vector<int32_t>> random_prompts(int64_t batch, int64_t length, int32_t vocab) {
  std::mt19937_64 rng(kTokenSeed);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch),
                                            std::vector<int32_t>(static_cast<size_t>(length)));
  for (auto& p : prompts)
    for (auto& id : p) id = int32_t(rng() % uint64_t(vocab));
  return prompts;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Prompt b into slot b, all slots in each step, in steps of at most the decoder's max_tokens
// tokens; afterwards argmax()[b] is slot b's next token.
template <Element T, Device D>
void prefill_all(nn::Decoder<T, D>& decoder, const std::vector<std::vector<int32_t>>& prompts) {
  const int64_t batch = int64_t(prompts.size()), length = int64_t(prompts[0].size());
  const int64_t per_row = std::max<int64_t>(1, decoder.max_tokens() / batch);
  std::vector<nn::StepRow> rows(static_cast<size_t>(batch));
  for (int64_t first = 0; first < length; first += per_row) {
    const int64_t n = std::min(per_row, length - first);
    const auto logits = first + n == length ? nn::RowLogits::last : nn::RowLogits::none;
    for (int64_t b = 0; b < batch; ++b)
      rows[size_t(b)] = {int32_t(b), std::span(prompts[size_t(b)]).subspan(size_t(first), size_t(n)), -1, logits};
    decoder.step(rows);
  }
}

template <Element T, Device D>
void reset_all(nn::Decoder<T, D>& decoder) {
  for (int64_t b = 0; b < decoder.options().slots; ++b) decoder.reset(b);
}

template <Element T, Device D>
Run time_prompt(nn::Decoder<T, D>& decoder, const Test& t, int32_t vocab) {
  const auto prompts = random_prompts(t.batch, t.n_prompt, vocab);
  reset_all(decoder);
  const auto start = Clock::now();
  prefill_all(decoder, prompts);
  return {double(t.batch * t.n_prompt) / seconds_since(start)};
}

// N greedy decode steps over every slot at once, after an untimed prefill of `prompts`.
template <Element T, Device D>
Run time_decode_steps(nn::Decoder<T, D>& decoder, const Test& t, const std::vector<std::vector<int32_t>>& prompts) {
  reset_all(decoder);
  prefill_all(decoder, prompts);
  std::vector<int32_t> slots(static_cast<size_t>(t.batch));
  std::iota(slots.begin(), slots.end(), 0);
  std::vector<int32_t> next(decoder.argmax().begin(), decoder.argmax().end());
  const auto start = Clock::now();
  for (int64_t i = 0; i < t.n_gen; ++i) {
    decoder.decode(slots, next);
    next.assign(decoder.argmax().begin(), decoder.argmax().end());
  }
  return {double(t.batch * t.n_gen) / seconds_since(start)};
}

template <Element T, Device D>
Run time_generation(nn::Decoder<T, D>& decoder, const Test& t, int32_t vocab) {
  return time_decode_steps(decoder, t, random_prompts(t.batch, t.n_prompt, vocab));
}

// Greedy generation after the chat prompt in each of the test's sequences: plain decode steps,
// or speculative, timed by the library after the prompts' prefill (as mil-chat reports it). A
// model draft needs a decoder per sequence; it reads the prompt before the timed part too. The
// speculative rows pay for detokenising and stop checks, which the plain decode steps skip.
template <Element T, Device D>
Run time_chat_generation(nn::Decoder<T, D>& target, std::span<const std::unique_ptr<nn::Decoder<T, D>>> draft_decoders,
                         const text::Tokenizer& tok, std::span<const int32_t> prompt, const Test& t) {
  if (t.drafting == Drafting::none)
    return time_decode_steps(target, t, std::vector<std::vector<int32_t>>(size_t(t.batch), {prompt.begin(), prompt.end()}));
  gen::GenerateConfig g;
  g.max_new_tokens = t.n_gen;  // no stop tokens: every run generates exactly n_gen tokens
  g.sampling.temperature = 0;
  reset_all(target);
  gen::PromptLookupDraft lookup(3, 2);  // mil-chat's --lookup; it keeps no state, so all share it
  std::vector<std::unique_ptr<gen::DecoderDraft<T, D>>> models;  // fresh each run: empty caches
  std::vector<gen::SpeculativeRequest> requests;
  for (int64_t b = 0; b < t.batch; ++b) {
    gen::Draft* draft = &lookup;
    if (t.drafting == Drafting::model) {
      draft = models.emplace_back(std::make_unique<gen::DecoderDraft<T, D>>(*draft_decoders[size_t(b)])).get();
      draft->propose(prompt, 1);  // the prompt's prefill, kept for the timed calls
    }
    requests.push_back({b, draft, {}, prompt, g, {}});
  }
  std::vector<gen::SpeculativeStats> stats;
  const auto results = gen::speculative_generate_batch(target, std::span(requests), tok, {.draft_max = t.draft_max}, &stats);
  // Per sequence (tokens per step stays a per-sequence figure at any batch); the first token of
  // each comes from its prompt's logits before the timed part, as in the plain rows, whose N
  // timed decode steps give the N tokens after it.
  SpeculationCounts sum;
  for (const auto& st : stats) sum.add(st);
  return {double(sum.tokens) / results[0].generate_seconds, sum};
}

// One untimed run (it fills caches, captures the CUDA graphs and sizes the allocator's pools),
// then `repetitions` timed ones.
Result measure(const Test& t, int64_t repetitions, const std::function<Run()>& run_once) {
  std::fprintf(stderr, "[mil-bench] %s, batch %lld: warm-up + %lld runs\n", t.name().c_str(),
               static_cast<long long>(t.batch), static_cast<long long>(repetitions));
  run_once();
  Result r{t};
  for (int64_t i = 0; i < repetitions; ++i) {
    const Run run = run_once();
    r.samples.push_back(run.tokens_per_second);
    if (!run.speculation) continue;
    if (!r.speculation) r.speculation.emplace();
    r.speculation->add(*run.speculation);
  }
  return r;
}

ojson record(const RunContext& run, const ModelInfo& m, const Result& r, const Options& o) {
  const Test& t = r.test;
  ojson j;
  j["build"] = run.build;
  j["time"] = run.time_utc;
  j["cpu"] = run.cpu;
  j["gpu"] = run.gpu;
  j["backend"] = run.backend;
  j["dtype"] = run.dtype;
  j["threads"] = run.threads;
  j["model_path"] = m.path;
  j["model_name"] = m.name;
  j["model_bytes"] = m.bytes;
  j["model_params"] = m.params;
  j["layers"] = m.layers;
  j["attention_layers"] = m.attention_layers;
  j["mamba_layers"] = m.mamba_layers;
  j["mixer"] = m.mixer;
  j["layout"] = m.layout;
  j["weights"] = m.weights;
  j["test"] = t.name();
  j["n_prompt"] = t.n_prompt;
  j["n_gen"] = t.n_gen;
  j["batch"] = t.batch;
  j["prompt"] = t.chat ? "chat" : "random";
  j["draft"] = to_string(t.drafting);
  j["draft_model"] = t.drafting == Drafting::model ? o.draft_model : "";
  j["draft_max"] = t.draft_max;
  j["repetitions"] = r.samples.size();
  j["tokens_per_second"] = r.mean();
  j["tokens_per_second_sd"] = r.stddev();
  j["samples"] = r.samples;
  const auto& s = r.speculation;
  j["drafted"] = s ? ojson(s->drafted) : ojson();
  j["accepted"] = s ? ojson(s->accepted) : ojson();
  j["acceptance"] = s ? ojson(s->acceptance()) : ojson();
  j["target_steps"] = s ? ojson(s->target_steps) : ojson();
  j["tokens_per_step"] = s ? ojson(s->tokens_per_step()) : ojson();
  return j;
}

std::string format(const char* fmt, double a, double b = 0) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a, b);
  return buf;
}

std::string csv_field(const ojson& v) {
  if (v.is_null()) return "";
  if (v.is_number()) return v.dump();
  std::string text;
  if (v.is_array()) {  // samples: one field, values separated by ';'
    for (const auto& x : v) text += (text.empty() ? "" : ";") + x.dump();
  } else {
    text = v.get<std::string>();
  }
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// Writes each result as it comes: a Markdown table like llama-bench's, or one record per test.
// A run that stops on an error still leaves valid output: the destructor closes a JSON array.
class Report {
 public:
  explicit Report(std::string format) : format_(std::move(format)) {}
  Report(const Report&) = delete;
  Report& operator=(const Report&) = delete;
  ~Report() { finish(); }

  void add(const ojson& rec) {
    if (format_ == "md") {
      if (rows_ == 0) md_header();
      md_row(rec);
      chat_rows_ = chat_rows_ || rec["prompt"] == "chat";
    } else if (format_ == "csv") {
      if (rows_ == 0) csv_line(rec, true);
      csv_line(rec, false);
    } else if (format_ == "json") {
      std::printf("%s%s", rows_ ? ",\n" : "[\n", rec.dump(2).c_str());
    } else {
      std::printf("%s\n", rec.dump().c_str());
    }
    ++rows_;
    std::fflush(stdout);
  }

  void finish() {
    if (std::exchange(finished_, true)) return;
    if (format_ == "json") std::printf(rows_ ? "\n]\n" : "[]\n");
    if (format_ == "md" && chat_rows_)
      std::printf("\ntgN chat: plain generation after the chat prompt, the baseline of the "
                  "speculative rows after the same prompt; accept: accepted / drafted tokens; "
                  "tok/step: tokens per target step.\n");
  }

 private:
  struct Column {
    const char* title;
    int width;
    bool right;
  };
  static constexpr Column kColumns[] = {
      {"model", 32, false}, {"size", 10, true},     {"params", 9, true},  {"mixers", 20, false},
      {"backend", 10, false}, {"threads", 7, true},  {"test", 18, false},  {"batch", 5, true},
      {"t/s", 20, true},     {"accept", 6, true},   {"tok/step", 8, true}};

  void md_line(const std::vector<std::string>& cells) {
    std::string line;
    for (size_t i = 0; i < cells.size(); ++i) {
      // Padded by characters, not bytes: "±" is two bytes of UTF-8.
      const auto chars = std::count_if(cells[i].begin(), cells[i].end(),
                                       [](char ch) { return (static_cast<unsigned char>(ch) & 0xC0) != 0x80; });
      const std::string pad(size_t(std::max<int64_t>(0, kColumns[i].width - chars)), ' ');
      line += "| " + (kColumns[i].right ? pad + cells[i] : cells[i] + pad) + " ";
    }
    std::printf("%s|\n", line.c_str());
  }
  void md_header() {
    std::vector<std::string> titles, rules;
    for (const Column& c : kColumns) {
      titles.push_back(c.title);
      rules.push_back(std::string(size_t(c.width - (c.right ? 1 : 0)), '-') + (c.right ? ":" : ""));
    }
    md_line(titles);
    md_line(rules);
  }
  void md_row(const ojson& r) {
    const double bytes = r["model_bytes"].get<double>(), params = r["model_params"].get<double>();
    const bool speculative = !r["acceptance"].is_null();
    md_line({r["model_name"].get<std::string>(),
             bytes >= 1 << 30 ? format("%.2f GiB", bytes / (1 << 30)) : format("%.2f MiB", bytes / (1 << 20)),
             params >= 1e9 ? format("%.2f B", params / 1e9) : format("%.2f M", params / 1e6),
             r["layout"].get<std::string>(),
             (r["backend"] == "cuda" ? "CUDA " : "CPU ") + r["weights"].get<std::string>(),
             std::to_string(r["threads"].get<int>()), r["test"].get<std::string>(),
             std::to_string(r["batch"].get<int64_t>()),
             format("%.2f ± %.2f", r["tokens_per_second"].get<double>(),
                    r["tokens_per_second_sd"].get<double>()),
             speculative ? format("%.3f", r["acceptance"].get<double>()) : "-",
             speculative ? format("%.2f", r["tokens_per_step"].get<double>()) : "-"});
  }
  void csv_line(const ojson& rec, bool header) {
    std::string line;
    for (const auto& [key, value] : rec.items())
      line += (line.empty() ? "" : ",") + (header ? key : csv_field(value));
    std::printf("%s\n", line.c_str());
  }

  std::string format_;
  int64_t rows_ = 0;
  bool chat_rows_ = false;
  bool finished_ = false;
};

// The model itself when it is already what the device runs (float on the CPU), else a copy there.
template <Element T, Device D>
const nn::HybridModel<T, D>& on_device(const nn::HybridModel<float, Cpu>& m,
                                       std::optional<nn::HybridModel<T, D>>& copy) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<D, Cpu>)
    return m;
  else
    return copy.emplace(nn::convert_model<T, D>(m));
}

int64_t longest_sequence(const std::vector<Test>& tests, bool chat, int64_t batch) {
  int64_t longest = 1;
  for (const Test& t : tests)
    if (t.chat == chat && (chat || t.batch == batch)) longest = std::max(longest, t.n_prompt + t.n_gen);
  return longest;
}

// Runs one model's tests: each batch size on a decoder of its own holding that many sequences,
// then the chat-prompt tests, again per batch size, on decoders sized for the longest
// speculation.
template <Element T, Device D>
void bench_model(const Options& o, const nn::HybridModel<T, D>& model,
                 const nn::HybridModel<T, D>* draft_model, const text::Tokenizer& tok,
                 std::span<const int32_t> chat_prompt, const std::vector<Test>& tests,
                 const std::function<void(const Result&)>& report) {
  // Random ids the tokenizer and the model both know (an embedding may be padded beyond the
  // tokenizer's vocabulary, or the other way round).
  const int32_t vocab = int32_t(std::min<int64_t>(tok.vocab_size(), model.config().llama.vocab));
  std::optional<nn::Decoder<T, D>> decoder;
  for (const Test& t : tests) {
    if (t.chat) continue;
    if (!decoder || decoder->options().slots != t.batch) {
      decoder.reset();  // one decoder's caches at a time
      decoder.emplace(model, nn::DecoderOptions{.slots = t.batch,
                                                .max_seq = longest_sequence(tests, false, t.batch),
                                                .q8_activations = o.q8_activations});
    }
    report(measure(t, o.repetitions, [&] {
      return t.n_gen > 0 ? time_generation(*decoder, t, vocab) : time_prompt(*decoder, t, vocab);
    }));
  }
  decoder.reset();

  int64_t k_max = 0;
  for (const Test& t : tests) k_max = std::max(k_max, t.draft_max);
  const int64_t max_seq = longest_sequence(tests, true, 0);
  std::optional<nn::Decoder<T, D>> target;
  std::vector<std::unique_ptr<nn::Decoder<T, D>>> draft_decoders;
  for (const Test& t : tests) {
    if (!t.chat) continue;
    if (!target || target->options().slots != t.batch) {
      // K + 1 tokens and logits rows per sequence to verify K drafts; a snapshot to go back to
      // after a rejection (Mamba layers).
      target.reset();
      const int64_t rows = t.batch * (k_max + 1);
      target.emplace(model, nn::DecoderOptions{.slots = t.batch, .max_seq = max_seq,
                                               .max_tokens = std::max<int64_t>(512, rows),
                                               .max_logits = rows, .snapshots = 1,
                                               .q8_activations = o.q8_activations});
      draft_decoders.clear();
      for (int64_t b = 0; draft_model && b < t.batch; ++b)
        draft_decoders.push_back(std::make_unique<nn::Decoder<T, D>>(*draft_model, nn::DecoderOptions{.max_seq = max_seq + k_max}));
    }
    report(measure(t, o.repetitions, [&] {
      return time_chat_generation(*target, std::span<const std::unique_ptr<nn::Decoder<T, D>>>(draft_decoders), tok,
                                  chat_prompt, t);
    }));
  }
}

// Each model in turn, as element type T on device D.
template <Element T, Device D>
void bench_models(const Options& o, const RunContext& run, const std::optional<nn::LoadedModel>& draft) {
  std::optional<nn::HybridModel<T, D>> draft_copy;
  const nn::HybridModel<T, D>* draft_model = draft ? &on_device<T, D>(draft->model, draft_copy) : nullptr;
  Report report(o.output);
  for (const std::string& path : o.models) {
    std::fprintf(stderr, "[mil-bench] model: %s\n", path.c_str());
    auto loaded = examples::load_for_decoding(path, !std::is_same_v<D, Cpu>, o.float_weights);
    if (draft)
      gen::check_draft_tokenizer(loaded.tokenizer, loaded.model.config().llama.vocab,
                                 draft->tokenizer, draft->model.config().llama.vocab, o.draft_model);
    ModelInfo info = describe(path, loaded);
    const bool blocks = std::is_same_v<T, float> && std::is_same_v<D, Cpu> && loaded.model.block_weights();
    MIL_CHECK(!o.q8_activations || (blocks && loaded.model.block_weights()->has_q8_parts()),
              "--q8-activations: '", path, "' has no quantised blocks "
              "(a GGUF file's Q8_0, Q4_0, Q4_1, Q4_K or Q6_K layers, on the CPU)");
    info.weights = blocks ? (o.q8_activations ? "blocks, q8 activations" : "blocks")
                          : std::string(dtype_name(dtype_of<T>::value));
    const auto chat_prompt = o.speculate() ? chat_prompt_ids(loaded, o.prompt) : std::vector<int32_t>();
    const auto tests = plan_tests(o, int64_t(chat_prompt.size()));
    check_context(tests, info);
    std::optional<nn::HybridModel<T, D>> model_copy;
    const auto& model = on_device<T, D>(loaded.model, model_copy);
    bench_model(o, model, draft_model, loaded.tokenizer, chat_prompt, tests,
                [&](const Result& r) { report.add(record(run, info, r, o)); });
  }
  report.finish();
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"mil-bench: prompt and generation speed of models, as llama.cpp's llama-bench"};
  const auto counts = CLI::Range(int64_t(0), int64_t(1) << 20);
  app.add_option("-m,--model", o.models, "GGUF file, Hugging Face folder or hybrid folder (list)")
      ->required()
      ->delimiter(',');
  app.add_option("-p,--n-prompt", o.n_prompt, "ppN tests: prompt lengths (list; 0 skips)")
      ->delimiter(',')
      ->check(counts)
      ->capture_default_str();
  app.add_option("-n,--n-gen", o.n_gen, "tgN tests: tokens generated (list; 0 skips)")
      ->delimiter(',')
      ->check(counts)
      ->capture_default_str();
  app.add_option("-b,--batch", o.batch, "sequences at once (list)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t(1), int64_t(1) << 16))
      ->capture_default_str();
  app.add_option("-r,--repetitions", o.repetitions, "timed runs per test, after one warm-up run")
      ->check(CLI::Range(int64_t(1), int64_t(1000)))
      ->capture_default_str();
  app.add_option("-o,--output", o.output, "md, csv, json or jsonl")
      ->check(CLI::IsMember({"md", "csv", "json", "jsonl"}))
      ->capture_default_str();
  app.add_option("--model-draft", o.draft_model,
                 "speculative tests with this draft model (same tokenizer); also -md");
  app.add_flag("--lookup", o.lookup, "speculative tests with prompt-lookup drafts");
  app.add_flag("--float-weights", o.float_weights,
               "CPU: products on float copies of a GGUF file's quantised weights instead of on "
               "their blocks");
  app.add_flag("--q8-activations", o.q8_activations,
               "CPU: the block products take the activations quantised to 8 bits");
  app.add_option("--draft-max", o.draft_max, "tokens drafted per target step at most (list)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t(1), int64_t(64)))
      ->capture_default_str();
  app.add_option("--prompt", o.prompt, "chat prompt of the speculative tests and their baseline");
  app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)")
      ->check(CLI::Range(1, 1 << 12));
  app.add_option("--device", o.device, "cpu, cuda or auto")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  if (const int code = examples::parse_command_line(app, argc, argv); code >= 0) return code;

  try {
    const auto positive = [](int64_t n) { return n > 0; };
    MIL_CHECK(std::any_of(o.n_prompt.begin(), o.n_prompt.end(), positive) ||
                  std::any_of(o.n_gen.begin(), o.n_gen.end(), positive),
              "nothing to measure: every -p and -n length is 0");
    MIL_CHECK(!o.speculate() || std::none_of(o.n_gen.begin(), o.n_gen.end(), [](int64_t n) { return n == 1; }),
              "-n 1 with speculation: its only token comes from the prompt, with no step to time (use -n 2 or more)");
    if (o.threads > 0) cpu::set_threads(o.threads);
    RunContext run{.build = std::to_string(MIL_VERSION_MAJOR) + "." + std::to_string(MIL_VERSION_MINOR) +
                            "." + std::to_string(MIL_VERSION_PATCH),
                   .time_utc = utc_now(), .cpu = cpu_model_name(), .threads = cpu::threads()};
    std::optional<nn::LoadedModel> draft;
    if (!o.draft_model.empty()) {
      draft = examples::load_for_decoding(o.draft_model, examples::runs_on_gpu(o.device), o.float_weights);
      std::fprintf(stderr, "[mil-bench] draft: %s, %lld layers\n", draft->name.c_str(),
                   static_cast<long long>(draft->model.config().llama.n_layers));
    }
#if MIL_CUDA_ENABLED && defined(__CUDACC__)
    if (examples::runs_on_gpu(o.device)) {
      MIL_CHECK(mil::cuda::device_count() > 0, "--device cuda: no CUDA device found");
      run.backend = "cuda", run.dtype = "bf16", run.gpu = gpu_name();
      std::fprintf(stderr, "[mil-bench] device: CUDA (bf16), %s\n", run.gpu.c_str());
      bench_models<bf16, Cuda>(o, run, draft);
      return 0;
    }
#else
    MIL_CHECK(o.device != "cuda", "--device cuda: this mil-bench was built without CUDA");
#endif
    std::fprintf(stderr, "[mil-bench] device: CPU (float), %d threads\n", cpu::threads());
    bench_models<float, Cpu>(o, run, draft);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-bench: error: %s\n", e.what());
    return 1;
  }
}
