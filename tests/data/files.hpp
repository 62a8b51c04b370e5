#pragma once
// Files for the dataset tests: a fresh scratch folder per test and process, whole-file reads and
// writes, and an error-text check that shows the text when it fails.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>

namespace mil::test {

// A path in the temporary folder, unique to `name` and this process, with nothing there yet.
inline std::filesystem::path scratch_path(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() /
           ("mil_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  return d;
}

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

// Every file of folder `a` is in `b` with the same bytes, and `b` has no other.
inline void require_same_files(const std::filesystem::path& a, const std::filesystem::path& b) {
  int64_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(a)) {
    CAPTURE(e.path().filename().string());
    REQUIRE(read_bytes(e.path()) == read_bytes(b / e.path().filename()));
    ++files;
  }
  REQUIRE(std::distance(std::filesystem::directory_iterator(b), std::filesystem::directory_iterator{}) ==
          files);
}

inline bool contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return true;
  MESSAGE("the text was: ", text);
  return false;
}

}  // namespace mil::test
