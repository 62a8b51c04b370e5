// tokenizer.json loading (mil/text/hf_tokenizer.hpp):
// - six small tokenizers trained and saved by HF `tokenizers` (tests/text/golden/hf_tokenizers,
//   made by scripts/make_hf_tokenizer_golden.py) give the library's ids through mil;
// - SmolLM2's tokenizer, written as tokenizer.json from the teacher GGUF's vocabulary and merges,
//   gives the golden ids of tests/text/golden/smollm2_tokens.json (skipped without the teacher);
// - unsupported or broken files are clear errors.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/gguf_writer.hpp"
#include "mil/text/gguf_tokenizer.hpp"
#include "mil/text/hf_tokenizer.hpp"

using namespace mil;
using namespace mil::text;
using nlohmann::json;

namespace {

std::filesystem::path golden_dir() {
  return std::filesystem::path(MIL_SOURCE_DIR) / "tests/text/golden";
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

std::string token_text(const TokenizerData& d, int32_t id) { return id < 0 ? "" : d.tokens[id]; }
std::string or_empty(const json& j) { return j.is_null() ? "" : j.get<std::string>(); }

// A minimal byte-fallback tokenizer.json: pieces a, b, c, ab, abc (merges a b, ab c), and "bc",
// which no merge makes.
json tiny_sentencepiece() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    vocab[buf] = 3 + b;
  }
  int next = 259;
  for (const char* p : {"▁", "a", "b", "c", "ab", "abc", "bc", "▁a"}) vocab[p] = next++;
  return {{"added_tokens",
           {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
            {{"id", 1}, {"content", "<s>"}, {"special", true}},
            {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
          {"normalizer",
           {{"type", "Sequence"},
            {"normalizers",
             {{{"type", "Prepend"}, {"prepend", "▁"}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
          {"pre_tokenizer", nullptr},
          {"model",
           {{"type", "BPE"},
            {"unk_token", "<unk>"},
            {"byte_fallback", true},
            {"vocab", vocab},
            {"merges", {"a b", "ab c", "▁ a"}}}}};
}

// A minimal byte-level tokenizer.json (all 256 mapped bytes, one merge).
json tiny_byte_level() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[to_utf8(byte_to_unicode()[b])] = b;
  vocab["ab"] = 256;
  return {
      {"added_tokens", json::array({{{"id", 257}, {"content", "<|end|>"}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"a", "b"})})}}}};
}

}  // namespace

TEST_CASE("hf tokenizer: small tokenizers give the ids of HF tokenizers") {
  const json golden = mil::io::read_json_file_strict(golden_dir() / "hf_tokenizers/golden.json");
  int agree = 0, total = 0;
  for (const auto& [name, g] : golden.at("tokenizers").items()) {
    CAPTURE(name);
    const HfTokenizer hf = load_hf_tokenizer(golden_dir() / "hf_tokenizers" / name);
    const json& expect = g.at("expect");
    CHECK(hf.data.model == expect.at("model").get<std::string>());
    if (expect.contains("pre")) CHECK(hf.data.pre == expect.at("pre").get<std::string>());
    CHECK(hf.data.add_bos == expect.at("add_bos").get<bool>());
    CHECK(token_text(hf.data, hf.data.bos) == or_empty(expect.at("bos")));
    CHECK(token_text(hf.data, hf.data.eos) == or_empty(expect.at("eos")));
    CHECK(hf.data.ignore_merges == expect.value("ignore_merges", false));
    if (expect.contains("add_space_prefix"))
      CHECK(hf.data.add_space_prefix == expect.at("add_space_prefix").get<bool>());
    if (expect.contains("chat_template_starts"))
      CHECK(hf.chat_template.rfind(expect.at("chat_template_starts").get<std::string>(), 0) == 0);
    else
      CHECK(hf.chat_template.empty());
    const Tokenizer tok(hf.data);
    for (const auto& c : g.at("cases")) {
      const std::string text = from_hex(c.at("hex").get<std::string>());
      CAPTURE(text);
      const auto ids = tok.encode(text, false, true);
      const auto expected = c.at("ids").get<std::vector<int32_t>>();
      CHECK(ids == expected);
      CHECK(tok.encode(text, hf.data.add_bos, true) ==
            c.at("ids_with_special").get<std::vector<int32_t>>());
      // HF's SentencePiece decoder strips the prefix space of the whole text, mil that of the
      // first text piece: they differ only when a special token comes first.
      if (hf.data.model == "gpt2" || ids.empty() || !tok.is_control(ids[0]))
        CHECK(tok.decode(ids) == c.at("decoded").get<std::string>());
      agree += ids == expected;
      ++total;
    }
  }
  std::printf("[mil] hf tokenizers: ids identical on %d of %d strings\n", agree, total);
  CHECK(total >= 150);
}

TEST_CASE("hf tokenizer: ignore_merges takes whole-word tokens as Llama-3 does") {
  const json golden = mil::io::read_json_file_strict(golden_dir() / "hf_tokenizers/golden.json");
  TokenizerData d = load_hf_tokenizer(golden_dir() / "hf_tokenizers/llama3").data;
  REQUIRE(d.ignore_merges);
  d.ignore_merges = false;
  const Tokenizer merged_only(d);
  int differ = 0;
  for (const auto& c : golden.at("tokenizers").at("llama3").at("cases")) {
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const auto ids = merged_only.encode(from_hex(c.at("hex").get<std::string>()), false, true);
    if (ids != expected) {
      CHECK(ids.size() > expected.size());  // the whole word was one token
      ++differ;
    }
  }
  CHECK(differ >= 1);  // the golden cases exercise it
}

TEST_CASE("tokenizer: a GGUF with the Llama-3 pre-tokenizer ignores merges as llama.cpp does") {
  // GGUF has no key for ignore_merges: llama.cpp sets it for the llama3 / llama-bpe pre-tokenizer.
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(to_utf8(byte_to_unicode()[b]));
  tokens.push_back("ab");
  tokens.push_back("abc");  // a whole word that no merge makes
  for (const char* pre : {"llama-bpe", "llama3", "gpt2", "qwen2"}) {
    CAPTURE(pre);
    test::GgufWriter w;
    w.str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", pre)
        .str_array("tokenizer.ggml.tokens", tokens)
        .str_array("tokenizer.ggml.merges", {"a b"});
    const auto bytes = w.bytes();
    const TokenizerData d = tokenizer_data_from_gguf(io::GgufFile::from_bytes(bytes));
    const bool llama3 = std::string(pre).rfind("llama", 0) == 0;
    CHECK(d.ignore_merges == llama3);
    const Tokenizer tok(d);
    CHECK(tok.encode("abc") == (llama3 ? std::vector<int32_t>{257} : std::vector<int32_t>{256, 'c'}));
    CHECK(tok.encode("abcd") == std::vector<int32_t>{256, 'c', 'd'});  // not a token: merges
  }
}

TEST_CASE("hf tokenizer: byte-fallback scores follow the merge order") {
  const json tj = tiny_sentencepiece();
  const TokenizerData d = tokenizer_data_from_hf(tj, nullptr, "tiny");
  CHECK(d.model == "llama");
  CHECK(d.add_space_prefix);
  CHECK(d.unk == 0);
  CHECK(d.bos == -1);
  const auto id = [&](const char* t) { return tj.at("model").at("vocab").at(t).get<int32_t>(); };
  CHECK(d.scores[id("ab")] == 0.0f);
  CHECK(d.scores[id("abc")] == -1.0f);
  CHECK(d.scores[id("▁a")] == -2.0f);
  CHECK(d.token_types[id("bc")] == kTokenUnused);  // no merge makes it
  CHECK(d.token_types[id("<0x41>")] == kTokenByte);
  CHECK(d.token_types[1] == kTokenControl);
  const Tokenizer tok(d);
  // "▁abc": ▁+a (rank 2) waits for a+b (rank 0) and ab+c (rank 1); b+c is never merged.
  CHECK(tok.encode("abc") == std::vector<int32_t>{id("▁"), id("abc")});
  CHECK(tok.encode("bc") == std::vector<int32_t>{id("▁"), id("b"), id("c")});
  CHECK(tok.encode("a z") == std::vector<int32_t>{id("▁a"), id("▁"), id("<0x7A>")});
}

TEST_CASE("hf tokenizer: SmolLM2 as tokenizer.json gives the golden ids") {
  const auto gguf =
      std::filesystem::path(MIL_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(gguf)) {
    std::printf("[mil] teacher model not found: test skipped (%s; run scripts/setup.sh)\n",
                gguf.string().c_str());
    return;
  }
  const TokenizerData g = tokenizer_data_from_gguf(io::GgufFile::open(gguf.string()));
  REQUIRE(g.pre == "smollm");
  // The same vocabulary in the layout HF's tokenizers library saves: control tokens as special
  // added tokens, merges as [a, b] pairs, Digits + ByteLevel pre-tokenizer.
  json vocab = json::object(), added = json::array(), merges = json::array();
  for (size_t i = 0; i < g.tokens.size(); ++i) {
    vocab[g.tokens[i]] = i;
    if (g.token_types[i] == kTokenControl)
      added.push_back({{"id", i},
                       {"content", g.tokens[i]},
                       {"special", true},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"single_word", false},
                       {"normalized", false}});
  }
  for (const std::string& m : g.merges) {
    const size_t sp = m.find(' ');
    merges.push_back(json::array({m.substr(0, sp), m.substr(sp + 1)}));
  }
  const json tj = {{"version", "1.0"},
                   {"added_tokens", added},
                   {"normalizer", nullptr},
                   {"pre_tokenizer",
                    {{"type", "Sequence"},
                     {"pretokenizers",
                      {{{"type", "Digits"}, {"individual_digits", true}},
                       {{"type", "ByteLevel"},
                        {"add_prefix_space", false},
                        {"trim_offsets", true},
                        {"use_regex", true}}}}}},
                   {"post_processor", nullptr},
                   {"model",
                    {{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", nullptr},
                     {"byte_fallback", false},
                     {"ignore_merges", false},
                     {"vocab", vocab},
                     {"merges", merges}}}};
  const json config = {{"bos_token", g.tokens[g.bos]},
                       {"eos_token", {{"content", g.tokens[g.eos]}}},
                       {"add_bos_token", false}};
  const TokenizerData h = tokenizer_data_from_hf(json::parse(tj.dump()), &config, "smollm2");
  CHECK(h.model == g.model);
  CHECK(h.pre == g.pre);
  CHECK(h.tokens == g.tokens);
  CHECK(h.merges == g.merges);
  CHECK(h.bos == g.bos);
  CHECK(h.eos == g.eos);
  CHECK(h.add_bos == g.add_bos);
  const Tokenizer from_gguf(g), from_hf(h);
  std::ifstream in(golden_dir() / "smollm2_tokens.json", std::ios::binary);
  const json golden = json::parse(in);
  int agree = 0, total = 0;
  for (const auto& c : golden.at("cases")) {
    const std::string text = from_hex(c.at("hex").get<std::string>());
    const auto ids = from_hf.encode(text, false, true);
    CAPTURE(c.at("hex").get<std::string>());
    CHECK(ids == c.at("ids").get<std::vector<int32_t>>());
    CHECK(ids == from_gguf.encode(text, false, true));
    agree += ids == c.at("ids").get<std::vector<int32_t>>();
    ++total;
  }
  std::printf("[mil] SmolLM2 via tokenizer.json: ids identical on %d of %d strings\n", agree,
              total);
  CHECK(total >= 200);
}

TEST_CASE("hf tokenizer: the chat template of tokenizer_config.json") {
  CHECK(chat_template_from_hf_config(json::object(), "x").empty());
  CHECK(chat_template_from_hf_config({{"chat_template", "{{ x }}"}}, "x") == "{{ x }}");
  const json listed = {
      {"chat_template",
       {{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}}}};
  CHECK(chat_template_from_hf_config(listed, "x") == "D");
  const json no_default = {{"chat_template", {{{"name", "tool_use"}, {"template", "T"}}}}};
  CHECK_THROWS_WITH_AS(chat_template_from_hf_config(no_default, "x"),
                       doctest::Contains("no 'default' template (only: tool_use)"), Error);
  CHECK_THROWS_WITH_AS(chat_template_from_hf_config({{"chat_template", 3}}, "x"),
                       doctest::Contains("string or a list"), Error);
}

TEST_CASE("hf tokenizer: unsupported and broken files are clear errors") {
  const auto fails = [](const json& tj, const char* message) {
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(tokenizer_data_from_hf(tj, nullptr, "t.json"), doctest::Contains(message),
                         Error);
  };
  CHECK(tokenizer_data_from_hf(tiny_byte_level(), nullptr, "t.json").pre == "gpt2");
  json t = tiny_byte_level();
  t["model"]["type"] = "Unigram";
  fails(t, "model type \"Unigram\" is not supported");
  t = tiny_byte_level();
  t["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Whitespace"}}, t["pre_tokenizer"]}}};
  fails(t, "unsupported byte-level pre_tokenizer");
  t = tiny_byte_level();
  t["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Isolated"}},
        {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  fails(t, "is not one mil implements");
  t = tiny_byte_level();
  t["pre_tokenizer"]["add_prefix_space"] = true;
  fails(t, "add_prefix_space = true is not supported");
  t = tiny_byte_level();
  t["added_tokens"][0]["id"] = 1000000000;
  fails(t, "some ids have no token");
  t = tiny_byte_level();
  t["added_tokens"][0]["id"] = 258;
  t["added_tokens"].push_back({{"id", 256}, {"content", "ab"}});  // same text: allowed
  fails(t, "token id 257 has no token");
  t = tiny_byte_level();
  t["added_tokens"][0]["id"] = -1;
  fails(t, "must be a token id");
  t = tiny_byte_level();
  t["added_tokens"][0]["id"] = 5;
  fails(t, "which is already");
  t = tiny_byte_level();
  t["added_tokens"][0]["rstrip"] = true;
  fails(t, "rstrip = true");
  t = tiny_byte_level();
  t["model"]["merges"] = json::array({"a c"});
  fails(t, "not in model.vocab");
  t = tiny_byte_level();
  t["model"]["merges"] = json::array({"abc"});
  fails(t, "is not of the form 'a b'");
  t = tiny_byte_level();
  t["model"]["merges"] = json::array({json::array({"a"})});
  fails(t, "neither 'a b' nor [a, b]");
  t = tiny_byte_level();
  t["model"]["vocab"] = json::array();
  fails(t, "model.vocab must be an object");
  t = tiny_byte_level();
  t["normalizer"] = {{"type", "Lowercase"}};
  fails(t, "unsupported normalizer");
  t = tiny_byte_level();
  t["model"]["continuing_subword_prefix"] = "##";
  fails(t, "continuing_subword_prefix");
  t = tiny_byte_level();
  t["pre_tokenizer"] = nullptr;
  fails(t, "neither byte-level");
  fails(json::array(), "the top level must be an object");
  const json bad_config = {{"eos_token", "<|nope|>"}};
  CHECK_THROWS_WITH_AS(tokenizer_data_from_hf(tiny_byte_level(), &bad_config, "t.json"),
                       doctest::Contains("eos_token '<|nope|>' is not in the vocabulary"), Error);

  json s = tiny_sentencepiece();
  CHECK(tokenizer_data_from_hf(s, nullptr, "t.json").model == "llama");
  s["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"split", true}};
  fails(s, "Metaspace split = true is not supported");
  s = tiny_sentencepiece();
  s["normalizer"] = {{"type", "Prepend"}, {"prepend", "▁"}};
  fails(s, "spaces are not turned into U+2581");
  s = tiny_sentencepiece();
  s["normalizer"] = {{"type", "NFKC"}};
  fails(s, "unsupported normalizer");

  const auto dir = std::filesystem::temp_directory_path() / "mil_test_hf_tokenizer";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << "{\"model\": [1, 2";
  CHECK_THROWS_WITH_AS(load_hf_tokenizer(dir), doctest::Contains("is not valid JSON"), Error);
  std::filesystem::remove_all(dir);
  CHECK_THROWS_WITH_AS(load_hf_tokenizer(dir), doctest::Contains("no tokenizer.json"), Error);
}
