#pragma once
// Helpers of the fuzz targets: require() (a property that must hold: abort, which libFuzzer and
// the replay report as a crash) and ScratchFolder (for targets whose input is one file among
// others, such as an index next to its shards: one folder per process, removed at exit; each run
// rewrites the files it needs).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <unistd.h>

namespace mil::fuzz {

inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: property violated: %s\n", what);
    std::abort();
  }
}

class ScratchFolder {
 public:
  explicit ScratchFolder(const std::string& tag)
      : dir_(std::filesystem::temp_directory_path() /
             ("mil_fuzz_" + tag + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~ScratchFolder() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  ScratchFolder(const ScratchFolder&) = delete;
  ScratchFolder& operator=(const ScratchFolder&) = delete;

  const std::filesystem::path& path() const { return dir_; }
  void write(const std::string& name, std::string_view bytes) const {
    std::ofstream out(dir_ / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "fuzz: cannot write '%s'\n", (dir_ / name).c_str());
      std::abort();
    }
  }

 private:
  std::filesystem::path dir_;
};

}  // namespace mil::fuzz
