#pragma once
// The real teacher (SmolLM2-135M-Instruct, Q4_1 GGUF from models/, made by scripts/setup.sh),
// loaded once per test process and shared by the cases that need it. Without the file the cases
// report skipped (the message below is what ctest's skip pattern looks for). Long real-model runs
// are too slow under the sanitizers: skip_real_model_run() and real_teacher_for_training() skip
// there.
#include <cstdio>
#include <filesystem>
#include <optional>

#include <mil/nn/llama_gguf.hpp>
#include <mil/text/gguf_tokenizer.hpp>

#include "sanitized.hpp"

#include "repo_root.hpp"

namespace mil::test {

inline std::filesystem::path teacher_path() {
  return repo_root() / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

struct RealTeacher {
  nn::HybridModel<float, Cpu> model;
  text::Tokenizer tokenizer;
};

// The teacher, or nullptr (and the skip message) when the file is absent.
inline const RealTeacher* real_teacher() {
  static const std::optional<RealTeacher> t = []() -> std::optional<RealTeacher> {
    if (!std::filesystem::exists(teacher_path())) return std::nullopt;
    const auto f = io::GgufFile::open(teacher_path().string());
    return RealTeacher{nn::load_gguf_model(f), text::Tokenizer(text::tokenizer_data_from_gguf(f))};
  }();
  if (!t)
    std::printf("[mil] teacher model not found: test skipped (%s; run scripts/setup.sh)\n",
                teacher_path().string().c_str());
  return t ? &*t : nullptr;
}


// Whether a long run of the real model (training, hundreds of decode steps) is skipped here:
// under the sanitizers it takes minutes and reaches no code the small-model cases do not; the
// Release build runs it. Prints the message ctest reads as "skipped".
inline bool skip_real_model_run() {
  if (kSanitizedBuild)
    std::printf("[mil] real-model test skipped under the sanitizers (it runs in the Release build)\n");
  return kSanitizedBuild;
}

// The teacher for a long run on real weights (skip_real_model_run), or nullptr (skipped).
inline const RealTeacher* real_teacher_for_training() {
  return skip_real_model_run() ? nullptr : real_teacher();
}

}  // namespace mil::test
