// Preference pairs from JSONL, with the tests' byte tokenizer and a small random reference: both
// layouts rendered through the chat template, unusable pairs skipped and counted, malformed lines
// refused naming file:line.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <mil/data/preference_pairs_jsonl.hpp>

#include "common/compare.hpp"
#include "common/error_of.hpp"
#include "data/small_models.hpp"
#include "data/files.hpp"
#include "eval/byte_tokenizer.hpp"

using namespace mil;
using test::contains;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) { return test::scratch_path("pairs_jsonl_" + name); }

nn::HybridModel<double, Cpu> reference_model() {
  nn::HybridModel<double, Cpu> m(nn::all_attention(test::small_llama(258)));  // byte tokenizer
  m.init_random(4, 0.3f);
  return m;
}

data::PairIdentity reference_identity() {
  data::PairIdentity id;
  id.reference_name = "small reference";
  id.reference_sha256 = util::sha256_hex("small reference");
  return id;
}

data::JsonlPairConfig config() {
  data::JsonlPairConfig c;
  c.max_prompt = 120;
  c.max_answer = 16;
  c.score_batch = 3;
  c.pairs_per_shard = 2;
  c.progress = false;
  return c;
}

// The bytes of `s` as token ids, then the end token (the byte tokenizer's end of text, 257).
std::vector<int32_t> answer_ids(const std::string& s) {
  std::vector<int32_t> ids(s.begin(), s.end());
  ids.push_back(257);
  return ids;
}

}  // namespace

TEST_CASE("preference pairs jsonl: both layouts rendered and scored and bad pairs counted") {
  // Catches a layout read wrongly (prompt and answer swapped, a ShareGPT message's value missed,
  // the conversation in a message-list answer taken as part of the answer), an answer without
  // its end token, the prompt not rendered through the chat template, pairs out of line order,
  // skips uncounted or of the wrong reason, and reference log-probs of the wrong tokens.
  const fs::path dir = scratch("files");
  fs::create_directories(dir);
  test::write_bytes(dir / "a.jsonl",
      "{\"prompt\": \"Hi\", \"chosen\": \"Hello!\", \"rejected\": \"Go away.\"}\n"
      "\n"
      "{\"conversations\": [{\"from\": \"system\", \"value\": \"Be kind.\"}, {\"from\": \"human\", "
      "\"value\": \"Name a colour.\"}], \"chosen\": {\"from\": \"gpt\", \"value\": \"Blue.\"}, "
      "\"rejected\": {\"from\": \"gpt\", \"value\": \"No.\"}}\n"
      "{\"prompt\": \"Same?\", \"chosen\": \"yes\", \"rejected\": \" yes \"}\n"
      "{\"prompt\": \"  \", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
  test::write_bytes(dir / "b.jsonl",
      "{\"prompt\": \"Q\", \"chosen\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": "
      "\"assistant\", \"content\": \"A1\"}], \"rejected\": [{\"role\": \"user\", \"content\": "
      "\"Q\"}, {\"role\": \"assistant\", \"content\": \"A2\"}]}\n"
      "{\"chosen\": [{\"role\": \"user\", \"content\": \"X\"}, {\"role\": \"assistant\", "
      "\"content\": \"Y\"}], \"rejected\": [{\"role\": \"user\", \"content\": \"X\"}, {\"role\": "
      "\"assistant\", \"content\": \"Z\"}]}\n"
      "{\"prompt\": \"" + std::string(200, 'x') + "\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
      "{\"prompt\": [{\"role\": \"user\", \"content\": \"Go\"}], \"chosen\": \"up\", "
      "\"rejected\": \"" + std::string(20, 'z') + "\"}\n");
  const text::Tokenizer tok = test::byte_tokenizer();
  const text::ChatTemplate tmpl = text::chat_template_for_family(text::ChatFamily::chatml);
  const auto ref = reference_model();
  const fs::path d = scratch("pairs");
  const data::PairStats st = data::make_jsonl_preference_pairs(
      ref, tok, tmpl, {dir / "a.jsonl", dir / "b.jsonl"}, config(), d, reference_identity());
  CHECK(st.prompts == 8);
  CHECK(st.pairs == 4);
  CHECK(st.skipped_same_answer == 1);
  CHECK(st.skipped_empty == 1);
  CHECK(st.skipped_too_long == 2);  // a prompt of 200 bytes, an answer of 21 tokens
  const data::PreferenceDataset ps = data::read_preference_pairs(d);
  CHECK(ps.manifest.pairs.source == "jsonl");
  CHECK(ps.manifest.pairs.reference_sha256 == reference_identity().reference_sha256);
  CHECK(ps.manifest.tokenizer_fingerprint == data::tokenizer_fingerprint(tok));
  REQUIRE(ps.pairs.size() == 4);

  using Msgs = std::vector<text::ChatMessage>;
  const std::vector<Msgs> prompts = {{{"user", "Hi"}},
                                     {{"system", "Be kind."}, {"user", "Name a colour."}},
                                     {{"user", "Q"}},
                                     {{"user", "X"}}};
  const std::vector<std::pair<std::string, std::string>> answers = {
      {"Hello!", "Go away."}, {"Blue.", "No."}, {"A1", "A2"}, {"Y", "Z"}};
  std::vector<double> got, want;
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    const data::PreferencePair& p = ps.pairs[i];
    CHECK(p.prompt == text::encode_chat_prompt(tok, tmpl, prompts[i]));
    CHECK(p.chosen == answer_ids(answers[i].first));
    CHECK(p.rejected == answer_ids(answers[i].second));
    got.push_back(p.ref_logp_chosen);
    got.push_back(p.ref_logp_rejected);
    want.push_back(test::answer_logprob(ref, p.prompt, p.chosen));
    want.push_back(test::answer_logprob(ref, p.prompt, p.rejected));
  }
  test::require_close("reference log-probs", got, want, test::Bound{1e-12, 1e-11});
  fs::remove_all(d);
  fs::remove_all(dir);
}

TEST_CASE("preference pairs jsonl: malformed lines are errors naming file and line") {
  // Catches a corrupt or misread file half used: each bad record must stop the run before
  // anything is written, and say where it is.
  const text::Tokenizer tok = test::byte_tokenizer();
  const text::ChatTemplate tmpl = text::chat_template_for_family(text::ChatFamily::chatml);
  const auto ref = reference_model();
  const fs::path dir = scratch("bad");
  fs::create_directories(dir);
  const std::string good = "{\"prompt\": \"Hi\", \"chosen\": \"a\", \"rejected\": \"b\"}\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"prompt\": \"Hi\", \"chosen\": \"a\"", "not valid JSON"},
      {"[1, 2]", "a pair line must be a JSON object"},
      {"{\"prompt\": \"Hi\", \"chosen\": \"a\"}", "no \"rejected\" answer"},
      {"{\"prompt\": \"Hi\", \"chosen\": 3, \"rejected\": \"b\"}", "\"chosen\" must be a string"},
      {"{\"chosen\": \"a\", \"rejected\": \"b\"}", "no prompt in"},
      {"{\"prompt\": [{\"role\": \"robot\", \"content\": \"Hi\"}], \"chosen\": \"a\", \"rejected\": \"b\"}",
       "has role 'robot'"},
      {"{\"prompt\": \"Hi\", \"chosen\": {\"role\": \"user\", \"content\": \"a\"}, \"rejected\": \"b\"}",
       "not the assistant's"},
      {"{\"chosen\": [{\"role\": \"user\", \"content\": \"X\"}, {\"role\": \"assistant\", \"content\": "
       "\"Y\"}], \"rejected\": [{\"role\": \"user\", \"content\": \"W\"}, {\"role\": \"assistant\", "
       "\"content\": \"Z\"}]}",
       "answer different conversations"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    CAPTURE(i);
    const fs::path f = dir / ("bad" + std::to_string(i) + ".jsonl");
    test::write_bytes(f, good + cases[i].first + "\n");
    const fs::path d = scratch("bad_out");
    const std::string e = test::error_of([&] {
      data::make_jsonl_preference_pairs(ref, tok, tmpl, {f}, config(), d, reference_identity());
    });
    CHECK(contains(e, f.string() + ":2"));
    CHECK(contains(e, cases[i].second));
    CHECK(!fs::exists(d));
  }
  // A file with no usable pair is an error too, before anything is written.
  const fs::path none = dir / "none.jsonl";
  test::write_bytes(none, "{\"prompt\": \"Hi\", \"chosen\": \"a\", \"rejected\": \"a\"}\n");
  const fs::path d = scratch("none_out");
  CHECK(contains(test::error_of([&] {
                   data::make_jsonl_preference_pairs(ref, tok, tmpl, {none}, config(), d, reference_identity());
                 }),
                 "none of the 1 pairs"));
  CHECK(!fs::exists(d));
  fs::remove_all(dir);
}
