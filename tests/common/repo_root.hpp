#pragma once
// The repository's root (golden files, fixtures, models/): the source folder CMake names, or the
// one this file sits in.
#include <filesystem>

namespace mil::test {

inline std::filesystem::path repo_root() {
#ifdef MIL_SOURCE_DIR
  return std::filesystem::path(MIL_SOURCE_DIR);
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
#endif
}

}  // namespace mil::test
