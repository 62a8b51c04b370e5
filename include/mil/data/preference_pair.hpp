#pragma once
// A preference pair, the unit of DPO data (docs/METHOD.md §5): a prompt, the chosen and the
// rejected answer, and the reference model's log-probability of each answer, computed once when
// the pairs are made so that a DPO step runs only the policy. Stored as records of a token
// dataset of kind "preference_pairs" (data/token_dataset.hpp, docs/dataset_format.md).
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "token_dataset.hpp"

namespace mil::data {

inline constexpr char kPairShardMagic[8] = {'M', 'I', 'L', 'P', 'A', 'I', 'R', '\0'};

struct PreferencePair {
  std::vector<int32_t> prompt;    // the chat-rendered prompt
  std::vector<int32_t> chosen;    // answer tokens, a stop token kept where the answer had one
  std::vector<int32_t> rejected;
  // Sums over the answer's tokens of log p_ref(token | prompt, earlier answer tokens).
  double ref_logp_chosen = 0, ref_logp_rejected = 0;

  int64_t chosen_len() const { return int64_t(chosen.size()); }
  int64_t rejected_len() const { return int64_t(rejected.size()); }
};

// The prompt followed by one answer, as a sequence for a training batch (data/batch.hpp) or a
// log-probability (data/sequence_logprob.hpp).
inline LabelledSequence with_answer(const std::vector<int32_t>& prompt,
                                    const std::vector<int32_t>& answer) {
  LabelledSequence s;
  s.tokens.reserve(prompt.size() + answer.size());
  s.tokens.assign(prompt.begin(), prompt.end());
  s.tokens.insert(s.tokens.end(), answer.begin(), answer.end());
  s.prompt_len = int32_t(prompt.size());
  return s;
}
inline LabelledSequence chosen_sequence(const PreferencePair& p) { return with_answer(p.prompt, p.chosen); }
inline LabelledSequence rejected_sequence(const PreferencePair& p) {
  return with_answer(p.prompt, p.rejected);
}

template <>
struct ShardCodec<PreferencePair> {
  static constexpr const char* kind = kPreferencePairsKind;
  static constexpr const char* magic = kPairShardMagic;
  static int64_t prompt_tokens(const PreferencePair& p) { return int64_t(p.prompt.size()); }
  static int64_t answer_tokens(const PreferencePair& p) { return p.chosen_len() + p.rejected_len(); }

  // `what` names the pair in errors; the same checks on writing and reading.
  static void check_fields(const PreferencePair& p, const DatasetManifest& m, const std::string& what) {
    MIL_CHECK(!p.prompt.empty() && int64_t(p.prompt.size()) <= m.max_prompt && !p.chosen.empty() &&
                  p.chosen_len() <= m.max_answer && !p.rejected.empty() &&
                  p.rejected_len() <= m.max_answer,
              what, ": ", p.prompt.size(), " prompt, ", p.chosen_len(), " chosen and ",
              p.rejected_len(), " rejected tokens; expected 1 to ", m.max_prompt, ", 1 to ",
              m.max_answer, " and 1 to ", m.max_answer);
    detail::check_ids(p.prompt, m.vocab_size, what, "prompt token");
    detail::check_ids(p.chosen, m.vocab_size, what, "chosen token");
    detail::check_ids(p.rejected, m.vocab_size, what, "rejected token");
    MIL_CHECK(p.chosen != p.rejected, what, ": the rejected answer is the chosen one");
    for (double lp : {p.ref_logp_chosen, p.ref_logp_rejected})
      MIL_CHECK(std::isfinite(lp) && lp <= 0, what, ": reference log-probability ", lp,
                " is not finite and <= 0");
  }
  static void check(const PreferencePair& p, const DatasetManifest& m, int64_t prompt) {
    check_fields(p, m, "preference pairs: the pair of prompt " + std::to_string(prompt));
  }

  static void put(std::vector<uint8_t>& out, const PreferencePair& p) {
    detail::put_u32(out, uint32_t(p.prompt.size()));
    detail::put_u32(out, uint32_t(p.chosen.size()));
    detail::put_u32(out, uint32_t(p.rejected.size()));
    detail::put_array(out, p.prompt);
    detail::put_array(out, p.chosen);
    detail::put_array(out, p.rejected);
    detail::put_array(out, std::vector<double>{p.ref_logp_chosen, p.ref_logp_rejected});
  }

  static PreferencePair get(detail::ByteReader& r, const DatasetManifest& m, const std::string& rec) {
    PreferencePair p;
    const uint32_t prompt = r.u32("prompt length"), chosen = r.u32("chosen length");
    const uint32_t rejected = r.u32("rejected length");
    // Lengths are checked before anything is allocated for them.
    MIL_CHECK(int64_t(prompt) <= m.max_prompt && int64_t(chosen) <= m.max_answer &&
                  int64_t(rejected) <= m.max_answer,
              rec, ": ", prompt, " prompt, ", chosen, " chosen and ", rejected,
              " rejected tokens, beyond max_prompt ", m.max_prompt, " / max_answer ", m.max_answer);
    p.prompt.resize(prompt);
    p.chosen.resize(chosen);
    p.rejected.resize(rejected);
    r.read(p.prompt.data(), prompt, "prompt tokens");
    r.read(p.chosen.data(), chosen, "chosen tokens");
    r.read(p.rejected.data(), rejected, "rejected tokens");
    r.read(&p.ref_logp_chosen, 1, "chosen reference log-probability");
    r.read(&p.ref_logp_rejected, 1, "rejected reference log-probability");
    check_fields(p, m, rec);
    return p;
  }
};

using PreferencePairWriter = DatasetWriter<PreferencePair>;

struct PreferenceDataset {
  DatasetManifest manifest;
  std::vector<PreferencePair> pairs;  // in prompt order
};

// Reads a preference-pair dataset and checks all of it. One whose making was interrupted is an
// error unless `allow_incomplete`.
inline PreferenceDataset read_preference_pairs(const std::filesystem::path& dir,
                                               bool allow_incomplete = false) {
  PreferenceDataset d;
  d.pairs = read_records<PreferencePair>(dir, d.manifest, allow_incomplete, "preference pairs",
                                         "making pairs", "pair maker");
  return d;
}

// Throws unless the pairs' reference log-probabilities come from the reference model given and
// their ids from the tokenizer given: a DPO step against another reference would optimise a
// different objective, and other ids mean other text.
inline void check_pairs_match(const DatasetManifest& m, std::string_view reference_sha256,
                              std::string_view tokenizer_fingerprint) {
  MIL_CHECK(m.pairs.reference_sha256 == reference_sha256, m.source, ": the reference ",
            "log-probabilities were computed by another model ('", m.pairs.reference_name,
            "', sha256 ", m.pairs.reference_sha256, "), not the one given (sha256 ",
            reference_sha256, "): make the pairs with this reference");
  MIL_CHECK(m.tokenizer_fingerprint == tokenizer_fingerprint, m.source, ": the pairs were made ",
            "with another tokenizer (fingerprint ", m.tokenizer_fingerprint, "), not the one given ",
            "(fingerprint ", tokenizer_fingerprint, "): its token ids mean other text");
}

}  // namespace mil::data
