// eval/sequences_json.hpp: labelled sequences from JSON, and the refusal of malformed entries.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <mil/eval/sequences_json.hpp>

#include "common/error_of.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {

fs::path write_temp(const std::string& text) {
  const auto p = fs::temp_directory_path() / ("mil_sequences_" + std::to_string(::getpid()) + ".json");
  std::ofstream(p) << text;
  return p;
}

std::string error_reading(const std::string& text) {
  const auto p = write_temp(text);
  const auto e = test::error_of([&] { eval::read_sequences_json(p); });
  fs::remove(p);
  return e;
}

}  // namespace

TEST_CASE("read_sequences_json: tokens and prompt lengths") {
  const auto p = write_temp(R"([{"tokens": [5, 6, 7, 8], "prompt_len": 2}, {"tokens": [1], "prompt_len": 0}])");
  const auto seqs = eval::read_sequences_json(p);
  fs::remove(p);
  REQUIRE(seqs.size() == 2);
  CHECK(seqs[0].tokens == std::vector<int32_t>{5, 6, 7, 8});
  CHECK(seqs[0].prompt_len == 2);
  CHECK(seqs[0].answer_len() == 2);
  CHECK(seqs[1].tokens == std::vector<int32_t>{1});
  CHECK(seqs[1].prompt_len == 0);
}

TEST_CASE("read_sequences_json: malformed entries are refused with their index") {
  CHECK(error_reading(R"({"tokens": [1]})").find("expected an array") != std::string::npos);
  CHECK(error_reading(R"([{"tokens": [1, 2]}])").find("entry 0 is not") != std::string::npos);
  CHECK(error_reading(R"([{"tokens": [1], "prompt_len": 0}, {"tokens": [1, -3], "prompt_len": 0}])")
            .find("entry 1 has a token that is not an id: -3") != std::string::npos);
  CHECK(error_reading(R"([{"tokens": [1, 2.5], "prompt_len": 0}])").find("not an id") != std::string::npos);
  CHECK(error_reading(R"([{"tokens": [1, 2], "prompt_len": 3}])")
            .find("entry 0 has prompt_len 3 for 2 tokens") != std::string::npos);
  CHECK(error_reading(R"([{"tokens": [1, 2], "prompt_len": -1}])").find("prompt_len -1") !=
        std::string::npos);
}
