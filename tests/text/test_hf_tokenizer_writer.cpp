// Writing tokenizers as Hugging Face files (mil/text/hf_tokenizer_writer.hpp) and reading them
// back with mil/text/hf_tokenizer.hpp:
// - the teacher's tokenizer (SmolLM2 GGUF) gives identical TokenizerData, chat template and the
//   golden ids of tests/text/golden/smollm2_tokens.json (skipped without the teacher);
// - the six small HF tokenizers of tests/text/golden/hf_tokenizers (byte-level and SentencePiece)
//   give their golden ids after a write -> read cycle;
// - SentencePiece scores that are not merge ranks (a GGUF's) keep their merge order;
// - what tokenizer.json cannot hold is a clear error.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mil/text/gguf_tokenizer.hpp"
#include "mil/text/hf_tokenizer.hpp"
#include "mil/text/hf_tokenizer_writer.hpp"

using namespace mil;
using namespace mil::text;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path source_dir() {
#ifdef MIL_SOURCE_DIR
  return fs::path(MIL_SOURCE_DIR);
#else
  return fs::path(__FILE__).parent_path().parent_path().parent_path();
#endif
}

fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / ("mil_test_tok_writer_" + name + "_" +
                                        std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mil::Error& e) {
    return e.what();
  }
  return "<no error>";
}

void check_same_data(const TokenizerData& a, const TokenizerData& b) {
  CHECK(a.model == b.model);
  CHECK(a.pre == b.pre);
  CHECK(a.tokens == b.tokens);
  CHECK(a.scores == b.scores);
  CHECK(a.token_types == b.token_types);
  CHECK(a.merges == b.merges);
  CHECK(a.bos == b.bos);
  CHECK(a.eos == b.eos);
  CHECK(a.unk == b.unk);
  CHECK(a.pad == b.pad);
  CHECK(a.add_bos == b.add_bos);
  // hf_tokenizer.hpp leaves a byte-level model's add_space_prefix at its default (true), while
  // llama.cpp's converter writes false for them; byte-level BPE never reads it.
  if (a.model == "llama") CHECK(a.add_space_prefix == b.add_space_prefix);
  CHECK(a.ignore_merges == b.ignore_merges);
}

}  // namespace

TEST_CASE("hf tokenizer writer: the teacher's tokenizer reads back identical") {
  const fs::path gguf = source_dir() / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(gguf)) {
    std::printf("[mil] teacher model not found: test skipped (%s; run scripts/setup.sh)\n",
                gguf.string().c_str());
    return;
  }
  const auto file = io::GgufFile::open(gguf.string());
  const TokenizerData g = tokenizer_data_from_gguf(file);
  const std::string tmpl = chat_template_from_gguf(file);
  REQUIRE_FALSE(tmpl.empty());
  const fs::path dir = scratch("smollm2");
  save_hf_tokenizer(dir, g, tmpl);
  const HfTokenizer h = load_hf_tokenizer(dir);
  check_same_data(h.data, g);
  CHECK(h.chat_template == tmpl);

  const Tokenizer tok(h.data);
  std::ifstream in(source_dir() / "tests/text/golden/smollm2_tokens.json", std::ios::binary);
  const json golden = json::parse(in);
  int agree = 0, total = 0;
  for (const auto& c : golden.at("cases")) {
    const std::string text = from_hex(c.at("hex").get<std::string>());
    const auto ids = tok.encode(text, false, true);
    CAPTURE(c.at("hex").get<std::string>());
    CHECK(ids == c.at("ids").get<std::vector<int32_t>>());
    CHECK(tok.decode(ids) == c.at("decoded").get<std::string>());
    agree += ids == c.at("ids").get<std::vector<int32_t>>();
    ++total;
  }
  std::printf("[mil] SmolLM2 written and read back: ids identical on %d of %d strings\n", agree,
              total);
  CHECK(total >= 200);
  fs::remove_all(dir);
}

TEST_CASE("hf tokenizer writer: small HF tokenizers keep their ids through a write") {
  const fs::path golden_dir = source_dir() / "tests/text/golden/hf_tokenizers";
  const json golden = io::read_json_file_strict(golden_dir / "golden.json");
  int agree = 0, total = 0;
  for (const auto& [name, g] : golden.at("tokenizers").items()) {
    CAPTURE(name);
    const HfTokenizer original = load_hf_tokenizer(golden_dir / name);
    const fs::path dir = scratch(name);
    save_hf_tokenizer(dir, original.data, original.chat_template);
    const HfTokenizer back = load_hf_tokenizer(dir);
    CHECK(back.chat_template == original.chat_template);
    if (original.data.model == "gpt2") {
      check_same_data(back.data, original.data);
    } else {  // SentencePiece: the merges are derived again, the rest is the same
      TokenizerData a = back.data, b = original.data;
      a.scores.clear();
      b.scores.clear();
      a.token_types.clear();
      b.token_types.clear();
      check_same_data(a, b);
    }
    const Tokenizer tok(back.data);
    for (const auto& c : g.at("cases")) {
      const std::string text = from_hex(c.at("hex").get<std::string>());
      CAPTURE(text);
      const auto ids = tok.encode(text, false, true);
      CHECK(ids == c.at("ids").get<std::vector<int32_t>>());
      CHECK(tok.encode(text, back.data.add_bos, true) ==
            c.at("ids_with_special").get<std::vector<int32_t>>());
      agree += ids == c.at("ids").get<std::vector<int32_t>>();
      ++total;
    }
    fs::remove_all(dir);
  }
  std::printf("[mil] hf tokenizers written and read back: ids identical on %d of %d strings\n",
              agree, total);
  CHECK(total >= 150);
}

TEST_CASE("hf tokenizer writer: SentencePiece scores become merges in score order") {
  // As a GGUF carries it: log-probability scores, not merge ranks. "bc" outranks "ab", so "abc"
  // is a + bc; "▁" + "a" outranks both.
  TokenizerData d;
  d.model = "llama";
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.token_types = {kTokenUnknown, kTokenControl, kTokenControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    d.tokens.push_back(buf);
    d.token_types.push_back(kTokenByte);
  }
  const std::vector<std::pair<const char*, float>> pieces = {
      {"\xE2\x96\x81", -1.f}, {"a", -2.f}, {"b", -3.f},    {"c", -4.f},
      {"ab", -9.f},           {"bc", -6.f}, {"abc", -8.f}, {"\xE2\x96\x81" "a", -5.f}};
  d.scores.assign(d.tokens.size(), 0.f);
  for (const auto& [p, s] : pieces) {
    d.tokens.push_back(p);
    d.token_types.push_back(kTokenNormal);
    d.scores.push_back(s);
  }
  d.unk = 0;
  d.bos = 1;
  d.eos = 2;
  d.add_bos = true;
  const fs::path dir = scratch("spm");
  save_hf_tokenizer(dir, d, "");
  const json tj = io::read_json_file_strict(dir / "tokenizer.json");
  CHECK(tj.at("model").at("merges") ==
        json::parse(R"(["▁ a", "b c", "a bc", "ab c", "a b"])"));
  CHECK(tj.at("post_processor").at("type") == "TemplateProcessing");
  const HfTokenizer back = load_hf_tokenizer(dir);
  CHECK(back.data.add_bos);
  CHECK(back.data.bos == 1);
  CHECK(back.data.unk == 0);
  const Tokenizer original(d), reread(back.data);
  for (const char* s : {"abc", "a bc", "cab", "bca", "abcabc", " a b c", "zz<s>abc", "ab"}) {
    CAPTURE(s);
    CHECK(reread.encode(s, true, true) == original.encode(s, true, true));
  }
  // Ids: 259 ▁, 260 a, 261 b, 262 c, 263 ab, 264 bc, 265 abc, 266 ▁a.
  CHECK(original.encode("abc") == std::vector<int32_t>{266, 264});   // ▁a first, then bc
  CHECK(original.encode("cabc") == std::vector<int32_t>{259, 262, 265});  // a + bc = abc
  fs::remove_all(dir);
}

TEST_CASE("hf tokenizer writer: what tokenizer.json cannot hold is an error") {
  TokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt2";
  for (int b = 0; b < 256; ++b) d.tokens.push_back(to_utf8(byte_to_unicode()[b]));
  d.tokens.push_back("ab");
  d.merges = {"a b"};
  const fs::path dir = scratch("errors");
  CHECK(error_of([&] { save_hf_tokenizer(dir, d, ""); }) == "<no error>");
  TokenizerData dup = d;
  dup.tokens.push_back("ab");
  CHECK(error_of([&] { save_hf_tokenizer(dir, dup, ""); }).find("are both 'ab'") !=
        std::string::npos);
  TokenizerData bad = d;
  bad.tokens.push_back("\xFF");
  CHECK(error_of([&] { save_hf_tokenizer(dir, bad, ""); }).find("is not valid UTF-8") !=
        std::string::npos);
  CHECK(error_of([&] { save_hf_tokenizer(dir, d, "\xC3"); }).find("not valid UTF-8") !=
        std::string::npos);
  TokenizerData unknown = d;
  unknown.model = "wordpiece";
  CHECK(error_of([&] { save_hf_tokenizer(dir, unknown, ""); }).find("unsupported model") !=
        std::string::npos);
  fs::remove_all(dir);
}
