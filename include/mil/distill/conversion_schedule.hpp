#pragma once
// Stepwise (progressive) conversion (docs/METHOD.md §5): a schedule such as
// "50%:200k,25%:200k,12.5%:200k,0%:200k" distils the 50% hybrid for 200k tokens, then the 25%
// hybrid starting from the first step's trained layers, and so on. Each step keeps fewer attention
// layers than the one before it (a layer, once a Mamba mixer, stays one).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../nn/hybrid_config.hpp"

namespace mil::distill {

struct ConversionStep {
  std::string name;                  // "50%", or "custom" for an explicit layer list
  std::vector<int64_t> attn_layers;  // layers that keep attention
  int64_t tokens = 0;                // training tokens of this step
};

// "200k", "1.5M", "50000" -> a token count (k = 1e3, M = 1e6, G = 1e9).
inline int64_t parse_token_count(const std::string& s) {
  MIL_CHECK(!s.empty(), "empty token count");
  double scale = 1;
  std::string digits = s;
  switch (s.back()) {
    case 'k': case 'K': scale = 1e3; digits.pop_back(); break;
    case 'm': case 'M': scale = 1e6; digits.pop_back(); break;
    case 'g': case 'G': scale = 1e9; digits.pop_back(); break;
    default: break;
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(digits, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MIL_CHECK(used == digits.size() && !digits.empty() && v * scale >= 1 && v * scale < 1e15,
            "bad token count '", s, "' (expected e.g. 50000, 200k or 1.5M)");
  return int64_t(v * scale + 0.5);
}

// A comma-separated schedule of layout:tokens for a model of n_layers layers.
inline std::vector<ConversionStep> parse_conversion_schedule(const std::string& text, int64_t n_layers) {
  std::vector<ConversionStep> steps;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, end - begin);
    const size_t colon = item.find(':');
    MIL_CHECK(colon != std::string::npos && colon > 0,
              "schedule item '", item, "' is not LAYOUT:TOKENS (e.g. 50%:200k)");
    ConversionStep s;
    s.name = item.substr(0, colon);
    s.attn_layers = nn::attention_layout(n_layers, s.name);
    s.tokens = parse_token_count(item.substr(colon + 1));
    if (!steps.empty()) {
      for (int64_t l : s.attn_layers)
        MIL_CHECK(std::binary_search(steps.back().attn_layers.begin(), steps.back().attn_layers.end(), l),
                  "schedule: step '", item, "' keeps attention in layer ", l, ", which the step '",
                  steps.back().name, "' before it already converted (a schedule only converts more)");
      MIL_CHECK(s.attn_layers != steps.back().attn_layers, "schedule: step '", item,
                "' converts no layer beyond the step before it");
    }
    steps.push_back(std::move(s));
    begin = end + 1;
  }
  MIL_CHECK(!steps.empty(), "empty conversion schedule");
  return steps;
}

}  // namespace mil::distill
