#pragma once
// What the example programs share on their command lines.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include <mil/core/cuda_check.hpp>
#include <mil/nn/model_load.hpp>

namespace mil::examples {

// Parses the command line, taking llama.cpp's spelling "-md" of --model-draft too (CLI11 declares
// no two-letter short names). Returns -1 to go on, else the exit code (--help, a parse error).
inline int parse_command_line(CLI::App& app, int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (auto& a : args)
    if (a == "-md") a = "--model-draft";
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments last first
  app.name(argv[0]);
  try {
    app.parse(std::move(args));
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return -1;
}

// Whether a program runs on the GPU for --device cpu|cuda|auto: a CUDA build's programs compiled by
// nvcc with a device present (auto) or asked for (cuda; a missing device is then the caller's
// clear error). Known before loading, so a CPU run can load its model for CPU inference only.
inline bool runs_on_gpu(const std::string& device) {
#if MIL_CUDA_ENABLED && defined(__CUDACC__)
  return device == "cuda" || (device == "auto" && mil::cuda::device_count() > 0);
#else
  return false;
#endif
}

// How a program's model is loaded: for CPU inference only (a GGUF file's quantised matrices in
// block format alone, about the file's size in memory) unless it runs on the GPU or was asked for
// the float products (--float-weights).
inline nn::LoadedModel load_for_decoding(const std::string& path, bool gpu, bool float_weights) {
  return nn::load_model(path, gpu || float_weights ? nn::LoadFor::float_only : nn::LoadFor::cpu_inference);
}

}  // namespace mil::examples
