// Prompt files: every accepted layout, errors that name file and line, skipped conversations,
// deduplication and the seeded held-out split.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <mil/data/prompts.hpp>

#include "common/error_of.hpp"

namespace fs = std::filesystem;
using mil::data::Prompt;
using mil::data::PromptReadStats;
using mil::data::PromptSet;
using mil::data::PromptSetOptions;
using mil::data::read_prompt_set;
using mil::data::read_prompts_jsonl;
using mil::test::error_of;

namespace {

// A fresh folder per test case (ctest runs cases in parallel processes).
fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / ("mil_test_prompts_" + name + "_" +
                                        std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

fs::path write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// "role:content|role:content" of a prompt, for compact comparisons.
std::string show(const Prompt& p) {
  std::string s;
  for (const auto& m : p.messages) s += (s.empty() ? "" : "|") + m.role + ":" + m.content;
  return s;
}

std::vector<std::string> shown(const std::vector<Prompt>& ps) {
  std::vector<std::string> out;
  for (const auto& p : ps) out.push_back(show(p));
  return out;
}

// n one-question lines "q<first>" .. "q<first+n-1>".
std::string questions(int first, int n) {
  std::string s;
  for (int i = first; i < first + n; ++i) s += "{\"question\": \"q" + std::to_string(i) + "\"}\n";
  return s;
}

}  // namespace

TEST_CASE("prompts: every layout is read up to the first user message") {
  const fs::path dir = scratch("layouts");
  const fs::path file = write_file(dir / "mixed.jsonl",
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]})" "\n"
      R"({"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red"}], "id": "x_0"})" "\n"
      R"({"conversations": [{"from": "system", "value": "S"}, {"from": "user", "value": "U"}]})" "\n"
      R"({"messages": [{"from": "human", "value": "mixed keys"}]})" "\n"
      R"({"instruction": "Translate.", "input": "chat", "output": "cat"})" "\n"
      R"({"instruction": "Count to 3.", "input": "  "})" "\n"
      R"({"question": "is water wet", "passage": "ignored", "source": "boolq"})" "\n"
      R"({"prompt": "Tell a joke.", "messages": [{"role": "user", "content": "messages win"}]})" "\n"
      R"({"prompt": "Tell a joke."})" "\n");
  PromptReadStats stats;
  const std::vector<Prompt> ps = read_prompts_jsonl(file, &stats);
  // Catches: a layout not recognised, ShareGPT's from/value or speaker names not mapped, later
  // turns kept (the teacher would answer "More" with the assistant's text in the prompt), the
  // Alpaca input not appended or a blank input appended, the layout priority reversed.
  CHECK(shown(ps) == std::vector<std::string>{
                         "system:Be brief.|user:Hi", "user:Name a colour.", "system:S|user:U",
                         "user:mixed keys", "user:Translate.\n\nchat", "user:Count to 3.",
                         "user:is water wet", "user:messages win", "user:Tell a joke."});
  // Catches: the record's "source" ignored, or no default.
  CHECK(ps[6].source == "boolq");
  CHECK(ps[0].source == "mixed.jsonl");
  CHECK(stats.records == 9);
  CHECK(stats.skipped() == 0);
}

TEST_CASE("prompts: blank lines and CRLF and a byte-order mark are accepted") {
  const fs::path dir = scratch("crlf");
  const fs::path file =
      write_file(dir / "crlf.jsonl", "\xEF\xBB\xBF{\"question\": \"a\"}\r\n\r\n  \n{\"prompt\": \"b\"}");
  // Catches: a BOM or a trailing CR taken for bad JSON, whitespace-only lines parsed, the last
  // line without a newline lost.
  CHECK(shown(read_prompts_jsonl(file)) == std::vector<std::string>{"user:a", "user:b"});
}

TEST_CASE("prompts: a malformed line is an error naming its file and line") {
  const fs::path dir = scratch("malformed");
  const std::string good = "{\"question\": \"fine\"}\n";
  struct Case {
    std::string line, phrase;
  };
  // Each bad line comes third, after a good line and a blank one: the blank line must count.
  for (const Case& c : std::vector<Case>{
           {R"({"question": "cut)", "is not valid JSON"},
           {R"(["question", "a list"])", "must be a JSON object"},
           {R"({"answer": "no prompt here"})", "no prompt in"},
           {R"({"question": 42})", "\"question\" must be a string"},
           {R"({"question": "q", "question": "again"})", "duplicate key"},
           {R"({"messages": "hello"})", "must be a list of messages"},
           {R"({"messages": ["hello"]})", "is not an object"},
           {R"({"messages": [{"role": "user"}]})", "needs \"role\" and \"content\""},
           {R"({"messages": [{"role": "user", "content": ["parts"]}]})", "\"content\" must be a string"},
           {R"({"messages": [{"role": "bot", "content": "hi"}]})", "has role 'bot'"},
           {R"({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]})", "system message may only come first"},
           {R"({"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}]})", "system message may only come first"},
           {R"({"question": "q", "source": 7})", "\"source\" must be a string"},
       }) {
    CAPTURE(c.line);
    const fs::path file = write_file(dir / "bad.jsonl", good + "\n" + c.line + "\n" + good);
    const std::string err = error_of([&] { read_prompts_jsonl(file); });
    // Catches: a bad line skipped silently (half a file used), a wrong or missing line number
    // (blank lines not counted), the file not named.
    CHECK(err.find(file.string() + ":3") != std::string::npos);
    CHECK(err.find(c.phrase) != std::string::npos);
  }
  // Catches: a missing file or a folder read as an empty file.
  CHECK(error_of([&] { read_prompts_jsonl(dir / "absent.jsonl"); })
            .find("cannot open prompts file") != std::string::npos);
  CHECK(error_of([&] { read_prompts_jsonl(dir); }).find("is a folder") != std::string::npos);
}

TEST_CASE("prompts: conversations that cannot be prompts are skipped and counted") {
  const fs::path dir = scratch("skipped");
  const fs::path file = write_file(dir / "skip.jsonl",
      R"({"conversations": [{"from": "gpt", "value": "continuing..."}, {"from": "human", "value": "ok"}]})" "\n"
      R"({"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}]})" "\n"
      R"({"conversations": []})" "\n"
      R"({"messages": [{"role": "system", "content": "only a system message"}]})" "\n"
      R"({"messages": [{"role": "user", "content": " \n\t"}]})" "\n"
      R"({"question": ""})" "\n"
      R"({"instruction": " ", "input": "an input without an instruction"})" "\n"
      R"({"question": "kept"})" "\n");
  PromptReadStats stats;
  const std::vector<Prompt> ps = read_prompts_jsonl(file, &stats);
  // Catches: an assistant-first conversation turned into a prompt (the teacher would answer a
  // reply whose question it never saw), an empty or system-only conversation giving an empty
  // prompt, a blank question kept.
  CHECK(shown(ps) == std::vector<std::string>{"user:kept"});
  CHECK(stats.records == 8);
  CHECK(stats.assistant_first == 2);
  CHECK(stats.no_user_message == 2);
  // Catches: an Alpaca input without an instruction taken for a prompt.
  CHECK(stats.blank_user_message == 3);
  CHECK(stats.skipped() == 7);
}

TEST_CASE("prompts: duplicates after trimming whitespace are dropped across files") {
  const fs::path dir = scratch("dedup");
  const fs::path a = write_file(dir / "a.jsonl",
      R"({"question": "What is 2+2?", "source": "first"})" "\n"
      R"({"messages": [{"role": "user", "content": "  What is 2+2?\n"}]})" "\n"
      R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+2?"}]})" "\n"
      R"({"question": "What is 2 + 2?"})" "\n");
  const fs::path b = write_file(dir / "b.jsonl",
      R"({"conversations": [{"from": "system", "value": "S "}, {"from": "human", "value": "What is 2+2?"}]})" "\n"
      R"({"question": "What is 3+3?"})" "\n");
  PromptSetOptions opt;
  opt.heldout_count = 0;
  const PromptSet set = read_prompt_set({a, b}, opt);
  std::vector<std::string> got = shown(set.train);
  std::sort(got.begin(), got.end());
  // Catches: no deduplication, whitespace not trimmed (the copies differ only in it), the
  // system message left out of the key (a different prompt dropped), files deduplicated one by
  // one only, a different text ("2 + 2") taken for a copy.
  CHECK(got == std::vector<std::string>{"system:S|user:What is 2+2?", "user:What is 2 + 2?",
                                        "user:What is 2+2?", "user:What is 3+3?"});
  CHECK(set.duplicates_dropped == 2);
  CHECK(set.read.records == 6);
  // Catches: a later copy kept instead of the first one read.
  for (const Prompt& p : set.train)
    if (show(p) == "user:What is 2+2?") CHECK(p.source == "first");
}

TEST_CASE("prompts: the held-out split is seeded and disjoint and the same for any file order") {
  const fs::path dir = scratch("split");
  const fs::path a = write_file(dir / "a.jsonl", questions(0, 120));
  const fs::path b = write_file(dir / "b.jsonl", questions(120, 80));
  PromptSetOptions opt;
  opt.seed = 7;
  opt.heldout_fraction = 0.1;
  const PromptSet s1 = read_prompt_set({a, b}, opt);
  // Catches: the fraction ignored or applied to the wrong count.
  REQUIRE(s1.heldout.size() == 20);
  REQUIRE(s1.train.size() == 180);
  // Catches: a prompt in both sets or in neither (an off-by-one at the split point).
  const std::vector<std::string> train_list = shown(s1.train);
  const std::set<std::string> train(train_list.begin(), train_list.end());
  std::set<std::string> all = train;
  for (const auto& h : shown(s1.heldout)) {
    CHECK(train.count(h) == 0);
    all.insert(h);
  }
  CHECK(all.size() == 200);
  // Catches: an unshuffled split (the held-out set would be the first or last prompts read).
  int from_b = 0;
  for (const Prompt& p : s1.heldout) from_b += std::stoi(p.messages[0].content.substr(1)) >= 120;
  CHECK(from_b > 0);
  CHECK(from_b < 20);
  // Catches: a shuffle that is not a function of the seed (time, std::random_device), or that
  // depends on the order of the files.
  const PromptSet s2 = read_prompt_set({b, a}, opt);
  CHECK(shown(s2.heldout) == shown(s1.heldout));
  CHECK(shown(s2.train) == shown(s1.train));
  // Catches: the seed ignored.
  opt.seed = 8;
  CHECK(shown(read_prompt_set({a, b}, opt).heldout) != shown(s1.heldout));
  // The held-out count wins over the fraction.
  opt.heldout_count = 3;
  CHECK(read_prompt_set({a, b}, opt).heldout.size() == 3);
}

TEST_CASE("prompts: the split is pinned so that it is the same on every machine") {
  const fs::path dir = scratch("pinned");
  const fs::path a = write_file(dir / "a.jsonl", questions(0, 20));
  PromptSetOptions opt;
  opt.seed = 1234;
  opt.heldout_count = 4;
  // Computed apart from this code, by a few lines of Python: Philox-4x32-10 with key = seed and
  // counter = (FNV-1a 64 of "user:2:q<i>", 0), prompts in increasing order of the four words.
  // Catches: a platform-dependent hash (std::hash) or generator in their place, which would give
  // another machine another held-out set, and any silent change of the shuffle.
  CHECK(shown(read_prompt_set({a}, opt).heldout) ==
        std::vector<std::string>{"user:q12", "user:q2", "user:q10", "user:q17"});
}

TEST_CASE("prompts: max_prompts keeps a uniform sample") {
  const fs::path dir = scratch("cap");
  const fs::path a = write_file(dir / "a.jsonl", questions(0, 200));
  PromptSetOptions opt;
  opt.seed = 3;
  opt.heldout_count = 5;
  opt.max_prompts = 50;
  const PromptSet capped = read_prompt_set({a}, opt);
  // Catches: the cap ignored or applied after the split (train would hold 50, not 45).
  CHECK(capped.heldout.size() == 5);
  CHECK(capped.train.size() == 45);
  CHECK(capped.over_cap_dropped == 150);
  // Catches: the cap taken before the shuffle (the first 50 read): about 25 of the 50 should come
  // from the second half of the file (binomial, standard deviation 3.5; fixed seed).
  int late = 0;
  for (const auto* part : {&capped.train, &capped.heldout})
    for (const Prompt& p : *part) late += std::stoi(p.messages[0].content.substr(1)) >= 100;
  CHECK(late >= 15);
  CHECK(late <= 35);
  // Catches: a held-out set that changes with the cap: the capped set is a prefix of the shuffle.
  opt.max_prompts = 0;
  CHECK(shown(read_prompt_set({a}, opt).heldout) == shown(capped.heldout));
}

TEST_CASE("prompts: the extra set is the next of the shuffle and leaves the split alone") {
  const fs::path dir = scratch("extra");
  const fs::path a = write_file(dir / "a.jsonl", questions(0, 60));
  PromptSetOptions opt;
  opt.seed = 5;
  opt.heldout_count = 4;
  opt.max_prompts = 20;
  const PromptSet plain = read_prompt_set({a}, opt);
  opt.extra_count = 10;
  const PromptSet with = read_prompt_set({a}, opt);
  // Catches: the extra prompts taken from (or shifting) the training or held-out sets.
  CHECK(shown(with.train) == shown(plain.train));
  CHECK(shown(with.heldout) == shown(plain.heldout));
  REQUIRE(with.extra.size() == 10);
  CHECK(with.over_cap_dropped == 30);
  // Catches: extras that repeat a training or held-out prompt, or are not the shuffle's next
  // ones (they must be the first 10 beyond the cap of an uncapped read).
  opt.extra_count = 0;
  opt.max_prompts = 30;
  const PromptSet wider = read_prompt_set({a}, opt);
  std::vector<std::string> next = shown(wider.train);
  next.erase(next.begin(), next.begin() + 16);
  CHECK(shown(with.extra) == next);
  // Catches: more extras asked for than there are, or a negative count accepted.
  opt.max_prompts = 55;
  opt.extra_count = 10;
  CHECK(read_prompt_set({a}, opt).extra.size() == 5);
  CHECK(read_prompt_set({a}, opt).over_cap_dropped == 0);
  opt.extra_count = -1;
  CHECK(error_of([&] { read_prompt_set({a}, opt); }).find("extra_count") != std::string::npos);
}

TEST_CASE("prompts: an empty prompt set is a clear error") {
  const fs::path dir = scratch("empty");
  const fs::path empty = write_file(dir / "empty.jsonl", "\n\n");
  const fs::path skipped = write_file(
      dir / "skipped.jsonl", R"({"conversations": [{"from": "gpt", "value": "hi"}]})" "\n");
  const fs::path two = write_file(dir / "two.jsonl", questions(0, 2));
  PromptSetOptions opt;
  // Catches: an empty set returned (training would start on nothing), the counts not shown.
  CHECK(error_of([&] { read_prompt_set({empty}, opt); }).find("no prompts in '") !=
        std::string::npos);
  CHECK(error_of([&] { read_prompt_set({empty, skipped}, opt); })
            .find("1 records, 1 of them skipped (1 open with an assistant message") !=
        std::string::npos);
  CHECK(error_of([&] { read_prompt_set({}, opt); }).find("no prompt files") != std::string::npos);
  // Catches: a held-out set that swallows every prompt.
  opt.heldout_count = 2;
  CHECK(error_of([&] { read_prompt_set({two}, opt); }).find("leaves none for training") !=
        std::string::npos);
  opt.heldout_count = 1;
  CHECK(read_prompt_set({two}, opt).train.size() == 1);
  // Catches: options out of range accepted.
  opt.heldout_count.reset();
  opt.heldout_fraction = 1.0;
  CHECK(error_of([&] { read_prompt_set({two}, opt); }).find("heldout_fraction") !=
        std::string::npos);
  opt.heldout_fraction = 0;
  opt.max_prompts = -1;
  CHECK(error_of([&] { read_prompt_set({two}, opt); }).find("max_prompts") != std::string::npos);
}
