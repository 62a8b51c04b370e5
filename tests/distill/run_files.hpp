#pragma once
// Files of a training run, for the trainer tests: fresh folders, whole files, and metrics.jsonl
// without the timings (which differ from run to run).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <mil/distill/metrics_log.hpp>

namespace mil::test {

inline std::filesystem::path fresh_run_dir(const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("mil_test_trainer_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(d);
  return d;
}

inline std::string file_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline std::vector<nlohmann::json> metrics_without_timings(const std::filesystem::path& dir) {
  auto rows = distill::read_metrics(dir / "metrics.jsonl");
  for (auto& r : rows) r.erase("tokens_per_s");
  return rows;
}

}  // namespace mil::test
