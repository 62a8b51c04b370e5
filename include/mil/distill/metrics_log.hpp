#pragma once
// Per-step training metrics: one JSON object per line in metrics.jsonl (appended and flushed each
// step, so a killed run keeps what it did), cut back to the checkpoint's step when a run resumes,
// and drawn as SVG curves. The same log keeps held-out evaluations made during training.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../io/json.hpp"
#include "../io/safetensors_writer.hpp"
#include "../util/svg_plot.hpp"

namespace mil::distill {

struct StepMetrics {
  int64_t step = 0;               // 0-based index of this optimizer step
  double loss = 0, ce = 0, kl = 0;
  float lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0, answer_tokens = 0;  // in this step (inputs, padding not counted; answer positions)
  int64_t tokens_seen = 0;        // since the run began
  double seconds = 0, tokens_per_s = 0;
  bool skipped = false;           // non-finite loss or gradient: no update
  int64_t skipped_total = 0;
  // Stage 3 (written when `dpo`): means over the step's pairs of the rewards beta (logp - ref)
  // of both answers, their difference and the share of pairs whose chosen answer gets the larger
  // reward; kl_ref is the mean over answer tokens of (policy logp - reference logp), an estimate
  // of how far the policy has moved from the reference. ce is then the chosen answers' NLL per
  // token, and kl (a teacher's distribution) is null.
  bool dpo = false;
  double chosen_reward = 0, rejected_reward = 0, reward_margin = 0, accuracy = 0, kl_ref = 0;

  nlohmann::json to_json() const {
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json j = {{"step", step},         {"loss", num(loss)},   {"ce", num(ce)},
            {"kl", num(kl)},        {"lr", lr},            {"grad_norm", num(grad_norm)},
            {"tokens", tokens},     {"answer_tokens", answer_tokens},
            {"tokens_seen", tokens_seen},                  {"tokens_per_s", tokens_per_s},
            {"skipped", skipped},   {"skipped_total", skipped_total}};
    if (dpo) {
      j["stage"] = "dpo";
      j["reward_margin"] = num(reward_margin);
      j["accuracy"] = num(accuracy);
      j["kl_ref"] = num(kl_ref);
      j["chosen_reward"] = num(chosen_reward);
      j["rejected_reward"] = num(rejected_reward);
    }
    return j;
  }
};

class MetricsLog {
 public:
  ~MetricsLog() {
    if (f_) std::fclose(f_);
  }
  bool is_open() const { return f_ != nullptr; }

  // Opens `path` for appending, first keeping only the lines of steps < `keep_steps` (a resumed
  // run rewrites what came after its checkpoint; a fresh run, keep_steps 0, starts empty).
  void open(const std::filesystem::path& path, int64_t keep_steps) {
    if (f_) std::fclose(f_);
    std::filesystem::create_directories(path.parent_path());
    std::string kept;
    if (keep_steps > 0) {
      std::ifstream in(path);
      for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        const auto j = io::parse_json_strict(line, path.string());
        if (j.value("step", int64_t(-1)) < keep_steps) kept += line + "\n";
      }
    }
    io::write_text_file_atomic(path, kept);
    f_ = std::fopen(path.c_str(), "a");
    MIL_CHECK(f_, "cannot open '", path.string(), "' for appending");
    path_ = path;
  }

  void append(const StepMetrics& m) { append(m.to_json()); }
  // One line of any record that carries a "step" (held-out evaluations during training).
  void append(const nlohmann::json& record) {
    const std::string line = record.dump() + "\n";
    MIL_CHECK(std::fputs(line.c_str(), f_) >= 0 && std::fflush(f_) == 0, "cannot write '",
              path_.string(), "'");
  }

 private:
  std::FILE* f_ = nullptr;
  std::filesystem::path path_;
};

// The metrics of a run, read back (for plots and reports).
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  MIL_CHECK(in.good(), "cannot read '", path.string(), "'");
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    out.push_back(io::parse_json_strict(line, path.string() + ":" + std::to_string(line_no)));
  }
  return out;
}

// Curves of `fields` (e.g. "loss", "kl") against the step, as one SVG.
inline void plot_metrics(const std::filesystem::path& metrics, const std::filesystem::path& svg,
                         const std::string& title, const std::vector<std::string>& fields) {
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};
  std::vector<util::Series> series;
  const auto rows = read_metrics(metrics);
  for (size_t i = 0; i < fields.size(); ++i) {
    util::Series s{fields[i], {}, colors[i % 4]};
    for (const auto& r : rows)
      s.y.push_back(r.contains(fields[i]) && r[fields[i]].is_number() ? r[fields[i]].get<double>() : NAN);
    series.push_back(std::move(s));
  }
  util::write_svg_plot(svg.string(), title, "optimizer step", "nats per answer token", series);
}

}  // namespace mil::distill
