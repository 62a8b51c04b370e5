#pragma once
// A token dataset on disk: a folder with manifest.json and shard files of records, as the
// pseudo-labeller writes them (kind "sequences": labelled sequences, data/sequence.hpp) and the
// preference-pair maker (kind "preference_pairs", data/preference_pair.hpp); distillation and
// evaluation read them. docs/dataset_format.md describes the format. One writer and one shard
// reader serve every kind: a record type brings its codec (ShardCodec), the rest is shared.
//
// - The manifest identifies what made the data (the teacher's SHA-256, the tokenizer's
//   fingerprint, the chat template family) and how (sampler settings, seed, length limits, top-k),
//   and records the progress: the prompts labelled so far, counts, and the finished shards.
// - A shard is a finished unit: a header (magic, version, counts, SHA-256 of the payload) and the
//   records. A shard cut short or changed is detected by its size and hash.
// - Every file is written under a temporary name and renamed, the manifest after the shard it
//   lists, so a run stopped at any moment leaves a valid dataset of the shards finished so far,
//   which TokenDatasetWriter continues.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../generate/sampler.hpp"
#include "../io/json.hpp"
#include "../io/limits.hpp"
#include "../io/safetensors_writer.hpp"  // AtomicFile, write_text_file_atomic
#include "../text/tokenizer.hpp"
#include "../util/sha256.hpp"
#include "sequence.hpp"

namespace mil::data {

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kDatasetFormat = "mil-token-dataset";
inline constexpr const char* kSequencesKind = "sequences";
inline constexpr const char* kPreferencePairsKind = "preference_pairs";
inline constexpr int kDatasetVersion = 1;
inline constexpr char kShardMagic[8] = {'M', 'I', 'L', 'T', 'O', 'K', 'S', '\0'};
inline constexpr int64_t kShardHeaderBytes = 80;

// A hash over everything that decides how text becomes token ids and back: model kind,
// pre-tokenizer, every token with its type and score, the merges in rank order, the special ids
// and flags. Two tokenizers with the same fingerprint produce the same ids.
inline std::string tokenizer_fingerprint(const text::Tokenizer& tokenizer) {
  const text::TokenizerData& d = tokenizer.data();
  util::Sha256 h;
  auto str = [&](std::string_view s) {  // length-prefixed: no two lists hash alike
    h.update_value(uint64_t(s.size()));
    h.update(s);
  };
  str("mil-tokenizer-fingerprint-1");
  str(d.model);
  str(d.pre);
  h.update_value(uint64_t(d.tokens.size()));
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    str(d.tokens[i]);
    h.update_value(tokenizer.type(int32_t(i)));
    h.update_value(d.scores.empty() ? 0.f : d.scores[i]);
  }
  h.update_value(uint64_t(d.merges.size()));
  for (const std::string& m : d.merges) str(m);
  for (int32_t id : {d.bos, d.eos, d.unk, d.pad}) h.update_value(id);
  // The space prefix is SentencePiece's ("llama"); byte-level BPE never reads it, and the GGUF and
  // tokenizer.json readers set it differently for the same byte-level tokenizer.
  const bool space_prefix = d.model == "llama" && d.add_space_prefix;
  for (bool flag : {d.add_bos, space_prefix, d.ignore_merges}) h.update_value(uint8_t(flag));
  return h.finish_hex();
}

// One finished shard as the manifest lists it.
struct ShardInfo {
  std::string file;                   // name within the dataset folder
  int64_t first_prompt = 0;           // the prompts [first_prompt, end_prompt) it covers
  int64_t end_prompt = 0;
  int64_t sequences = 0;
  int64_t prompt_tokens = 0;
  int64_t answer_tokens = 0;
  std::string payload_sha256;         // as in the shard's header
};

// How a preference-pair dataset was made (kind "preference_pairs"; unused for other kinds).
struct PairSettings {
  std::string source;            // "on_policy" (rejected: the student's samples) or "jsonl"
  std::string student_name;      // on-policy: the model whose samples are the rejected answers
  std::string student_sha256;
  std::string reference_name;    // the model of the stored reference log-probabilities
  std::string reference_sha256;
  int64_t samples_per_prompt = 1;  // on-policy: the least likely of these (by the teacher) is kept
};

struct DatasetManifest {
  std::string kind = kSequencesKind;    // what a record is: kSequencesKind, kPreferencePairsKind
  PairSettings pairs;                   // kind == kPreferencePairsKind only
  // What made the data (filled by the labeller's caller).
  std::string teacher_name;
  std::string teacher_sha256;           // util::sha256_model of the teacher file or folder
  std::string tokenizer_fingerprint;    // data::tokenizer_fingerprint
  int64_t vocab_size = 0;
  std::string chat_template;            // family, e.g. "chatml"
  // How (the labeller's settings; sampling.seed is unused, `seed` is the run's seed).
  gen::SamplingConfig sampling;
  uint64_t seed = 0;
  int64_t max_prompt = 0;               // longer prompts are skipped
  int64_t max_answer = 0;               // answers stop here if no stop token came
  std::vector<int32_t> stop_ids;
  int32_t topk = 0;                     // teacher log-probs stored per answer token; 0: none
  int64_t sequences_per_shard = 0;
  int64_t prompt_count = 0;             // prompts given to the labeller
  std::string prompts_sha256;           // of their token ids (prompts_hash)
  std::string compute;                  // what ran the teacher, e.g. "cpu f32" (informational)
  // Progress.
  bool complete = false;
  int64_t prompts_done = 0;             // prompts [0, prompts_done) are in the shards or skipped
  int64_t sequences = 0, prompt_tokens = 0, answer_tokens = 0;
  int64_t skipped_too_long = 0;         // prompt longer than max_prompt
  int64_t skipped_empty = 0;            // prompt (or a pair's answer) with no tokens
  int64_t skipped_same_answer = 0;      // preference pairs: rejected == chosen
  std::vector<ShardInfo> shards;

  std::string source;                   // where it was read from (errors); not stored
};

// The hash of a list of prompts (token ids), which the manifest records so that a run is only
// continued with the same prompts.
inline std::string prompts_hash(const std::vector<std::vector<int32_t>>& prompts) {
  util::Sha256 h;
  h.update_value(uint64_t(prompts.size()));
  for (const auto& p : prompts) {
    h.update_value(uint64_t(p.size()));
    for (int32_t id : p) h.update_value(id);
  }
  return h.finish_hex();
}

namespace detail {

using ojson = nlohmann::ordered_json;

// The parts of a manifest that must agree for a run to continue another: identity and settings.
inline ojson settings_json(const DatasetManifest& m) {
  ojson j;
  j["kind"] = m.kind;
  j["teacher"] = {{"name", m.teacher_name}, {"sha256", m.teacher_sha256}};
  j["tokenizer"] = {{"fingerprint", m.tokenizer_fingerprint}, {"vocab_size", m.vocab_size}};
  j["chat_template"] = m.chat_template;
  const gen::SamplingConfig& s = m.sampling;
  j["labelling"] = {{"temperature", s.temperature},
                    {"top_k", s.top_k},
                    {"top_p", s.top_p},
                    {"min_p", s.min_p},
                    {"repetition_penalty", s.repetition_penalty},
                    {"repeat_last_n", s.repeat_last_n},
                    {"seed", m.seed},
                    {"max_prompt", m.max_prompt},
                    {"max_answer", m.max_answer},
                    {"stop_ids", m.stop_ids},
                    {"topk", m.topk},
                    {"sequences_per_shard", m.sequences_per_shard},
                    {"prompts", {{"count", m.prompt_count}, {"sha256", m.prompts_sha256}}}};
  if (m.kind == kPreferencePairsKind) {
    const PairSettings& p = m.pairs;
    j["pairs"] = {{"source", p.source},
                  {"student", {{"name", p.student_name}, {"sha256", p.student_sha256}}},
                  {"reference", {{"name", p.reference_name}, {"sha256", p.reference_sha256}}},
                  {"samples_per_prompt", p.samples_per_prompt}};
  }
  return j;
}

inline ojson manifest_json(const DatasetManifest& m) {
  ojson j;
  j["format"] = kDatasetFormat;
  j["version"] = kDatasetVersion;
  const ojson settings = settings_json(m);
  for (const auto& [key, value] : settings.items()) j[key] = value;
  j["compute"] = m.compute;
  j["progress"] = {{"complete", m.complete},
                   {"prompts_done", m.prompts_done},
                   {"sequences", m.sequences},
                   {"prompt_tokens", m.prompt_tokens},
                   {"answer_tokens", m.answer_tokens},
                   {"skipped", {{"too_long", m.skipped_too_long}, {"empty", m.skipped_empty}}}};
  if (m.kind == kPreferencePairsKind)
    j["progress"]["skipped"]["same_answer"] = m.skipped_same_answer;
  ojson shards = ojson::array();
  for (const ShardInfo& s : m.shards)
    shards.push_back({{"file", s.file},
                      {"first_prompt", s.first_prompt},
                      {"end_prompt", s.end_prompt},
                      {"sequences", s.sequences},
                      {"prompt_tokens", s.prompt_tokens},
                      {"answer_tokens", s.answer_tokens},
                      {"payload_sha256", s.payload_sha256}});
  j["shards"] = shards;
  return j;
}

inline bool is_hex_digest(const std::string& s) {
  return s.size() == 64 &&
         s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// A shard file name the writer makes: shard-NNNNN.bin, nothing that leaves the folder.
inline std::string shard_name(int64_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "shard-%05lld.bin", (long long)index);
  return buf;
}

// The manifest's internal consistency: settings in range, shards contiguous from prompt 0, counts
// the sums of the shards', every prompt done either labelled or skipped.
inline void check_manifest(const DatasetManifest& m) {
  const std::string& w = m.source;
  MIL_CHECK(m.kind == kSequencesKind || m.kind == kPreferencePairsKind, w, ": kind '", m.kind,
            "' (expected ", kSequencesKind, " or ", kPreferencePairsKind, ")");
  if (m.kind == kPreferencePairsKind) {
    const PairSettings& p = m.pairs;
    MIL_CHECK(p.source == "on_policy" || p.source == "jsonl", w, ": pairs source '", p.source,
              "' (expected on_policy or jsonl)");
    MIL_CHECK(is_hex_digest(p.reference_sha256), w, ": reference sha256 '", p.reference_sha256,
              "' is not 64 lowercase hex digits");
    MIL_CHECK(p.source != "on_policy" || is_hex_digest(p.student_sha256), w, ": student sha256 '",
              p.student_sha256, "' is not 64 lowercase hex digits");
    MIL_CHECK(p.samples_per_prompt >= 1 && p.samples_per_prompt <= 1024, w,
              ": samples_per_prompt ", p.samples_per_prompt, " must be in [1, 1024]");
    MIL_CHECK(m.topk == 0, w, ": preference pairs store no top-k (topk ", m.topk, ")");
  }
  MIL_CHECK(m.kind == kPreferencePairsKind || m.skipped_same_answer == 0, w,
            ": only preference pairs skip same answers");
  MIL_CHECK(is_hex_digest(m.teacher_sha256), w, ": teacher sha256 '", m.teacher_sha256,
            "' is not 64 lowercase hex digits");
  MIL_CHECK(is_hex_digest(m.tokenizer_fingerprint), w, ": tokenizer fingerprint '",
            m.tokenizer_fingerprint, "' is not 64 lowercase hex digits");
  io::limits::check_count(m.vocab_size, io::limits::kMaxVocab, w, "tokenizer vocab_size");
  m.sampling.validate();
  io::limits::check_count(m.max_prompt, io::limits::kMaxContext, w, "max_prompt");
  io::limits::check_count(m.max_answer, io::limits::kMaxContext, w, "max_answer");
  io::limits::check_count(m.sequences_per_shard, int64_t(1) << 40, w, "sequences_per_shard");
  for (int32_t id : m.stop_ids)
    MIL_CHECK(id >= 0 && id < m.vocab_size, w, ": stop id ", id, " is outside the vocabulary");
  MIL_CHECK(m.topk >= 0 && m.topk <= m.vocab_size && m.topk <= 4096, w, ": topk ", m.topk,
            " must be in [0, min(vocab, 4096)]");
  MIL_CHECK(m.prompt_count >= 0 && m.prompts_done >= 0 && m.prompts_done <= m.prompt_count, w,
            ": ", m.prompts_done, " prompts done of ", m.prompt_count);
  MIL_CHECK(!m.complete || m.prompts_done == m.prompt_count, w, ": marked complete after ",
            m.prompts_done, " of ", m.prompt_count, " prompts");
  int64_t next = 0, seqs = 0, prompt_tokens = 0, answer_tokens = 0;
  for (size_t i = 0; i < m.shards.size(); ++i) {
    const ShardInfo& s = m.shards[i];
    MIL_CHECK(s.file == shard_name(int64_t(i)), w, ": shard ", i, " is named '", s.file,
              "', expected '", shard_name(int64_t(i)), "'");
    MIL_CHECK(s.first_prompt == next && s.end_prompt > s.first_prompt, w, ": shard '", s.file,
              "' covers prompts [", s.first_prompt, ", ", s.end_prompt, "), expected to start at ",
              next);
    MIL_CHECK(s.sequences >= 1 && s.sequences <= s.end_prompt - s.first_prompt &&
                  s.sequences <= m.sequences_per_shard,
              w, ": shard '", s.file, "' has ", s.sequences, " sequences for ",
              s.end_prompt - s.first_prompt, " prompts (at most ", m.sequences_per_shard,
              " a shard)");
    MIL_CHECK(s.prompt_tokens >= 0 && s.answer_tokens >= 0, w, ": shard '", s.file,
              "' has negative token counts");
    MIL_CHECK(is_hex_digest(s.payload_sha256), w, ": shard '", s.file, "' has no valid sha256");
    next = s.end_prompt;
    seqs = checked_add(seqs, s.sequences);
    prompt_tokens = checked_add(prompt_tokens, s.prompt_tokens);
    answer_tokens = checked_add(answer_tokens, s.answer_tokens);
  }
  // Progress is saved with each shard, and at the end (when skipped prompts may follow the last).
  MIL_CHECK(m.complete ? next <= m.prompts_done : next == m.prompts_done, w, ": the shards cover ",
            next, " prompts, the manifest says ", m.prompts_done, " are done");
  MIL_CHECK(seqs == m.sequences && prompt_tokens == m.prompt_tokens &&
                answer_tokens == m.answer_tokens,
            w, ": counts (", m.sequences, " sequences, ", m.prompt_tokens, " + ", m.answer_tokens,
            " tokens) are not the sums over the shards (", seqs, ", ", prompt_tokens, " + ",
            answer_tokens, ")");
  const int64_t skipped = m.skipped_too_long + m.skipped_empty + m.skipped_same_answer;
  MIL_CHECK(m.skipped_too_long >= 0 && m.skipped_empty >= 0 && m.skipped_same_answer >= 0 &&
                m.sequences + skipped == m.prompts_done,
            w, ": ", m.sequences, " sequences and ", skipped,
            " skipped prompts do not add up to the ", m.prompts_done, " prompts done");
}

inline void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  const size_t at = out.size();
  out.resize(at + 4);
  std::memcpy(out.data() + at, &v, 4);
}
inline void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  const size_t at = out.size();
  out.resize(at + 8);
  std::memcpy(out.data() + at, &v, 8);
}
template <class E>
void put_array(std::vector<uint8_t>& out, const std::vector<E>& v) {
  const size_t at = out.size();
  out.resize(at + v.size() * sizeof(E));
  if (!v.empty()) std::memcpy(out.data() + at, v.data(), v.size() * sizeof(E));
}

// Reads little-endian values from a byte range; running past its end is an error naming `what`.
class ByteReader {
 public:
  ByteReader(std::span<const uint8_t> bytes, const std::string& what) : b_(bytes), what_(what) {}
  template <class E>
  void read(E* dst, size_t n, const char* field) {
    MIL_CHECK(n <= (b_.size() - at_) / sizeof(E), what_, ": ", field, " runs past the end");
    if (n) std::memcpy(dst, b_.data() + at_, n * sizeof(E));
    at_ += n * sizeof(E);
  }
  uint32_t u32(const char* field) {
    uint32_t v;
    read(&v, 1, field);
    return v;
  }
  uint64_t u64(const char* field) {
    uint64_t v;
    read(&v, 1, field);
    return v;
  }
  size_t left() const { return b_.size() - at_; }

 private:
  std::span<const uint8_t> b_;
  std::string what_;
  size_t at_ = 0;
};

// Every id of a record read from a shard is in [0, vocab); `what` names the field in errors.
inline void check_ids(const std::vector<int32_t>& ids, int64_t vocab, const std::string& rec,
                      const char* what) {
  for (size_t t = 0; t < ids.size(); ++t)
    MIL_CHECK(ids[t] >= 0 && ids[t] < vocab, rec, ": ", what, " ", t, " is id ", ids[t],
              ", outside the vocabulary of ", vocab);
}

}  // namespace detail

// Writes a manifest (under a temporary name, renamed onto manifest.json).
inline void write_manifest(const std::filesystem::path& dir, const DatasetManifest& m) {
  io::write_text_file_atomic(dir / kManifestName, detail::manifest_json(m).dump(2) + "\n");
}

// Reads and checks a manifest: format, version, every field present and of its type, and its
// consistency (shards contiguous, counts adding up). Does not open the shards.
inline DatasetManifest read_manifest(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / kManifestName;
  const std::string w = "dataset manifest '" + path.string() + "'";
  std::error_code ec;
  MIL_CHECK(std::filesystem::exists(path, ec), "'", dir.string(), "' is not a token dataset: ",
            "it has no ", kManifestName, " (make one with the pseudo-labeller)");
  const nlohmann::json j = io::read_json_file_strict(path, 1 << 28);
  DatasetManifest m;
  m.source = w;
  try {
    MIL_CHECK(j.is_object() && j.value("format", "") == kDatasetFormat, w, ": not a ",
              kDatasetFormat, " manifest (\"format\" is missing or different)");
    const int version = j.at("version").get<int>();
    MIL_CHECK(version == kDatasetVersion, w, ": format version ", version, "; this build reads ",
              "version ", kDatasetVersion);
    m.kind = j.value("kind", std::string(kSequencesKind));  // version-1 files before kinds
    if (m.kind == kPreferencePairsKind) {
      const auto& p = j.at("pairs");
      m.pairs.source = p.at("source").get<std::string>();
      m.pairs.student_name = p.at("student").at("name").get<std::string>();
      m.pairs.student_sha256 = p.at("student").at("sha256").get<std::string>();
      m.pairs.reference_name = p.at("reference").at("name").get<std::string>();
      m.pairs.reference_sha256 = p.at("reference").at("sha256").get<std::string>();
      m.pairs.samples_per_prompt = p.at("samples_per_prompt").get<int64_t>();
      m.skipped_same_answer = j.at("progress").at("skipped").at("same_answer").get<int64_t>();
    }
    m.teacher_name = j.at("teacher").at("name").get<std::string>();
    m.teacher_sha256 = j.at("teacher").at("sha256").get<std::string>();
    m.tokenizer_fingerprint = j.at("tokenizer").at("fingerprint").get<std::string>();
    m.vocab_size = j.at("tokenizer").at("vocab_size").get<int64_t>();
    m.chat_template = j.at("chat_template").get<std::string>();
    const auto& l = j.at("labelling");
    m.sampling.temperature = l.at("temperature").get<float>();
    m.sampling.top_k = l.at("top_k").get<int32_t>();
    m.sampling.top_p = l.at("top_p").get<float>();
    m.sampling.min_p = l.at("min_p").get<float>();
    m.sampling.repetition_penalty = l.at("repetition_penalty").get<float>();
    m.sampling.repeat_last_n = l.at("repeat_last_n").get<int32_t>();
    m.seed = l.at("seed").get<uint64_t>();
    m.max_prompt = l.at("max_prompt").get<int64_t>();
    m.max_answer = l.at("max_answer").get<int64_t>();
    m.stop_ids = l.at("stop_ids").get<std::vector<int32_t>>();
    m.topk = l.at("topk").get<int32_t>();
    m.sequences_per_shard = l.at("sequences_per_shard").get<int64_t>();
    m.prompt_count = l.at("prompts").at("count").get<int64_t>();
    m.prompts_sha256 = l.at("prompts").at("sha256").get<std::string>();
    m.compute = j.at("compute").get<std::string>();
    const auto& p = j.at("progress");
    m.complete = p.at("complete").get<bool>();
    m.prompts_done = p.at("prompts_done").get<int64_t>();
    m.sequences = p.at("sequences").get<int64_t>();
    m.prompt_tokens = p.at("prompt_tokens").get<int64_t>();
    m.answer_tokens = p.at("answer_tokens").get<int64_t>();
    m.skipped_too_long = p.at("skipped").at("too_long").get<int64_t>();
    m.skipped_empty = p.at("skipped").at("empty").get<int64_t>();
    for (const auto& s : j.at("shards"))
      m.shards.push_back({s.at("file").get<std::string>(), s.at("first_prompt").get<int64_t>(),
                          s.at("end_prompt").get<int64_t>(), s.at("sequences").get<int64_t>(),
                          s.at("prompt_tokens").get<int64_t>(),
                          s.at("answer_tokens").get<int64_t>(),
                          s.at("payload_sha256").get<std::string>()});
  } catch (const nlohmann::json::exception& e) {
    MIL_FAIL(w, ": a field is missing or of the wrong type: ", e.what());
  }
  detail::check_manifest(m);
  return m;
}

// Throws unless the dataset was made by the teacher and tokenizer given (their
// util::sha256_model and data::tokenizer_fingerprint): data labelled by another teacher or
// tokenized by another tokenizer would train the student on the wrong distribution or ids.
inline void check_dataset_matches(const DatasetManifest& m, std::string_view teacher_sha256,
                                  std::string_view tokenizer_fingerprint) {
  MIL_CHECK(m.teacher_sha256 == teacher_sha256, m.source, ": the dataset was made by another ",
            "teacher ('", m.teacher_name, "', sha256 ", m.teacher_sha256, "), not the one given ",
            "(sha256 ", teacher_sha256, "): label the prompts with this teacher, or give the ",
            "teacher that made it");
  MIL_CHECK(m.tokenizer_fingerprint == tokenizer_fingerprint, m.source, ": the dataset was made ",
            "with another tokenizer (fingerprint ", m.tokenizer_fingerprint, "), not the one given ",
            "(fingerprint ", tokenizer_fingerprint, "): its token ids mean other text");
}

// How one kind of record is stored: ShardCodec<Record> names the kind and its shard magic, counts
// a record's prompt and answer tokens, checks a record before it is written, and writes and reads
// its bytes. The header, hashing, checks and atomic writes around them are shared.
template <class Record>
struct ShardCodec;

template <>
struct ShardCodec<LabelledSequence> {
  static constexpr const char* kind = kSequencesKind;
  static constexpr const char* magic = kShardMagic;
  static int64_t prompt_tokens(const LabelledSequence& s) { return s.prompt_len; }
  static int64_t answer_tokens(const LabelledSequence& s) { return s.answer_len(); }

  // A record the writer is given (prompt `prompt`): lengths within the limits, ids in the vocabulary.
  static void check(const LabelledSequence& s, const DatasetManifest& m, int64_t prompt) {
    MIL_CHECK(s.prompt_len >= 1 && s.answer_len() >= 1, "token dataset: a sequence needs a ",
              "prompt and an answer (", s.prompt_len, " + ", s.answer_len(), " tokens)");
    MIL_CHECK(s.prompt_len <= m.max_prompt && s.answer_len() <= m.max_answer,
              "token dataset: prompt ", prompt, " gives ", s.prompt_len, " + ", s.answer_len(),
              " tokens, beyond max_prompt ", m.max_prompt, " / max_answer ", m.max_answer);
    for (int32_t id : s.tokens)
      MIL_CHECK(id >= 0 && id < m.vocab_size, "token dataset: prompt ", prompt, " has id ", id,
                ", outside the vocabulary of ", m.vocab_size);
    MIL_CHECK(s.topk == m.topk && int64_t(s.topk_ids.size()) == s.answer_len() * m.topk &&
                  s.topk_logprobs.size() == s.topk_ids.size(),
              "token dataset: a sequence has top-", s.topk, " data of ", s.topk_ids.size(), "/",
              s.topk_logprobs.size(), " entries, the dataset stores top-", m.topk);
  }

  static void put(std::vector<uint8_t>& out, const LabelledSequence& s) {
    detail::put_u32(out, uint32_t(s.tokens.size()));
    detail::put_u32(out, uint32_t(s.prompt_len));
    detail::put_array(out, s.tokens);
    detail::put_array(out, s.topk_ids);
    detail::put_array(out, s.topk_logprobs);
  }

  // One record (`rec` names it in errors), checked: lengths, ids, log-probs.
  static LabelledSequence get(detail::ByteReader& r, const DatasetManifest& m,
                              const std::string& rec) {
    LabelledSequence s;
    const int64_t n = r.u32("token count"), prompt_len = r.u32("prompt length");
    MIL_CHECK(prompt_len >= 1 && prompt_len <= m.max_prompt && n > prompt_len &&
                  n - prompt_len <= m.max_answer,
              rec, ": ", prompt_len, " prompt + ", n - prompt_len, " answer tokens; expected 1 to ",
              m.max_prompt, " + 1 to ", m.max_answer);
    s.prompt_len = int32_t(prompt_len);
    s.tokens.resize(size_t(n));
    r.read(s.tokens.data(), size_t(n), "tokens");
    detail::check_ids(s.tokens, m.vocab_size, rec, "token");
    s.topk = m.topk;
    const size_t entries = size_t(n - prompt_len) * size_t(m.topk);
    s.topk_ids.resize(entries);
    s.topk_logprobs.resize(entries);
    r.read(s.topk_ids.data(), entries, "top-k ids");
    r.read(s.topk_logprobs.data(), entries, "top-k log-probs");
    detail::check_ids(s.topk_ids, m.vocab_size, rec, "top-k id");
    for (size_t e = 0; e < entries; ++e)
      MIL_CHECK(!std::isnan(s.topk_logprobs[e]) && s.topk_logprobs[e] <= 0.f, rec,
                ": top-k log-prob ", s.topk_logprobs[e], " is not <= 0");
    return s;
  }
};

// The bytes of a shard holding `records` (checked by the writer; topk: the manifest's).
template <class Record>
std::vector<uint8_t> serialize_shard(const std::vector<Record>& records, int32_t topk) {
  using Codec = ShardCodec<Record>;
  std::vector<uint8_t> payload;
  uint64_t tokens = 0, answer = 0;
  for (const Record& rec : records) {
    Codec::put(payload, rec);
    tokens += uint64_t(Codec::prompt_tokens(rec) + Codec::answer_tokens(rec));
    answer += uint64_t(Codec::answer_tokens(rec));
  }
  util::Sha256 h;
  h.update(payload);
  const util::Sha256::Digest digest = h.finish();
  std::vector<uint8_t> out(Codec::magic, Codec::magic + 8);
  detail::put_u32(out, uint32_t(kDatasetVersion));
  detail::put_u32(out, uint32_t(topk));
  detail::put_u64(out, records.size());
  detail::put_u64(out, tokens);
  detail::put_u64(out, answer);
  detail::put_u64(out, payload.size());
  out.insert(out.end(), digest.begin(), digest.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// The hex SHA-256 of a serialized shard's payload, as its header holds it.
inline std::string shard_payload_sha256(std::span<const uint8_t> shard) {
  util::Sha256::Digest d;
  std::memcpy(d.data(), shard.data() + 48, d.size());
  return util::Sha256::to_hex(d);
}

// Reads one shard and checks it against the manifest's entry `info`: header, length, hash, counts,
// and every record (ShardCodec<Record>::get).
template <class Record>
void read_shard(const std::filesystem::path& path, const DatasetManifest& m, const ShardInfo& info,
                std::vector<Record>& out) {
  using Codec = ShardCodec<Record>;
  const std::string w = "dataset shard '" + path.string() + "'";
  MIL_CHECK(m.kind == Codec::kind, w, ": the dataset holds ", m.kind, ", not ", Codec::kind);
  std::ifstream in(path, std::ios::binary);
  MIL_CHECK(in.good(), w, ": cannot open it (the manifest lists it; was it moved or deleted?)");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MIL_CHECK(!in.bad(), w, ": error reading it");
  MIL_CHECK(int64_t(bytes.size()) >= kShardHeaderBytes &&
                std::memcmp(bytes.data(), Codec::magic, 8) == 0,
            w, ": not a shard of a token dataset of ", Codec::kind, " (no ", kShardHeaderBytes,
            "-byte header with its magic)");
  const std::span<const uint8_t> all(bytes);
  detail::ByteReader head(all.subspan(8, size_t(kShardHeaderBytes) - 8 - 32), w);
  const uint32_t version = head.u32("version");
  MIL_CHECK(version == uint32_t(kDatasetVersion), w, ": version ", version, ", expected ",
            kDatasetVersion);
  const uint32_t topk = head.u32("topk");
  const uint64_t sequences = head.u64("sequences"), tokens = head.u64("tokens");
  const uint64_t answer = head.u64("answer tokens"), payload_bytes = head.u64("payload bytes");
  MIL_CHECK(payload_bytes == bytes.size() - uint64_t(kShardHeaderBytes), w, ": the header ",
            "announces ", payload_bytes, " payload bytes, the file holds ",
            bytes.size() - uint64_t(kShardHeaderBytes), " (cut short or appended to)");
  const std::span<const uint8_t> payload = all.subspan(size_t(kShardHeaderBytes));
  util::Sha256 h;
  h.update(payload);
  const std::string digest = util::Sha256::to_hex(h.finish());
  MIL_CHECK(digest == shard_payload_sha256(bytes), w, ": the payload's SHA-256 is not the one in ",
            "its header: the file is corrupt");
  MIL_CHECK(digest == info.payload_sha256, w, ": its SHA-256 (", digest, ") is not the one the ",
            "manifest lists (", info.payload_sha256, "): the shard belongs to another run");
  MIL_CHECK(int64_t(topk) == m.topk && int64_t(sequences) == info.sequences &&
                int64_t(answer) == info.answer_tokens &&
                int64_t(tokens) == checked_add(info.prompt_tokens, info.answer_tokens),
            w, ": header counts (top-", topk, ", ", sequences, " sequences, ", tokens, " tokens, ",
            answer, " answer tokens) differ from the manifest's");
  detail::ByteReader r(payload, w);
  uint64_t seen_tokens = 0, seen_answer = 0;
  for (uint64_t i = 0; i < sequences; ++i) {
    Record rec = Codec::get(r, m, w + " record " + std::to_string(i));
    seen_tokens += uint64_t(Codec::prompt_tokens(rec) + Codec::answer_tokens(rec));
    seen_answer += uint64_t(Codec::answer_tokens(rec));
    out.push_back(std::move(rec));
  }
  MIL_CHECK(r.left() == 0 && seen_tokens == tokens && seen_answer == answer, w, ": the records ",
            "hold ", seen_tokens, " tokens (", seen_answer, " answer) and leave ", r.left(),
            " bytes; the header says ", tokens, " (", answer, ")");
}

// Reads the manifest and every record of a dataset of `Record`s, checking all of it
// (read_manifest, read_shard). A dataset whose making was interrupted is an error unless
// `allow_incomplete`. In errors, `what` names the records, `making` the work and `maker` the tool.
template <class Record>
std::vector<Record> read_records(const std::filesystem::path& dir, DatasetManifest& m,
                                 bool allow_incomplete, const char* what, const char* making,
                                 const char* maker) {
  m = read_manifest(dir);
  MIL_CHECK(m.kind == ShardCodec<Record>::kind, m.source, ": the dataset holds ", m.kind,
            ", not ", what);
  MIL_CHECK(m.complete || allow_incomplete, m.source, ": ", making, " stopped after ", m.prompts_done,
            " of ", m.prompt_count, " prompts; run the ", maker, " again with the same settings ",
            "to finish it");
  std::vector<Record> records;
  records.reserve(size_t(m.sequences));
  for (const ShardInfo& s : m.shards) read_shard(dir / s.file, m, s, records);
  return records;
}

struct TokenDataset {
  DatasetManifest manifest;
  std::vector<LabelledSequence> sequences;  // in prompt order
};

inline TokenDataset read_token_dataset(const std::filesystem::path& dir,
                                       bool allow_incomplete = false) {
  TokenDataset d;
  d.sequences = read_records<LabelledSequence>(dir, d.manifest, allow_incomplete,
                                               "labelled sequences", "labelling", "labeller");
  return d;
}

// Why a prompt gave no record: too long, empty (prompt, or a pair's answer), or a pair whose
// rejected answer is the chosen one.
enum class SkipReason { too_long, empty, same_answer };

// Writes a dataset of `Record`s, or continues one: the maker gives it every prompt in order, as a
// record (add) or a skip; each `sequences_per_shard` records become a shard, written and then
// listed in the manifest. Opening a folder that holds a run with other settings (or other data)
// is an error: nothing of another run is ever overwritten.
template <class Record>
class DatasetWriter {
 public:
  // `settings`: identity and settings (progress and shards are ignored).
  DatasetWriter(const std::filesystem::path& dir, const DatasetManifest& settings) : dir_(dir) {
    namespace fs = std::filesystem;
    m_ = settings;
    MIL_CHECK(m_.kind == ShardCodec<Record>::kind, "token dataset: a writer of ",
              ShardCodec<Record>::kind, " given settings of kind ", m_.kind);
    m_.source = "dataset manifest '" + (dir / kManifestName).string() + "'";
    m_.complete = false;
    m_.prompts_done = m_.sequences = m_.prompt_tokens = m_.answer_tokens = 0;
    m_.skipped_too_long = m_.skipped_empty = m_.skipped_same_answer = 0;
    m_.shards.clear();
    detail::check_manifest(m_);
    std::error_code ec;
    if (fs::exists(dir / kManifestName, ec)) {
      resume();
    } else {
      MIL_CHECK(!fs::exists(dir, ec) || fs::is_empty(dir, ec), "token dataset: '", dir.string(),
                "' holds files but no ", kManifestName, ": not a dataset folder; give a new or ",
                "empty folder");
      fs::create_directories(dir, ec);
      MIL_CHECK(!ec, "token dataset: cannot create '", dir.string(), "': ", ec.message());
      write_manifest(dir_, m_);
    }
    next_prompt_ = m_.prompts_done;
    shard_first_ = m_.prompts_done;
  }

  const DatasetManifest& manifest() const { return m_; }
  // The first prompt not yet labelled or skipped.
  int64_t next_prompt() const { return next_prompt_; }
  bool complete() const { return m_.complete; }

  void add(int64_t prompt, Record s) {
    expect(prompt);
    ShardCodec<Record>::check(s, m_, prompt);
    pending_prompt_tokens_ += ShardCodec<Record>::prompt_tokens(s);
    pending_answer_tokens_ += ShardCodec<Record>::answer_tokens(s);
    pending_.push_back(std::move(s));
    if (int64_t(pending_.size()) == m_.sequences_per_shard) write_shard();
  }

  void skip(int64_t prompt, SkipReason why) {
    expect(prompt);
    ++(why == SkipReason::too_long ? pending_too_long_
       : why == SkipReason::empty  ? pending_empty_
                                   : pending_same_answer_);
  }

  // After the last prompt: writes the last shard and marks the dataset complete.
  void finish() {
    MIL_CHECK(next_prompt_ == m_.prompt_count, "token dataset: finish() after ", next_prompt_,
              " of ", m_.prompt_count, " prompts");
    if (m_.complete) return;
    if (!pending_.empty()) write_shard();
    commit_skips();
    m_.prompts_done = next_prompt_;
    m_.complete = true;
    write_manifest(dir_, m_);
  }

 private:
  void expect(int64_t prompt) {
    MIL_CHECK(prompt == next_prompt_ && prompt < m_.prompt_count, "token dataset: prompt ", prompt,
              " given, expected prompt ", next_prompt_, " of ", m_.prompt_count);
    ++next_prompt_;
  }

  void commit_skips() {
    m_.skipped_too_long += pending_too_long_;
    m_.skipped_empty += pending_empty_;
    m_.skipped_same_answer += pending_same_answer_;
    pending_too_long_ = pending_empty_ = pending_same_answer_ = 0;
  }

  void write_shard() {
    ShardInfo info;
    info.file = detail::shard_name(int64_t(m_.shards.size()));
    info.first_prompt = shard_first_;
    info.end_prompt = next_prompt_;
    info.sequences = int64_t(pending_.size());
    info.prompt_tokens = pending_prompt_tokens_;
    info.answer_tokens = pending_answer_tokens_;
    const std::vector<uint8_t> bytes = serialize_shard(pending_, m_.topk);
    info.payload_sha256 = shard_payload_sha256(bytes);
    io::detail::AtomicFile f(dir_ / info.file);
    f.write(bytes);
    f.commit();
    // Only now does the manifest list it.
    m_.shards.push_back(info);
    m_.sequences += info.sequences;
    m_.prompt_tokens += info.prompt_tokens;
    m_.answer_tokens += info.answer_tokens;
    commit_skips();
    m_.prompts_done = next_prompt_;
    write_manifest(dir_, m_);
    pending_.clear();
    pending_prompt_tokens_ = pending_answer_tokens_ = 0;
    shard_first_ = next_prompt_;
  }

  // Continues the run in dir_: same identity and settings, finished shards intact.
  void resume() {
    DatasetManifest old = read_manifest(dir_);
    const auto want = detail::settings_json(m_), have = detail::settings_json(old);
    for (const auto& [key, value] : want.items()) {
      if (have[key] == value) continue;
      MIL_FAIL(old.source, ": the folder holds a run with other settings (\"", key, "\": ",
               have[key].dump(), ", this run: ", value.dump(), "); it is never overwritten: ",
               "give another folder, or the same settings to continue it");
    }
    std::vector<Record> check;  // the finished shards must be intact to build on
    for (const ShardInfo& s : old.shards) {
      read_shard(dir_ / s.file, old, s, check);
      check.clear();
    }
    // Temporary files of an interrupted write, and shards written after the manifest was last
    // saved, are made again.
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      const std::string name = e.path().filename().string();
      if (name.rfind(".shard-", 0) == 0 || name.rfind(".manifest.json.tmp-", 0) == 0)
        std::filesystem::remove(e.path(), ec);
    }
    old.compute = m_.compute;
    old.source = m_.source;
    m_ = old;
  }

  std::filesystem::path dir_;
  DatasetManifest m_;
  int64_t next_prompt_ = 0, shard_first_ = 0;
  std::vector<Record> pending_;
  int64_t pending_prompt_tokens_ = 0, pending_answer_tokens_ = 0;
  int64_t pending_too_long_ = 0, pending_empty_ = 0, pending_same_answer_ = 0;
};

using TokenDatasetWriter = DatasetWriter<LabelledSequence>;

}  // namespace mil::data
