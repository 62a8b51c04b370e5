#pragma once
// A minimal JSON reader for the golden files of the tests (objects, arrays, strings with simple
// escapes, numbers, true/false/null). Test-side only; golden files are trusted.
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <mil/core/error.hpp>

namespace mil::test {

struct Json {
  enum Kind { null, boolean, number, string, array, object } kind = null;
  double num = 0;
  bool b = false;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& operator[](const std::string& k) const {
    auto it = fields.find(k);
    MIL_CHECK(it != fields.end(), "golden JSON: no field '", k, "'");
    return it->second;
  }
  const Json& operator[](size_t i) const { return items.at(i); }
  size_t size() const { return kind == object ? fields.size() : items.size(); }
  std::vector<double> numbers() const {
    std::vector<double> v;
    for (const auto& x : items) v.push_back(x.num);
    return v;
  }

  static Json parse(const std::string& text) {
    size_t pos = 0;
    Json j = parse_value(text, pos);
    return j;
  }
  static Json load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    MIL_CHECK(in, "cannot open golden file '", path, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    return parse(ss.str());
  }

 private:
  static void ws(const std::string& s, size_t& p) {
    while (p < s.size() && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t')) ++p;
  }
  static Json parse_value(const std::string& s, size_t& p) {
    ws(s, p);
    MIL_CHECK(p < s.size(), "golden JSON: unexpected end");
    Json j;
    char c = s[p];
    if (c == '{') {
      j.kind = object;
      ++p;
      ws(s, p);
      if (s[p] == '}') { ++p; return j; }
      while (true) {
        ws(s, p);
        std::string key = parse_value(s, p).str;
        ws(s, p);
        MIL_CHECK(s[p] == ':', "golden JSON: ':' expected at ", p);
        ++p;
        j.fields[key] = parse_value(s, p);
        ws(s, p);
        if (s[p] == ',') { ++p; continue; }
        MIL_CHECK(s[p] == '}', "golden JSON: '}' expected at ", p);
        ++p;
        return j;
      }
    }
    if (c == '[') {
      j.kind = array;
      ++p;
      ws(s, p);
      if (s[p] == ']') { ++p; return j; }
      while (true) {
        j.items.push_back(parse_value(s, p));
        ws(s, p);
        if (s[p] == ',') { ++p; continue; }
        MIL_CHECK(s[p] == ']', "golden JSON: ']' expected at ", p);
        ++p;
        return j;
      }
    }
    if (c == '"') {
      j.kind = string;
      ++p;
      while (p < s.size() && s[p] != '"') {
        if (s[p] == '\\') {
          char e = s[++p];
          if (e == 'n') j.str += '\n';
          else if (e == 't') j.str += '\t';
          else if (e == 'u') {  // BMP code point to UTF-8 (enough for the golden files)
            unsigned cp = unsigned(std::strtoul(s.substr(p + 1, 4).c_str(), nullptr, 16));
            p += 4;
            if (cp < 0x80) j.str += char(cp);
            else if (cp < 0x800) { j.str += char(0xC0 | (cp >> 6)); j.str += char(0x80 | (cp & 63)); }
            else { j.str += char(0xE0 | (cp >> 12)); j.str += char(0x80 | ((cp >> 6) & 63)); j.str += char(0x80 | (cp & 63)); }
          } else j.str += e;  // \" \\ \/
          ++p;
        } else {
          j.str += s[p++];
        }
      }
      ++p;
      return j;
    }
    if (s.compare(p, 4, "true") == 0) { j.kind = boolean; j.b = true; p += 4; return j; }
    if (s.compare(p, 5, "false") == 0) { j.kind = boolean; p += 5; return j; }
    if (s.compare(p, 4, "null") == 0) { p += 4; return j; }
    j.kind = number;
    char* end = nullptr;
    j.num = std::strtod(s.c_str() + p, &end);
    MIL_CHECK(end != s.c_str() + p, "golden JSON: bad value at ", p);
    p = size_t(end - s.c_str());
    return j;
  }
};

}  // namespace mil::test
