// libFuzzer target for config.json of Hugging Face Llama-family models: arbitrary bytes through
// the strict JSON parser and hf_llama_config. Any input must end in success or mil::Error; a
// config that loads must survive a round trip through the config.json mil writes.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_hf_config)
//   run:   ./mil_fuzz_hf_config -runs=1000000 /tmp/hf_config_corpus fuzz/corpus/hf_config
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <mil/nn/llama_hf.hpp>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil;
  nn::HfLlamaConfig hf;
  try {
    const auto j = io::parse_json_strict(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    hf = nn::hf_llama_config(j, "fuzz");
  } catch (const mil::Error&) {
    return 0;  // a clear error: fine
  }
  // What loaded must come back unchanged (and without an error) from the config.json mil writes.
  const nn::LlamaConfig& c = hf.model;
  nn::HfSaveOptions o;
  o.max_position_embeddings = hf.max_position_embeddings;
  nn::LlamaConfig back;
  try {
    back = nn::llama_config_from_hf(
        nlohmann::json::parse(nn::llama_hf_config_json(c, o).dump()), "fuzz round trip");
  } catch (const mil::Error& e) {
    std::fprintf(stderr, "fuzz_hf_config: the written config.json does not load: %s\n", e.what());
    std::abort();
  }
  const bool same =
      back.vocab == c.vocab && back.d_model == c.d_model && back.n_layers == c.n_layers &&
      back.n_heads == c.n_heads && back.n_kv_heads == c.n_kv_heads &&
      back.head_dim == c.head_dim && back.d_ff == c.d_ff && back.norm_eps == c.norm_eps &&
      back.rope_theta == c.rope_theta && back.tied_embeddings == c.tied_embeddings &&
      back.attention_bias == c.attention_bias &&
      back.rope_llama3_scaling == c.rope_llama3_scaling &&
      (!c.rope_llama3_scaling ||
       (back.rope_factor == c.rope_factor && back.rope_low_freq_factor == c.rope_low_freq_factor &&
        back.rope_high_freq_factor == c.rope_high_freq_factor &&
        back.rope_original_max_positions == c.rope_original_max_positions));
  if (!same) {
    std::fprintf(stderr, "fuzz_hf_config: the config.json round trip changed the config\n");
    std::abort();
  }
  return 0;
}
