#pragma once
// Strict JSON parsing for untrusted files (safetensors headers, index.json, config.json):
// nlohmann::json, but a duplicate key in an object is an error (nlohmann would keep the last
// one silently, so two readers could see different tensors), nesting is bounded (dump() and
// our walkers recurse), and every parse error becomes one mil::Error naming the source.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "../core/error.hpp"

namespace mil::io {

// Deeper nesting than this is rejected; the files read here nest 3 or 4 levels.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; `what` names the source in errors (e.g. "safetensors header of 'x.safetensors'").
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& what) {
  using nlohmann::json;
  // nlohmann's lexer takes a NUL byte for the end of the input and would ignore what follows.
  MIL_CHECK(text.find('\0') == std::string_view::npos, what, " is not valid JSON: it contains a ",
            "NUL byte (at byte ", text.find('\0'), ")");
  std::vector<std::unordered_set<std::string>> keys;  // one set per open object
  json::parser_callback_t check = [&](int depth, json::parse_event_t ev, json& v) {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        MIL_CHECK(depth < kMaxJsonDepth, what, ": JSON nested deeper than ", kMaxJsonDepth,
                  " levels: not a file of this kind");
        if (ev == json::parse_event_t::object_start) keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& k = v.get_ref<const std::string&>();
        MIL_CHECK(keys.back().insert(k).second, what, ": duplicate key \"", k,
                  "\" in one JSON object: the file is ambiguous (corrupt or hand-edited)");
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const json::exception& e) {
    MIL_FAIL(what, " is not valid JSON: ", e.what());
  }
}

// A JSON file of at most `max_bytes` (a model's config.json or index.json is kilobytes; a limit
// keeps a wrong path, such as a weights file, from being read into memory whole).
inline nlohmann::json read_json_file_strict(const std::filesystem::path& path,
                                            int64_t max_bytes = 100'000'000) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  MIL_CHECK(!ec, "cannot read '", path.string(), "': ", ec.message());
  MIL_CHECK(size <= uint64_t(max_bytes), "'", path.string(), "' has ", size, " bytes, more ",
            "than the ", max_bytes, " a JSON file of this kind can have: is it the right file?");
  std::ifstream in(path, std::ios::binary);
  MIL_CHECK(in.good(), "cannot open '", path.string(), "': check the path and its permissions");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MIL_CHECK(!in.bad(), "error reading '", path.string(), "'");
  return parse_json_strict(text, "'" + path.string() + "'");
}

namespace json_detail {
inline void excerpt_into(std::string& out, const nlohmann::json& j, int depth) {
  if (!j.is_structured()) {
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return;
  }
  const bool object = j.is_object();
  out += object ? "{" : "[";
  if (depth == 0 && !j.empty()) out += "...";
  for (auto it = j.begin(); depth > 0 && it != j.end() && out.size() < 160; ++it) {
    if (it != j.begin()) out += ", ";
    if (object) out += nlohmann::json(it.key()).dump() + ": ";
    excerpt_into(out, *it, depth - 1);
  }
  out += object ? "}" : "]";
}
}  // namespace json_detail

// A short rendering of a value for error messages: at most three levels deep and about 160
// characters, so a huge or deeply nested value costs nothing to show.
inline std::string json_excerpt(const nlohmann::json& j) {
  std::string s;
  json_detail::excerpt_into(s, j, 3);
  return s.size() > 160 ? s.substr(0, 160) + "..." : s;
}

}  // namespace mil::io
