// The token dataset format: a round trip with and without top-k, a run interrupted and continued
// giving the same files as one without a stop, and each kind of damage or mismatch refused with
// an error that names the file and the problem.
#include <doctest/doctest.h>

#include <filesystem>
#include <iterator>
#include <string>
#include <vector>

#include <mil/data/token_dataset.hpp>

#include "common/error_of.hpp"
#include "data/files.hpp"

using namespace mil;
using test::contains;
using test::read_bytes;
using test::write_bytes;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) { return test::scratch_path("token_dataset_" + name); }

constexpr int32_t kVocab = 50;

data::DatasetManifest settings(int64_t prompts, int32_t topk) {
  data::DatasetManifest m;
  m.teacher_name = "tiny";
  m.teacher_sha256 = util::sha256_hex("teacher");
  m.tokenizer_fingerprint = util::sha256_hex("tokenizer");
  m.vocab_size = kVocab;
  m.chat_template = "chatml";
  m.sampling.temperature = 0.7f;
  m.sampling.top_k = 10;
  m.sampling.top_p = 0.95f;
  m.sampling.min_p = 0.f;
  m.seed = 7;
  m.max_prompt = 8;
  m.max_answer = 6;
  m.stop_ids = {2};
  m.topk = topk;
  m.sequences_per_shard = 2;
  m.prompt_count = prompts;
  m.prompts_sha256 = util::sha256_hex("prompts");
  m.compute = "cpu f32";
  return m;
}

// Prompt i's sequence, or none (skipped) for every third prompt.
bool skipped(int64_t i) { return i % 3 == 1; }
data::LabelledSequence sequence(int64_t i, int32_t topk) {
  data::LabelledSequence s;
  s.prompt_len = int32_t(1 + i % 4);
  const int64_t n = s.prompt_len + 1 + (i * 5) % 6;
  for (int64_t t = 0; t < n; ++t) s.tokens.push_back(int32_t((i * 13 + t * 7) % kVocab));
  s.topk = topk;
  for (int64_t j = 0; j < s.answer_len() * topk; ++j) {
    s.topk_ids.push_back(int32_t((i + j * 3) % kVocab));
    s.topk_logprobs.push_back(-0.25f * float(j % 7 + i % 2));
  }
  return s;
}

// Labels prompts [writer.next_prompt(), end).
void write_prompts(data::TokenDatasetWriter& w, int64_t end, int32_t topk) {
  for (int64_t i = w.next_prompt(); i < end; ++i) {
    if (skipped(i))
      w.skip(i, data::SkipReason::too_long);
    else
      w.add(i, sequence(i, topk));
  }
}

fs::path make_dataset(const std::string& name, int64_t prompts, int32_t topk) {
  const fs::path d = scratch(name);
  data::TokenDatasetWriter w(d, settings(prompts, topk));
  write_prompts(w, prompts, topk);
  w.finish();
  return d;
}

}  // namespace

TEST_CASE("token dataset: round trip with and without top-k") {
  for (int32_t topk : {0, 3}) {
    CAPTURE(topk);
    const int64_t prompts = 8;  // 1, 4 and 7 are skipped: 5 sequences in shards of 2, 2, 1
    const fs::path d = make_dataset("roundtrip", prompts, topk);
    const data::TokenDataset ds = data::read_token_dataset(d);
    std::vector<data::LabelledSequence> want;
    int64_t prompt_tokens = 0, answer_tokens = 0;
    for (int64_t i = 0; i < prompts; ++i)
      if (!skipped(i)) {
        want.push_back(sequence(i, topk));
        prompt_tokens += want.back().prompt_len;
        answer_tokens += want.back().answer_len();
      }
    REQUIRE(ds.sequences.size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      CAPTURE(i);
      CHECK(ds.sequences[i].tokens == want[i].tokens);
      CHECK(ds.sequences[i].prompt_len == want[i].prompt_len);
      CHECK(ds.sequences[i].topk == topk);
      CHECK(ds.sequences[i].topk_ids == want[i].topk_ids);
      CHECK(ds.sequences[i].topk_logprobs == want[i].topk_logprobs);
    }
    const data::DatasetManifest& m = ds.manifest;
    CHECK(m.complete);
    CHECK(m.prompts_done == prompts);
    CHECK(m.sequences == 5);
    CHECK(m.skipped_too_long == 3);
    CHECK(m.prompt_tokens == prompt_tokens);
    CHECK(m.answer_tokens == answer_tokens);
    REQUIRE(m.shards.size() == 3);
    // Prompts 0, 2 | 3, 5 | 6 and the skipped 7 (the last shard is written after the last prompt).
    CHECK(m.shards[1].first_prompt == 3);
    CHECK(m.shards[2].end_prompt == 8);
    // Identity and settings come back as written.
    CHECK(data::detail::settings_json(m) == data::detail::settings_json(settings(prompts, topk)));
    fs::remove_all(d);
  }
}

TEST_CASE("token dataset: an interrupted run continues to the same files") {
  const int64_t prompts = 11;
  const fs::path whole = make_dataset("whole", prompts, 2);
  const fs::path d = scratch("resumed");
  {
    data::TokenDatasetWriter w(d, settings(prompts, 2));
    write_prompts(w, 7, 2);  // shards of prompts 0-2 and 3-5 written; prompt 6 pending, then lost
    // A stop in the middle of writing a shard leaves a temporary file.
    write_bytes(d / ".shard-00002.bin.tmp-abc123", "partial");
  }
  CHECK(!data::read_manifest(d).complete);
  CHECK(contains(test::error_of([&] { data::read_token_dataset(d); }), "labelling stopped after 6"));
  CHECK(data::read_token_dataset(d, true).sequences.size() == 4);
  {
    data::TokenDatasetWriter w(d, settings(prompts, 2));
    CHECK(w.next_prompt() == 6);  // the first prompt of no finished shard
    CHECK(!fs::exists(d / ".shard-00002.bin.tmp-abc123"));
    write_prompts(w, prompts, 2);
    w.finish();
  }
  for (const auto& e : fs::directory_iterator(whole)) {
    CAPTURE(e.path().filename().string());
    CHECK(read_bytes(e.path()) == read_bytes(d / e.path().filename()));
  }
  CHECK(std::distance(fs::directory_iterator(d), fs::directory_iterator{}) ==
        std::distance(fs::directory_iterator(whole), fs::directory_iterator{}));
  // A finished dataset opened again has nothing left to do.
  data::TokenDatasetWriter again(d, settings(prompts, 2));
  CHECK(again.complete());
  CHECK(again.next_prompt() == prompts);
  fs::remove_all(whole);
  fs::remove_all(d);
}

TEST_CASE("token dataset: another run's folder is never overwritten") {
  const fs::path d = make_dataset("other_run", 5, 0);
  auto other = settings(5, 0);
  other.seed = 8;
  CHECK(contains(test::error_of([&] { data::TokenDatasetWriter w(d, other); }),
                 "other settings (\"labelling\""));
  other = settings(5, 0);
  other.teacher_sha256 = util::sha256_hex("another teacher");
  CHECK(contains(test::error_of([&] { data::TokenDatasetWriter w(d, other); }),
                 "other settings (\"teacher\""));
  const fs::path foreign = scratch("foreign");
  fs::create_directories(foreign);
  write_bytes(foreign / "notes.txt", "mine");
  CHECK(contains(test::error_of([&] { data::TokenDatasetWriter w(foreign, settings(5, 0)); }),
                 "holds files but no manifest.json"));
  CHECK(read_bytes(foreign / "notes.txt") == "mine");
  fs::remove_all(d);
  fs::remove_all(foreign);
}

TEST_CASE("token dataset: a damaged shard or manifest is refused") {
  const fs::path d = make_dataset("damaged", 5, 2);
  const fs::path shard = d / "shard-00000.bin";
  const std::string good = read_bytes(shard), manifest = read_bytes(d / "manifest.json");
  auto error = [&] { return test::error_of([&] { data::read_token_dataset(d); }); };
  REQUIRE(error() == "<no error>");

  write_bytes(shard, good.substr(0, good.size() - 5));
  CHECK(contains(error(), "cut short"));
  CHECK(contains(error(), "shard-00000.bin"));
  std::string flipped = good;
  flipped[flipped.size() - 3] ^= 1;
  write_bytes(shard, flipped);
  CHECK(contains(error(), "is corrupt"));
  write_bytes(shard, "not a shard");
  CHECK(contains(error(), "not a shard"));
  fs::remove(shard);
  CHECK(contains(error(), "cannot open it"));
  write_bytes(shard, good);

  // A shard of another run with the same name (its hash is not the manifest's).
  const fs::path other = make_dataset("damaged_other", 6, 2);
  write_bytes(shard, read_bytes(other / "shard-00001.bin"));
  CHECK(contains(error(), "belongs to another run"));
  write_bytes(shard, good);

  auto edit = [&](const std::string& from, const std::string& to) {
    std::string m = manifest;
    const size_t at = m.find(from);
    REQUIRE(at != std::string::npos);
    write_bytes(d / "manifest.json", m.replace(at, from.size(), to));
  };
  edit("\"sequences\": 3", "\"sequences\": 4");
  CHECK(contains(error(), "not the sums over the shards"));
  edit("\"first_prompt\": 3", "\"first_prompt\": 2");
  CHECK(contains(error(), "expected to start at 3"));
  edit("\"too_long\": 2", "\"too_long\": 3");
  CHECK(contains(error(), "do not add up"));
  edit("\"format\": \"mil-token-dataset\"", "\"format\": \"other\"");
  CHECK(contains(error(), "not a mil-token-dataset manifest"));
  edit("\"max_answer\": 6", "\"max_answer\": 3");  // records longer than the manifest allows
  CHECK(contains(error(), "record 1"));
  edit("\"vocab_size\": 50", "\"vocab_size\": 20");
  CHECK(contains(error(), "outside the vocabulary of 20"));
  edit("\"max_prompt\": 8", "\"max_prompt\": \"8\"");
  CHECK(contains(error(), "wrong type"));
  write_bytes(d / "manifest.json", manifest);
  CHECK(error() == "<no error>");
  fs::remove_all(other);
  fs::remove_all(d);
  CHECK(contains(error(), "has no manifest.json"));
}

TEST_CASE("token dataset: made by another teacher or tokenizer") {
  const fs::path d = make_dataset("identity", 3, 0);
  const data::DatasetManifest m = data::read_manifest(d);
  CHECK_NOTHROW(data::check_dataset_matches(m, util::sha256_hex("teacher"),
                                            util::sha256_hex("tokenizer")));
  CHECK(contains(test::error_of([&] {
                   data::check_dataset_matches(m, util::sha256_hex("other"),
                                               util::sha256_hex("tokenizer"));
                 }),
                 "made by another teacher ('tiny'"));
  CHECK(contains(test::error_of([&] {
                   data::check_dataset_matches(m, util::sha256_hex("teacher"),
                                               util::sha256_hex("other"));
                 }),
                 "made with another tokenizer"));
  fs::remove_all(d);
}

TEST_CASE("token dataset: the tokenizer fingerprint sees every part of the tokenizer") {
  text::TokenizerData base;
  base.model = "gpt2";
  base.pre = "gpt2";
  for (int b = 0; b < 256; ++b) base.tokens.push_back(text::to_utf8(text::byte_to_unicode()[b]));
  for (const char* t : {"ab", "bc", "abc", "<|im_end|>"}) base.tokens.push_back(t);
  base.merges = {"a b", "b c", "ab c"};
  base.token_types.assign(base.tokens.size(), text::kTokenNormal);
  base.token_types.back() = text::kTokenControl;
  base.eos = 259;
  const std::string fp = data::tokenizer_fingerprint(text::Tokenizer(base));
  CHECK(fp.size() == 64);
  CHECK(data::tokenizer_fingerprint(text::Tokenizer(base)) == fp);
  std::vector<text::TokenizerData> changed(5, base);
  std::swap(changed[0].merges[0], changed[0].merges[1]);  // merge ranks
  changed[1].eos = 258;                                    // a special id
  std::swap(changed[2].tokens[256], changed[2].tokens[257]);  // ids of two tokens
  changed[3].token_types[256] = text::kTokenUserDefined;   // a token's type
  changed[4].add_bos = true;
  for (size_t i = 0; i < changed.size(); ++i) {
    CAPTURE(i);
    CHECK(data::tokenizer_fingerprint(text::Tokenizer(changed[i])) != fp);
  }
}
