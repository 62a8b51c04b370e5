#pragma once
// What the example programs share on their command lines.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <string>
#include <vector>

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

}  // namespace mil::examples
