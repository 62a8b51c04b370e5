// SmolLM2's tokenizer, read from the teacher GGUF's metadata, against golden ids from Hugging Face
// `tokenizers` (made by scripts/make_tokenizer_golden.py). Without the teacher (models/, made by
// scripts/setup.sh) the tests report skipped.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mil/text/gguf_tokenizer.hpp"

using namespace mil::text;

namespace {

// MIL_SOURCE_DIR, not __FILE__: a compiler cache with a base directory makes __FILE__ relative
// to the build folder, and the teacher would then look absent (a silent skip).
std::filesystem::path repo_root() { return std::filesystem::path(MIL_SOURCE_DIR); }

nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open ", p.string());
  return nlohmann::json::parse(in);
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

// The teacher's tokenizer, or nothing (and a skip message) when the teacher is absent.
std::optional<Tokenizer> teacher_tokenizer() {
  const auto path = repo_root() / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    std::printf("[mil] teacher model not found: test skipped (%s; run scripts/setup.sh)\n",
                path.string().c_str());
    return std::nullopt;
  }
  return Tokenizer(tokenizer_data_from_gguf(mil::io::GgufFile::open(path.string())));
}

}  // namespace

TEST_CASE("tokenizer: SmolLM2 ids match HF tokenizers on the golden strings") {
  const auto teacher = teacher_tokenizer();
  if (!teacher) return;
  const Tokenizer& tok = *teacher;
  const auto golden = read_json(repo_root() / "tests/text/golden/smollm2_tokens.json");
  int agree = 0, total = 0;
  for (const auto& c : golden.at("cases")) {
    const std::string text = from_hex(c.at("hex").get<std::string>());
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const auto ids = tok.encode(text, false, true);
    CAPTURE(c.at("hex").get<std::string>());
    CHECK(ids == expected);
    CHECK(tok.decode(ids) == c.at("decoded").get<std::string>());
    agree += ids == expected;
    ++total;
  }
  std::printf("[mil] tokenizer golden: ids identical on %d of %d strings\n", agree, total);
  CHECK(total >= 200);
}

TEST_CASE("tokenizer: SmolLM2 chat markup and pathological inputs") {
  const auto teacher = teacher_tokenizer();
  if (!teacher) return;
  const Tokenizer& tok = *teacher;
  const auto ids = tok.encode("<|im_start|>user\nHi<|im_end|>");
  REQUIRE(ids.size() >= 3);
  CHECK(ids.front() == tok.token_id("<|im_start|>"));
  CHECK(ids.back() == tok.token_id("<|im_end|>"));
  CHECK(tok.eos() == ids.back());
  for (const std::string& s : {std::string(100000, 'a'), std::string(50000, '_'),
                               std::string(50000, ' '), std::string(30000, '1')}) {
    const auto out = tok.encode(s);  // timed in bench/text/bench_tokenizer.cpp
    CAPTURE(s.size());
    CHECK(tok.decode(out) == s);
  }
}
