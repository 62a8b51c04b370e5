// libFuzzer target for mamba_config.json (nn::hybrid_config_from_files): arbitrary bytes as
// mamba_config.json in a folder whose config.json is a fixed small Llama (d_model 64, 4 layers,
// 4 heads / 2 KV heads of 16, MLP 128, vocabulary 256). Reading must end in a HybridConfig or
// mil::Error; a config that reads must come back unchanged from the mamba_config.json mil writes
// for it.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_mamba_config)
//   run:   ./mil_fuzz_mamba_config -max_total_time=120 /tmp/mamba_corpus fuzz/corpus/mamba_config
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <mil/nn/hybrid_checkpoint.hpp>

#include "fuzz_support.hpp"

namespace {

const char* const kTeacherConfig = R"({
  "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
  "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
  "max_position_embeddings": 2048, "tie_word_embeddings": true
})";

const mil::fuzz::ScratchFolder& folder() {
  static const mil::fuzz::ScratchFolder dir("mamba_config");
  static const bool written = (dir.write("config.json", kTeacherConfig), true);
  (void)written;
  return dir;
}

bool same(const mil::nn::HybridConfig& a, const mil::nn::HybridConfig& b) {
  return a.mixer == b.mixer && a.attn_layers == b.attn_layers && a.conv_kernel == b.conv_kernel &&
         a.d_state() == b.d_state() && a.mamba1_double_dt_bias == b.mamba1_double_dt_bias &&
         a.llama.n_layers == b.llama.n_layers && a.llama.d_model == b.llama.d_model;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil;
  const auto& dir = folder();
  dir.write(nn::kMambaConfigName, std::string_view(reinterpret_cast<const char*>(data), size));
  nn::HybridConfig h;
  try {
    h = nn::hybrid_config_from_files(dir.path());
  } catch (const mil::Error&) {
    return 0;  // a clear error: fine
  }
  // What loaded must read back the same from the mamba_config.json mil writes.
  dir.write(nn::kMambaConfigName, nn::hybrid_mamba_config_json(h).dump());
  try {
    if (same(nn::hybrid_config_from_files(dir.path()), h)) return 0;
    std::fprintf(stderr, "fuzz_mamba_config: the mamba_config.json round trip changed the config\n");
  } catch (const mil::Error& e) {
    std::fprintf(stderr, "fuzz_mamba_config: the written mamba_config.json does not load: %s\n",
                 e.what());
  }
  std::abort();
}
