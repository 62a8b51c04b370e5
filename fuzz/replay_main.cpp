// Runs a libFuzzer target without libFuzzer (any C++20 compiler, no clang): every file of the
// folders and files given on the command line, in sorted order, goes once through the target's
// LLVMFuzzerTestOneInput. ctest runs each target over its committed corpus this way, in the
// default build and under ASan + UBSan, so the corpora (and the crashes once found, kept there)
// are replayed on every test run.
//   usage: mil_replay_gguf fuzz/corpus/gguf [more folders or files]
// Each input lies in a buffer of exactly its size, so a read one byte past the end is an ASan
// error. The run fails when nothing was replayed (a missing or empty corpus must not pass).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

// The regular files under `path` (itself when it is a file), sorted for a reproducible order.
std::vector<fs::path> inputs_under(const fs::path& path) {
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::recursive_directory_iterator(path))
      if (e.is_regular_file()) files.push_back(e.path());
  } else if (fs::is_regular_file(path)) {
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<uint8_t> read_all(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + file.string() + "'");
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_FOLDER_OR_FILE...\n", argv[0]);
    return 2;
  }
  size_t replayed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int a = 1; a < argc; ++a) {
    const auto files = inputs_under(argv[a]);
    if (files.empty()) std::fprintf(stderr, "replay: no inputs in '%s'\n", argv[a]);
    for (const auto& file : files) {
      const std::vector<uint8_t> bytes = read_all(file);
      // An exactly sized heap copy (an empty input gets a 0-byte allocation, as libFuzzer's).
      std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes.size()]);
      std::copy(bytes.begin(), bytes.end(), copy.get());
      std::fprintf(stderr, "replay: %s (%zu bytes)\n", file.string().c_str(), bytes.size());
      LLVMFuzzerTestOneInput(copy.get(), bytes.size());
      ++replayed;
    }
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("replay: %zu inputs in %.0f ms\n", replayed, ms);
  return replayed > 0 ? 0 : 1;
}
