#pragma once
// Preference pairs from JSONL files (someone else's chosen and rejected answers), rendered
// through the chat template, scored by a reference model and stored like on-policy pairs
// (data/preference_pairs.hpp). Each non-blank line is one JSON object in one of these layouts:
//   {"prompt": P, "chosen": A, "rejected": A}
//   {"conversations": [messages], "chosen": A, "rejected": A}                       (ShareGPT)
// where P is a string (one user message) or a message list, and an answer A is a string, a
// message ({"role", "content"} or ShareGPT's {"from", "value"}, an assistant's), or a message
// list whose last message is the assistant's answer and whose earlier messages, when present,
// are the prompt ("prompt" may then be left out; both answers must then share them).
//
// The prompt is encode_chat_prompt's (text/chat_prompt.hpp); an answer is its content's tokens
// (special-token texts stay text) followed by the template's end-of-turn token, as a sampled
// answer ends. What is malformed (bad JSON, a missing or mistyped field, an unknown role, answers
// with different conversations) is a mil::Error naming file:line; a well-formed pair that cannot
// be used is skipped and counted: a blank prompt or answer, or no user message (empty), the same
// answer twice after trimming (same_answer), a prompt or an answer beyond the limits (too_long).
#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../io/json.hpp"
#include "../text/chat_prompt.hpp"
#include "../util/progress.hpp"
#include "preference_pairs.hpp"
#include "prompts.hpp"

namespace mil::data {

// One well-formed record: its text, where it came from, and why it is skipped, if it is.
struct PairText {
  std::vector<text::ChatMessage> prompt;
  std::string chosen, rejected;
  std::string where;                // file:line
  std::optional<SkipReason> skip;   // set when the pair cannot be used (see the header comment)
};

namespace pairs_jsonl_detail {

using nlohmann::json;

inline text::ChatMessage message(const json& m, size_t i, const char* key, const std::string& where) {
  MIL_CHECK(m.is_object(), where, ": message ", i, " of \"", key, "\" is not an object: ",
            io::json_excerpt(m));
  const bool sharegpt = !m.contains("role");
  const std::string* name = prompts_detail::string_member(m, sharegpt ? "from" : "role", where);
  const std::string* content = prompts_detail::string_member(m, sharegpt ? "value" : "content", where);
  MIL_CHECK(name && content, where, ": message ", i, " of \"", key, "\" needs \"role\" and ",
            "\"content\" (or ShareGPT's \"from\" and \"value\") strings: ", io::json_excerpt(m));
  const std::string_view role = prompts_detail::role_of(*name);
  MIL_CHECK(!role.empty(), where, ": message ", i, " of \"", key, "\" has role '", *name,
            "' (system, user or assistant; ShareGPT's human and gpt)");
  MIL_CHECK(role != "system" || i == 0, where, ": a system message may only come first (message ",
            i, " of \"", key, "\")");
  return {std::string(role), *content};
}

inline std::vector<text::ChatMessage> messages(const json& list, const char* key, const std::string& where) {
  MIL_CHECK(list.is_array(), where, ": \"", key, "\" must be a list of messages, not ",
            io::json_excerpt(list));
  std::vector<text::ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) out.push_back(message(list[i], i, key, where));
  return out;
}

// An answer: its content, and the conversation before it when the answer is a message list.
struct Answer {
  std::string content;
  std::optional<std::vector<text::ChatMessage>> before;
};

inline Answer answer(const json& record, const char* key, const std::string& where) {
  const auto it = record.find(key);
  MIL_CHECK(it != record.end(), where, ": no \"", key, "\" answer in ", io::json_excerpt(record));
  const json& v = *it;
  if (v.is_string()) return {v.get<std::string>(), std::nullopt};
  if (v.is_object()) {
    const text::ChatMessage m = message(v, 0, key, where);
    MIL_CHECK(m.role == "assistant", where, ": the \"", key, "\" answer is a '", m.role,
              "' message, not the assistant's");
    return {m.content, std::nullopt};
  }
  MIL_CHECK(v.is_array(), where, ": \"", key, "\" must be a string, a message or a list of ",
            "messages, not ", io::json_excerpt(v));
  std::vector<text::ChatMessage> list = messages(v, key, where);
  MIL_CHECK(!list.empty() && list.back().role == "assistant", where, ": the last message of \"",
            key, "\" must be the assistant's answer");
  Answer a{list.back().content, std::nullopt};
  list.pop_back();
  a.before = std::move(list);
  return a;
}

inline bool same_conversation(const std::vector<text::ChatMessage>& a,
                              const std::vector<text::ChatMessage>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].role != b[i].role || a[i].content != b[i].content) return false;
  return true;
}

inline PairText pair_from_record(const json& record, const std::string& where) {
  MIL_CHECK(record.is_object(), where, ": a pair line must be a JSON object, not ",
            io::json_excerpt(record));
  PairText p;
  p.where = where;
  const Answer chosen = answer(record, "chosen", where), rejected = answer(record, "rejected", where);
  MIL_CHECK(chosen.before.has_value() == rejected.before.has_value() &&
                (!chosen.before || same_conversation(*chosen.before, *rejected.before)),
            where, ": \"chosen\" and \"rejected\" answer different conversations");
  std::optional<std::vector<text::ChatMessage>> prompt;
  if (const auto it = record.find("conversations"); it != record.end()) {
    prompt = messages(*it, "conversations", where);
  } else if (const auto pt = record.find("prompt"); pt != record.end()) {
    if (pt->is_string())
      prompt = std::vector<text::ChatMessage>{{"user", pt->get<std::string>()}};
    else
      prompt = messages(*pt, "prompt", where);
  }
  // A conversation in the answers is the prompt, or repeats it.
  if (chosen.before && !chosen.before->empty()) {
    MIL_CHECK(!prompt || same_conversation(*prompt, *chosen.before), where, ": the conversation ",
              "before the answers is not the prompt");
    prompt = *chosen.before;
  }
  MIL_CHECK(prompt.has_value(), where, ": no prompt in ", io::json_excerpt(record), " (expected ",
            "\"prompt\", \"conversations\" or answers that are conversations)");
  p.prompt = std::move(*prompt);
  p.chosen = chosen.content;
  p.rejected = rejected.content;
  using text::chat_detail::trim;
  const bool user_last = !p.prompt.empty() && p.prompt.back().role == "user";
  if (!user_last || trim(p.prompt.back().content).empty() || trim(p.chosen).empty() ||
      trim(p.rejected).empty())
    p.skip = SkipReason::empty;
  else if (trim(p.chosen) == trim(p.rejected))
    p.skip = SkipReason::same_answer;
  return p;
}

}  // namespace pairs_jsonl_detail

// Reads one JSONL file of pairs (layouts and rules in the header comment), unusable ones marked.
inline std::vector<PairText> read_pairs_jsonl(const std::filesystem::path& file) {
  std::vector<PairText> pairs;
  for_each_jsonl_record(file, "pairs", [&](const nlohmann::json& record, const std::string& where) {
    pairs.push_back(pairs_jsonl_detail::pair_from_record(record, where));
  });
  return pairs;
}

struct JsonlPairConfig {
  int64_t max_prompt = 512;   // longer prompts are skipped (too_long)
  int64_t max_answer = 256;   // longer answers (end-of-turn token included) are skipped
  int64_t score_batch = 4;    // sequences per forward of the reference
  int64_t pairs_per_shard = 1024;
  bool progress = true;
};

// The stop token an answer ends with: the template's end of turn, else end of sequence.
inline int32_t answer_end_token(const text::Tokenizer& tok, const text::ChatTemplate& tmpl) {
  for (const std::string& s : text::end_of_turn_tokens(tmpl))
    if (const int32_t id = tok.token_id(s); id >= 0) return id;
  MIL_CHECK(tok.eos() >= 0, "preference pairs: the tokenizer has no end-of-turn or ",
            "end-of-sequence token to end an answer with");
  return tok.eos();
}

// The pairs of `files`, in file and line order, into `out_dir` (or the run there continued).
// `id` names the reference model (reference_name, reference_sha256); the data's own identity is
// the SHA-256 of the files' bytes (as the manifest's teacher, named "jsonl").
template <Element T, Device D>
PairStats make_jsonl_preference_pairs(const nn::HybridModel<T, D>& reference,
                                      const text::Tokenizer& tok, const text::ChatTemplate& tmpl,
                                      const std::vector<std::filesystem::path>& files,
                                      const JsonlPairConfig& cfg,
                                      const std::filesystem::path& out_dir, const PairIdentity& id) {
  MIL_CHECK(!files.empty(), "preference pairs: no pairs files given");
  MIL_CHECK(cfg.max_prompt >= 1 && cfg.max_answer >= 1 && cfg.score_batch >= 1 &&
                cfg.pairs_per_shard >= 1,
            "preference pairs: max_prompt (", cfg.max_prompt, "), max_answer (", cfg.max_answer,
            "), score_batch (", cfg.score_batch, ") and pairs_per_shard (", cfg.pairs_per_shard,
            ") must be >= 1");
  MIL_CHECK(reference.config().llama.vocab >= tok.vocab_size(), "preference pairs: the reference ",
            "has ", reference.config().llama.vocab, " logits, the tokenizer ", tok.vocab_size(),
            " tokens");
  util::Sha256 data_hash;
  std::vector<PairText> texts;
  for (const auto& f : files) {
    for (PairText& p : read_pairs_jsonl(f)) texts.push_back(std::move(p));
    util::sha256_update_file(data_hash, f);
  }
  const int32_t end = answer_end_token(tok, tmpl);
  auto encode_answer = [&](const std::string& content) {
    std::vector<int32_t> ids = tok.encode(content, false, false);
    ids.push_back(end);
    return ids;
  };
  // Every pair tokenized (the manifest's hash covers the ids), unusable ones marked.
  std::vector<PreferencePair> pairs(texts.size());
  std::vector<std::vector<int32_t>> all_ids;
  for (size_t i = 0; i < texts.size(); ++i) {
    PairText& t = texts[i];
    PreferencePair& p = pairs[i];
    if (!t.skip) {
      p.prompt = text::encode_chat_prompt(tok, tmpl, t.prompt);
      p.chosen = encode_answer(t.chosen);
      p.rejected = encode_answer(t.rejected);
      if (int64_t(p.prompt.size()) > cfg.max_prompt || p.chosen_len() > cfg.max_answer ||
          p.rejected_len() > cfg.max_answer)
        t.skip = SkipReason::too_long;
      else if (p.chosen == p.rejected)
        t.skip = SkipReason::same_answer;
    }
    for (const auto* ids : {&p.prompt, &p.chosen, &p.rejected}) all_ids.push_back(*ids);
  }
  std::array<int64_t, 3> skipped{};  // too_long, empty, same_answer
  for (const PairText& t : texts)
    if (t.skip) ++skipped[size_t(*t.skip)];
  MIL_CHECK(int64_t(texts.size()) > skipped[0] + skipped[1] + skipped[2], "preference pairs: none ",
            "of the ", texts.size(), " pairs in the files can be used (", skipped[1], " empty, ",
            skipped[2], " with the same answer twice, ", skipped[0], " too long)");

  DatasetManifest settings;
  settings.kind = kPreferencePairsKind;
  settings.pairs.source = "jsonl";
  settings.pairs.reference_name = id.reference_name;
  settings.pairs.reference_sha256 = id.reference_sha256;
  settings.teacher_name = "jsonl";
  settings.teacher_sha256 = data_hash.finish_hex();
  settings.tokenizer_fingerprint = tokenizer_fingerprint(tok);
  settings.vocab_size = tok.vocab_size();
  settings.chat_template = text::to_string(tmpl.family);
  settings.sampling = rejected_sampling();  // unused: no answer is sampled
  settings.max_prompt = cfg.max_prompt;
  settings.max_answer = cfg.max_answer;
  settings.stop_ids = {end};
  settings.sequences_per_shard = cfg.pairs_per_shard;
  settings.prompt_count = int64_t(texts.size());
  settings.prompts_sha256 = prompts_hash(all_ids);
  settings.compute = std::string(D::name) + " " + std::string(dtype_name(dtype_of<T>::value));
  PreferencePairWriter writer(out_dir, settings);

  const int64_t n = int64_t(texts.size());
  PairStats stats;
  stats.prompts = n;
  stats.resumed_at = writer.next_prompt();
  util::ProgressBar bar("preference pairs", n - stats.resumed_at);
  int64_t scored_tokens = 0;
  for (int64_t first = writer.next_prompt(); first < n;) {
    // The next score_batch usable pairs (and the skipped ones among them), scored at once.
    std::vector<PreferencePair> group;
    int64_t last = first;
    for (; last < n && int64_t(group.size()) < cfg.score_batch; ++last)
      if (!texts[size_t(last)].skip) group.push_back(std::move(pairs[size_t(last)]));
    score_pairs(reference, std::span(group), cfg.score_batch);
    stats.scored_sequences += 2 * int64_t(group.size());
    size_t next = 0;
    for (int64_t i = first; i < last; ++i) {
      if (texts[size_t(i)].skip) {
        writer.skip(i, *texts[size_t(i)].skip);
        continue;
      }
      const PreferencePair& p = group[next];
      scored_tokens += int64_t(2 * p.prompt.size()) + p.chosen_len() + p.rejected_len();
      writer.add(i, std::move(group[next++]));
    }
    first = last;
    if (cfg.progress) {
      const double s = bar.seconds();
      char fields[64];
      std::snprintf(fields, sizeof fields, "%.0f tok/s scored", s > 0 ? double(scored_tokens) / s : 0.0);
      bar.update(first - stats.resumed_at, fields);
    }
  }
  writer.finish();
  const DatasetManifest& m = writer.manifest();
  stats.pairs = m.sequences;
  stats.skipped_empty = m.skipped_empty;
  stats.skipped_same_answer = m.skipped_same_answer;
  stats.skipped_too_long = m.skipped_too_long;
  stats.seconds = bar.seconds();
  return stats;
}

}  // namespace mil::data
