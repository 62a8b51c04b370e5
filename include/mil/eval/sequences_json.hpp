#pragma once
// Labelled sequences as a small JSON file, for checks outside mil (scripts/check_eval_reference.py
// makes one with another implementation and hands it to mil-eval --sequences):
//   [{"tokens": [1, 2, 3, ...], "prompt_len": 2}, ...]
// Token datasets (data/token_dataset.hpp) are the format for real data.
#include <filesystem>
#include <string>
#include <vector>

#include "../data/sequence.hpp"
#include "../io/json.hpp"

namespace mil::eval {

inline std::vector<data::LabelledSequence> read_sequences_json(const std::filesystem::path& path) {
  const auto j = io::read_json_file_strict(path);
  const std::string where = "'" + path.string() + "'";
  MIL_CHECK(j.is_array(), where, ": expected an array of {\"tokens\", \"prompt_len\"} objects");
  std::vector<data::LabelledSequence> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& e = j[i];
    MIL_CHECK(e.is_object() && e.contains("tokens") && e["tokens"].is_array() &&
                  e.contains("prompt_len") && e["prompt_len"].is_number_integer(),
              where, ": entry ", i, " is not {\"tokens\": [...], \"prompt_len\": n}");
    data::LabelledSequence s;
    for (const auto& t : e["tokens"]) {
      MIL_CHECK(t.is_number_integer() && t.get<int64_t>() >= 0 && t.get<int64_t>() < (int64_t(1) << 31),
                where, ": entry ", i, " has a token that is not an id: ", io::json_excerpt(t));
      s.tokens.push_back(int32_t(t.get<int64_t>()));
    }
    const auto prompt_len = e["prompt_len"].get<int64_t>();
    MIL_CHECK(prompt_len >= 0 && prompt_len <= int64_t(s.tokens.size()), where, ": entry ", i,
              " has prompt_len ", prompt_len, " for ", s.tokens.size(), " tokens");
    s.prompt_len = int32_t(prompt_len);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace mil::eval
