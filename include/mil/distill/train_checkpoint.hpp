#pragma once
// Training checkpoints that lose nothing: the student's own parameters, the optimizer's moments
// (and fp32 masters of a bf16 store), the step, the data position and the run's settings, so that
// a resumed run continues exactly where the saved one was (bitwise on the CPU at the same thread
// count, which the checkpoint records).
//
// Layout: <root>/step-00000042/{state.safetensors, trainer.json, COMPLETE}. A checkpoint is
// written into a fresh temporary folder beside it, COMPLETE last, and renamed into place: a kill at
// any moment leaves either the previous checkpoints or the new one, never half of one. Folders
// without COMPLETE (or that fail to parse) are skipped when resuming, with a message.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "../core/threads.hpp"
#include "../io/json.hpp"
#include "../io/safetensors.hpp"
#include "../io/safetensors_writer.hpp"
#include "../optim/adamw.hpp"

namespace mil::distill {

namespace fs = std::filesystem;
using io::SafetensorsDtype;

// Everything but tensors that a resumed run needs.
struct TrainState {
  int64_t step = 0;                // optimizer steps done (skipped ones included)
  int64_t epoch = 0, cursor = 0;   // data position: the next sequence is order(epoch)[cursor]
  int64_t tokens_seen = 0, answer_tokens_seen = 0;
  int64_t skipped_steps = 0;       // non-finite loss or gradient: no update
  int threads = 1;                 // CPU threads of the run (bitwise resume needs the same)
  nlohmann::json settings;         // what defines the run; a resume must match it

  nlohmann::json to_json() const {
    return {{"format", "mil-train-state"}, {"version", 1},      {"step", step},
            {"epoch", epoch},               {"cursor", cursor}, {"tokens_seen", tokens_seen},
            {"answer_tokens_seen", answer_tokens_seen},         {"skipped_steps", skipped_steps},
            {"threads", threads},           {"settings", settings}};
  }
  static TrainState from_json(const nlohmann::json& j, const std::string& what) {
    MIL_CHECK(j.is_object() && j.value("format", "") == "mil-train-state" && j.value("version", 0) == 1,
              what, ": not a mil training state (format mil-train-state, version 1)");
    auto num = [&](const char* k) {
      MIL_CHECK(j.contains(k) && j[k].is_number_integer() && j[k].get<int64_t>() >= 0, what,
                ": field '", k, "' is missing or not a non-negative integer");
      return j[k].get<int64_t>();
    };
    TrainState s;
    s.step = num("step");
    s.epoch = num("epoch");
    s.cursor = num("cursor");
    s.tokens_seen = num("tokens_seen");
    s.answer_tokens_seen = num("answer_tokens_seen");
    s.skipped_steps = num("skipped_steps");
    s.threads = int(num("threads"));
    MIL_CHECK(s.threads >= 1, what, ": threads must be >= 1");
    MIL_CHECK(j.contains("settings") && j["settings"].is_object(), what, ": no settings object");
    s.settings = j["settings"];
    return s;
  }
};

// The first setting in which two runs differ, as "key: a vs b" ("" when they agree).
inline std::string first_difference(const nlohmann::json& a, const nlohmann::json& b,
                                    const std::string& prefix = "") {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      if (!b.contains(k)) return prefix + k + ": " + v.dump() + " vs (absent)";
      if (auto d = first_difference(v, b[k], prefix + k + "."); !d.empty()) return d;
    }
    for (const auto& [k, v] : b.items())
      if (!a.contains(k)) return prefix + k + ": (absent) vs " + v.dump();
    return "";
  }
  return a == b ? "" : prefix.substr(0, prefix.empty() ? 0 : prefix.size() - 1) + ": " + a.dump() +
                           " vs " + b.dump();
}

namespace ckpt_detail {

inline constexpr const char* kStateFile = "state.safetensors";
inline constexpr const char* kTrainerFile = "trainer.json";
inline constexpr const char* kCompleteFile = "COMPLETE";

inline std::string step_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%08lld", (long long)step);
  return b;
}
// The step of a folder named step-NNNNNNNN, or -1.
inline int64_t step_of(const fs::path& p) {
  const std::string n = p.filename().string();
  if (n.size() != 13 || n.rfind("step-", 0) != 0) return -1;
  int64_t s = 0;
  for (char c : n.substr(5)) {
    if (c < '0' || c > '9') return -1;
    s = s * 10 + (c - '0');
  }
  return s;
}

template <Element T>
constexpr SafetensorsDtype dtype_of() {
  if constexpr (std::is_same_v<T, float>) return SafetensorsDtype::F32;
  else if constexpr (std::is_same_v<T, bf16>) return SafetensorsDtype::BF16;
  else return SafetensorsDtype::F16;
}

template <class T>
std::span<const uint8_t> bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

inline void sync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Copies a stored tensor into dst after checking its name, dtype and size.
template <Element T, Device D>
void restore(Tensor<T, D>& dst, const io::SafetensorsFile& f, const std::string& name) {
  const io::SafetensorsTensor& t = f.tensor(name);
  MIL_CHECK(t.dtype == dtype_of<T>() && t.numel() == dst.numel(), t.source, ": tensor '", name,
            "' is ", io::safetensors_dtype_name(t.dtype), " ", t.shape_str(), ", expected ",
            io::safetensors_dtype_name(dtype_of<T>()), " of ", dst.numel(), " elements (a checkpoint ",
            "of another model or precision)");
  auto host = Tensor<T, Cpu>::empty(dst.shape());
  std::memcpy(host.data(), t.data.data(), t.data.size());
  dst.copy_from(host);
}

}  // namespace ckpt_detail

// Writes the checkpoint of `state` (its step names the folder) under `root`, keeping the newest
// `keep` checkpoints. Returns the folder.
template <Element T, Device D>
fs::path save_train_checkpoint(const fs::path& root, const TrainState& state,
                               nn::ParameterStore<T, D>& params, optim::AdamW<T, D>& opt,
                               int keep = 2) {
  using namespace ckpt_detail;
  fs::create_directories(root);
  const fs::path final_dir = root / step_name(state.step);
  std::string tmpl = (root / ("." + step_name(state.step) + ".tmp-XXXXXX")).string();
  MIL_CHECK(::mkdtemp(tmpl.data()) != nullptr, "cannot create a folder in '", root.string(), "'");
  const fs::path tmp = tmpl;
  try {
    const auto values = params.values().to_vector();
    const auto m = opt.first_moment().to_vector(), v = opt.second_moment().to_vector();
    std::vector<float> master;
    if (opt.master_weights().defined()) master = opt.master_weights().to_vector();
    const int64_t n = params.numel();
    std::vector<io::SafetensorsEntry> entries = {
        {"params", dtype_of<T>(), {n}, bytes_of(values)},
        {"adam_m", SafetensorsDtype::F32, {n}, bytes_of(m)},
        {"adam_v", SafetensorsDtype::F32, {n}, bytes_of(v)}};
    if (!master.empty()) entries.push_back({"master", SafetensorsDtype::F32, {n}, bytes_of(master)});
    io::write_safetensors(tmp / kStateFile, entries);
    io::write_text_file_atomic(tmp / kTrainerFile, state.to_json().dump(2) + "\n");
    io::write_text_file_atomic(tmp / kCompleteFile, "");
    sync_path(tmp);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);  // a re-run of the same step
    fs::rename(tmp, final_dir);
    sync_path(root);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  // Older checkpoints beyond `keep`, and temporary folders a kill left behind.
  std::vector<std::pair<int64_t, fs::path>> found;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".step-", 0) == 0 && e.path() != tmp) fs::remove_all(e.path());
    else if (int64_t s = step_of(e.path()); s >= 0) found.push_back({s, e.path()});
  }
  std::sort(found.rbegin(), found.rend());
  for (size_t i = size_t(std::max(keep, 1)); i < found.size(); ++i) fs::remove_all(found[i].second);
  return final_dir;
}

// The newest complete checkpoint under `root` (nullopt when there is none), restored into
// `params` and `opt`. Its settings must equal `settings` (else a clear error naming the first
// difference: a resume never continues another run).
template <Element T, Device D>
std::optional<TrainState> load_train_checkpoint(const fs::path& root, const nlohmann::json& settings,
                                                nn::ParameterStore<T, D>& params,
                                                optim::AdamW<T, D>& opt) {
  using namespace ckpt_detail;
  if (!fs::is_directory(root)) return std::nullopt;
  std::vector<std::pair<int64_t, fs::path>> found;
  for (const auto& e : fs::directory_iterator(root))
    if (int64_t s = step_of(e.path()); s >= 0) found.push_back({s, e.path()});
  std::sort(found.rbegin(), found.rend());
  for (const auto& [step, dir] : found) {
    if (!fs::exists(dir / kCompleteFile)) {
      std::fprintf(stderr, "[mil] skipping checkpoint '%s': no %s marker (cut short)\n",
                   dir.string().c_str(), kCompleteFile);
      continue;
    }
    TrainState state =
        TrainState::from_json(io::read_json_file_strict(dir / kTrainerFile),
                              (dir / kTrainerFile).string());
    MIL_CHECK(state.step == step, (dir / kTrainerFile).string(), ": step ", state.step,
              " does not match the folder's name");
    const std::string diff = first_difference(state.settings, settings);
    MIL_CHECK(diff.empty(), "the checkpoint '", dir.string(), "' belongs to a run with other ",
              "settings (", diff, "); use another output folder or the same settings");
    const auto f = io::SafetensorsFile::open((dir / kStateFile).string());
    restore(params.values(), f, "params");
    restore(opt.first_moment(), f, "adam_m");
    restore(opt.second_moment(), f, "adam_v");
    if (opt.master_weights().defined()) restore(opt.master_weights(), f, "master");
    params.zero_grad();
    return state;
  }
  return std::nullopt;
}

}  // namespace mil::distill
