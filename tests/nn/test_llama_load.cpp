// nn::load_llama on a Hugging Face folder: a model saved by mil next to a tokenizer.json and
// tokenizer_config.json written by HF `tokenizers` comes back with the same weights, its tokenizer
// and chat template, and generates the same tokens; bad paths are clear errors.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>

#include <mil/generate/generate.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/llama_load.hpp>
#include <mil/text/chat_template.hpp>

using namespace mil;
namespace fs = std::filesystem;

namespace {
std::vector<int32_t> greedy(const nn::LlamaModel<float, Cpu>& model, const text::Tokenizer& tok,
                            const std::vector<int32_t>& prompt) {
  nn::Decoder<float, Cpu> dec(model, {.max_seq = 64});
  gen::GenerateConfig g;
  g.max_new_tokens = 12;
  g.sampling.temperature = 0;
  return gen::generate(dec, 0, tok, prompt, g).tokens;
}
}  // namespace

TEST_CASE("load llama: a Hugging Face folder gives the model its tokenizer and chat template") {
  const fs::path src = fs::path(MIL_SOURCE_DIR) / "tests/text/golden/hf_tokenizers/smollm";
  const fs::path dir = fs::temp_directory_path() / ("mil_test_load_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(src / f, dir / f);
  nn::LlamaConfig cfg;
  cfg.vocab = 430;
  cfg.d_model = 32;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.head_dim = 8;
  cfg.d_ff = 48;
  nn::LlamaModel<float, Cpu> model(cfg);
  model.init_random(3, 0.2f);
  nn::save_llama_hf(dir, model, {});  // bfloat16, transformers' usual dtype

  const auto loaded = nn::load_llama(dir.string());
  CHECK(loaded.name == dir.filename().string());
  CHECK(loaded.tokenizer.vocab_size() <= cfg.vocab);
  const auto tmpl = text::detect_chat_template(loaded.chat_template);
  CHECK(tmpl.family == text::ChatFamily::chatml);
  const auto ids = loaded.tokenizer.encode("<|im_start|>user\nhello world 123<|im_end|>\n");
  CHECK(loaded.tokenizer.decode(ids) == "<|im_start|>user\nhello world 123<|im_end|>\n");
  // The weights come back rounded once to bf16, bit for bit, and generate the same tokens.
  const auto reference = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(model));
  const auto& a = loaded.model.params().values();
  const auto& b = reference.params().values();
  REQUIRE(a.numel() == b.numel());
  CHECK(std::memcmp(a.data(), b.data(), size_t(a.numel()) * sizeof(float)) == 0);
  CHECK(greedy(loaded.model, loaded.tokenizer, ids) == greedy(reference, loaded.tokenizer, ids));
  fs::remove_all(dir);

  CHECK_THROWS_WITH_AS(nn::load_llama((dir / "missing").string()), doctest::Contains("not found"),
                       Error);
  fs::create_directories(dir);
  CHECK_THROWS_WITH_AS(nn::load_llama(dir.string()), doctest::Contains("tokenizer.json"), Error);
  fs::remove_all(dir);
}
