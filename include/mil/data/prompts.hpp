#pragma once
// Chat prompts for pseudo-labelling: JSONL files read into prompts (a conversation up to and
// including its first user message, which the teacher answers), deduplicated, and split into a
// training and a held-out set by a seeded shuffle that is the same on every machine. The default
// prompts (data/prompts/*.jsonl) are written by scripts/fetch_prompts.py, which setup.sh runs.
//
// Each non-blank line is one JSON object in one of these layouts (the first present wins):
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//   {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}       (ShareGPT)
//   {"instruction": "...", "input": "..."}    ("input" optional; joined by a blank line)  (Alpaca)
//   {"question": "..."}  or  {"prompt": "..."}
// A message list may use either key pair (role/content or from/value) and ShareGPT's speaker
// names (human, gpt, chatgpt, bing, bard). An optional "source" string names the record's origin
// (default: the file name). Messages after the first user message are dropped: the teacher writes
// its own answer to it.
//
// What is an error and what is skipped: anything that is not this format (bad JSON, a line that
// is not an object, no known layout, a non-string content, an unknown role, a system message
// after another message) is a mil::Error naming file and line, as a wrong or corrupt file must
// not be half used. A well-formed conversation that cannot be a prompt is skipped and counted:
// one that opens with an assistant message (raw ShareGPT dumps hold thousands, the later parts of
// split conversations, answering them would lose the context), one with no user message, and one
// whose first user message is blank.
#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "mil/core/error.hpp"
#include "mil/core/rng.hpp"
#include "mil/io/json.hpp"
#include "mil/text/chat_template.hpp"

namespace mil::data {

struct Prompt {
  std::vector<text::ChatMessage> messages;  // [system], user: what the teacher answers
  std::string source;                       // the record's "source", or its file's name
};

// Records read but not turned into prompts (each a well-formed record; see the header comment).
struct PromptReadStats {
  int64_t records = 0;          // non-blank lines
  int64_t assistant_first = 0;  // opens with an assistant message (after an optional system one)
  int64_t no_user_message = 0;  // empty, or system messages only
  int64_t blank_user_message = 0;

  int64_t skipped() const { return assistant_first + no_user_message + blank_user_message; }
  PromptReadStats& operator+=(const PromptReadStats& o) {
    records += o.records;
    assistant_first += o.assistant_first;
    no_user_message += o.no_user_message;
    blank_user_message += o.blank_user_message;
    return *this;
  }
};

namespace prompts_detail {

using nlohmann::json;

// The chat role of a speaker name, or "" when unknown.
inline std::string_view role_of(std::string_view name) {
  if (name == "system") return "system";
  if (name == "user" || name == "human") return "user";
  if (name == "assistant" || name == "gpt" || name == "chatgpt" || name == "bing" || name == "bard")
    return "assistant";
  return "";
}

// The string member `key` of `record`, or nullptr when absent; present but not a string is an
// error (`where` is "file:line").
inline const std::string* string_member(const json& record, const char* key,
                                        const std::string& where) {
  const auto it = record.find(key);
  if (it == record.end()) return nullptr;
  MIL_CHECK(it->is_string(), where, ": \"", key, "\" must be a string, not ",
            io::json_excerpt(*it));
  return &it->get_ref<const std::string&>();
}

enum class Outcome { prompt, assistant_first, no_user_message, blank_user_message };

// The prompt of a message list (`key` names it in errors): an optional system message and the
// first user message. Every message is checked, the dropped ones too: a corrupt record is an
// error wherever the damage is.
inline Outcome prompt_from_list(const json& list, const char* key, const std::string& where,
                                std::vector<text::ChatMessage>& out) {
  MIL_CHECK(list.is_array(), where, ": \"", key, "\" must be a list of messages, not ",
            io::json_excerpt(list));
  std::optional<Outcome> outcome;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& m = list[i];
    MIL_CHECK(m.is_object(), where, ": message ", i, " of \"", key, "\" is not an object: ",
              io::json_excerpt(m));
    const bool sharegpt = !m.contains("role");
    const std::string* name = string_member(m, sharegpt ? "from" : "role", where);
    const std::string* content = string_member(m, sharegpt ? "value" : "content", where);
    MIL_CHECK(name && content, where, ": message ", i, " of \"", key, "\" needs \"role\" and ",
              "\"content\" (or ShareGPT's \"from\" and \"value\") strings: ", io::json_excerpt(m));
    const std::string_view role = role_of(*name);
    MIL_CHECK(!role.empty(), where, ": message ", i, " has role '", *name, "' (system, user or ",
              "assistant; ShareGPT's human and gpt)");
    MIL_CHECK(role != "system" || i == 0, where, ": a system message may only come first ",
              "(message ", i, ")");
    if (outcome) continue;
    if (role == "assistant") {
      outcome = Outcome::assistant_first;
      continue;
    }
    out.push_back({std::string(role), *content});
    if (role == "user")
      outcome = text::chat_detail::trim(*content).empty() ? Outcome::blank_user_message
                                                          : Outcome::prompt;
  }
  return outcome.value_or(Outcome::no_user_message);
}

// The prompt of one record (a parsed line).
inline Outcome prompt_from_record(const json& record, const std::string& where,
                                  std::vector<text::ChatMessage>& out) {
  MIL_CHECK(record.is_object(), where, ": a prompt line must be a JSON object, not ",
            io::json_excerpt(record));
  for (const char* key : {"messages", "conversations"})
    if (const auto it = record.find(key); it != record.end())
      return prompt_from_list(*it, key, where, out);
  std::string content;
  if (const std::string* instruction = string_member(record, "instruction", where)) {
    // The instruction is the request: an input without one asks nothing.
    if (text::chat_detail::trim(*instruction).empty()) return Outcome::blank_user_message;
    content = *instruction;
    const std::string* input = string_member(record, "input", where);
    if (input && !text::chat_detail::trim(*input).empty()) content += "\n\n" + *input;
  } else if (const std::string* q = string_member(record, "question", where)) {
    content = *q;
  } else if (const std::string* p = string_member(record, "prompt", where)) {
    content = *p;
  } else {
    MIL_FAIL(where, ": no prompt in ", io::json_excerpt(record), " (expected \"messages\", ",
             "\"conversations\", \"instruction\", \"question\" or \"prompt\")");
  }
  out.push_back({"user", std::move(content)});
  return text::chat_detail::trim(out.back().content).empty() ? Outcome::blank_user_message
                                                             : Outcome::prompt;
}

// The deduplication key: the roles and trimmed contents, each content after its length, so that
// no two different prompts share a key.
inline std::string dedup_key(const Prompt& p) {
  std::string key;
  for (const auto& m : p.messages) {
    const std::string content = text::chat_detail::trim(m.content);
    key += m.role;
    key += ':';
    key += std::to_string(content.size());
    key += ':';
    key += content;
  }
  return key;
}

// FNV-1a, 64 bits: a hash that is the same on every platform (std::hash is not).
inline uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

}  // namespace prompts_detail

// Calls `each(record, where)` for every non-blank line of a JSONL file (`what` names the file's
// kind in errors, e.g. "prompts"), parsed strictly; `where` is "file:line". A byte-order mark and
// CRLF line ends are accepted.
template <class Each>
void for_each_jsonl_record(const std::filesystem::path& file, const char* what, Each&& each) {
  MIL_CHECK(!std::filesystem::is_directory(file), what, " file '", file.string(),
            "' is a folder: name its .jsonl files");
  std::ifstream in(file, std::ios::binary);
  MIL_CHECK(in.good(), "cannot open ", what, " file '", file.string(),
            "': check the path and its permissions");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (n == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // a UTF-8 byte-order mark
    if (!line.empty() && line.back() == '\r') line.pop_back();          // CRLF line ends
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = file.string() + ":" + std::to_string(n);
    each(io::parse_json_strict(line, where), where);
  }
  MIL_CHECK(!in.bad(), "error reading ", what, " file '", file.string(), "'");
}

// Reads one JSONL file of prompts (layouts and rules in the header comment); `stats`, when
// given, receives the counts of records read and skipped.
inline std::vector<Prompt> read_prompts_jsonl(const std::filesystem::path& file,
                                              PromptReadStats* stats = nullptr) {
  const std::string name = file.filename().string();
  std::vector<Prompt> prompts;
  PromptReadStats st;
  for_each_jsonl_record(file, "prompts", [&](const nlohmann::json& record, const std::string& where) {
    ++st.records;
    Prompt p;
    switch (prompts_detail::prompt_from_record(record, where, p.messages)) {
      case prompts_detail::Outcome::assistant_first: ++st.assistant_first; return;
      case prompts_detail::Outcome::no_user_message: ++st.no_user_message; return;
      case prompts_detail::Outcome::blank_user_message: ++st.blank_user_message; return;
      case prompts_detail::Outcome::prompt: break;
    }
    const std::string* source = prompts_detail::string_member(record, "source", where);
    p.source = source ? *source : name;
    prompts.push_back(std::move(p));
  });
  if (stats) *stats += st;
  return prompts;
}

struct PromptSetOptions {
  uint64_t seed = 0;  // the shuffle: the same seed and prompts give the same split everywhere
  // The held-out set: heldout_count prompts when set, else round(heldout_fraction * total).
  std::optional<int64_t> heldout_count;
  double heldout_fraction = 0.01;
  // At most this many prompts in all (0: no cap): the first of the shuffle, a uniform sample.
  int64_t max_prompts = 0;
  // A third set of this many prompts: the next ones of the shuffle after the capped set, so
  // neither trained on nor held out (e.g. for preference pairs); no more than there are.
  int64_t extra_count = 0;
};

struct PromptSet {
  std::vector<Prompt> train, heldout, extra;  // all in the shuffled order
  int64_t duplicates_dropped = 0;
  int64_t over_cap_dropped = 0;        // beyond max_prompts (and the extra set)
  PromptReadStats read;                // over all files
};

// Reads every file, drops duplicates (the same roles and contents after trimming whitespace; the
// first one read is kept) and splits off the held-out set. The shuffle orders prompts by a
// Philox draw keyed by the seed and a hash of the prompt's text, so a prompt's place depends on
// its content and the seed only: neither the order of the files nor the machine changes the
// split. Reading nothing (no files, or no usable prompt) is an error, as is a split that leaves
// no training prompt.
inline PromptSet read_prompt_set(const std::vector<std::filesystem::path>& files,
                                 const PromptSetOptions& opt) {
  MIL_CHECK(!files.empty(), "no prompt files given");
  MIL_CHECK(opt.max_prompts >= 0, "max_prompts must be >= 0 (0: no cap), got ", opt.max_prompts);
  MIL_CHECK(opt.extra_count >= 0, "extra_count must be >= 0, got ", opt.extra_count);
  MIL_CHECK(!opt.heldout_count || *opt.heldout_count >= 0, "heldout_count must be >= 0, got ",
            *opt.heldout_count);
  MIL_CHECK(opt.heldout_fraction >= 0 && opt.heldout_fraction < 1,
            "heldout_fraction must be in [0, 1), got ", opt.heldout_fraction);
  PromptSet set;
  std::vector<Prompt> all;
  struct Ranked {
    std::array<uint32_t, 4> r;  // Philox draw: the place in the shuffle
    size_t index;               // into `all`; breaks ties, which need equal 64-bit hashes
  };
  std::vector<Ranked> order;
  std::unordered_set<std::string> seen;
  for (const auto& file : files) {
    for (Prompt& p : read_prompts_jsonl(file, &set.read)) {
      std::string key = prompts_detail::dedup_key(p);
      const uint64_t hash = prompts_detail::fnv1a(key);
      if (!seen.insert(std::move(key)).second) {
        ++set.duplicates_dropped;
        continue;
      }
      const rng::U32x4 r = rng::random_block(opt.seed, /*offset=*/0, hash);
      order.push_back({{r.v[0], r.v[1], r.v[2], r.v[3]}, all.size()});
      all.push_back(std::move(p));
    }
  }
  std::string names;
  for (const auto& f : files) names += (names.empty() ? "'" : ", '") + f.string() + "'";
  MIL_CHECK(!all.empty(), "no prompts in ", names, ": ", set.read.records, " records, ",
            set.read.skipped(), " of them skipped (", set.read.assistant_first,
            " open with an assistant message, ", set.read.no_user_message, " have no user message, ",
            set.read.blank_user_message, " a blank one)");
  std::sort(order.begin(), order.end(), [](const Ranked& a, const Ranked& b) {
    return std::tie(a.r, a.index) < std::tie(b.r, b.index);
  });
  int64_t total = int64_t(order.size());
  if (opt.max_prompts > 0 && opt.max_prompts < total) total = opt.max_prompts;
  const int64_t extra = std::min(opt.extra_count, int64_t(order.size()) - total);
  set.over_cap_dropped = int64_t(order.size()) - total - extra;
  const int64_t heldout = opt.heldout_count ? *opt.heldout_count
                                            : int64_t(opt.heldout_fraction * double(total) + 0.5);
  MIL_CHECK(heldout < total, "a held-out set of ", heldout, " prompts leaves none for training: ",
            names, " hold ", total, " distinct prompts",
            opt.max_prompts > 0 ? " (after max_prompts)" : "");
  set.heldout.reserve(size_t(heldout));
  set.train.reserve(size_t(total - heldout));
  for (int64_t i = 0; i < total; ++i)
    (i < heldout ? set.heldout : set.train).push_back(std::move(all[order[size_t(i)].index]));
  set.extra.reserve(size_t(extra));
  for (int64_t i = total; i < total + extra; ++i) set.extra.push_back(std::move(all[order[size_t(i)].index]));
  return set;
}

}  // namespace mil::data
