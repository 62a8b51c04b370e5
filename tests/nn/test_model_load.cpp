// nn::load_model on a Hugging Face folder: a model saved by mil next to a tokenizer.json and
// tokenizer_config.json written by HF `tokenizers` comes back with the same weights, its tokenizer
// and chat template, and its greedy generation (decoder) follows its own training forward; bad
// paths are clear errors. A GGUF model loaded for each purpose (LoadFor) holds the weights that
// purpose needs.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <filesystem>

#include <mil/generate/generate.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/hybrid_checkpoint.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/chat_template.hpp>

#include "common/compare.hpp"
#include "common/small_hybrid.hpp"
#include "common/teacher.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {
std::vector<int32_t> greedy(const nn::HybridModel<float, Cpu>& model, const text::Tokenizer& tok,
                            const std::vector<int32_t>& prompt) {
  nn::Decoder<float, Cpu> dec(model, {.max_seq = 64});
  gen::GenerateConfig g;
  g.max_new_tokens = 12;
  g.sampling.temperature = 0;
  return gen::generate(dec, 0, tok, prompt, g).tokens;
}

// Checks that every generated token is the argmax of the training forward's logits at its
// position (teacher forcing over prompt + generated), away from near-ties.
void check_greedy_follows_forward(const nn::HybridModel<float, Cpu>& model,
                                  const std::vector<int32_t>& prompt,
                                  const std::vector<int32_t>& generated) {
  REQUIRE(!generated.empty());
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), generated.begin(), generated.end());
  const int64_t seq = int64_t(all.size()), vocab = model.config().llama.vocab;
  ag::Tape tape;
  ag::NoGrad ng(tape);
  const auto logits = model.forward(tape, Tensor<int32_t, Cpu>::from(Shape{seq}, all),
                                    nn::sequence_positions<Cpu>(1, seq), 1, seq).value();
  int checked = 0;
  for (size_t i = 0; i < generated.size(); ++i) {
    const float* row = logits.data() + (int64_t(prompt.size() + i) - 1) * vocab;
    std::vector<float> sorted(row, row + vocab);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] < 1e-3f) continue;  // a near-tie may go either way
    CAPTURE(i);
    CHECK(generated[i] == int32_t(std::max_element(row, row + vocab) - row));
    ++checked;
  }
  CHECK(checked >= int(generated.size()) / 2);
}
}  // namespace

TEST_CASE("load model: a Hugging Face folder gives the model its tokenizer and chat template") {
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
  nn::HybridModel<float, Cpu> model(nn::all_attention(cfg));
  model.init_random(3, 0.2f);
  nn::save_llama_hf(dir, model, {});  // bfloat16, transformers' usual dtype

  const auto loaded = nn::load_model(dir.string());
  CHECK(loaded.name == dir.filename().string());
  CHECK(loaded.tokenizer.vocab_size() <= cfg.vocab);
  const auto tmpl = text::detect_chat_template(loaded.chat_template);
  CHECK(tmpl.family == text::ChatFamily::chatml);
  const auto ids = loaded.tokenizer.encode("<|im_start|>user\nhello world 123<|im_end|>\n");
  CHECK(loaded.tokenizer.decode(ids) == "<|im_start|>user\nhello world 123<|im_end|>\n");
  // The weights come back rounded once to bf16, bit for bit, and the decoder's greedy tokens are
  // those of the training forward (an independent path through the same weights).
  const auto reference = nn::convert_model<float, Cpu>(nn::convert_model<bf16, Cpu>(model));
  const auto& a = loaded.model.params().values();
  const auto& b = reference.params().values();
  REQUIRE(a.numel() == b.numel());
  CHECK(std::memcmp(a.data(), b.data(), size_t(a.numel()) * sizeof(float)) == 0);
  check_greedy_follows_forward(loaded.model, ids, greedy(loaded.model, loaded.tokenizer, ids));
  fs::remove_all(dir);

  CHECK_THROWS_WITH_AS(nn::load_model((dir / "missing").string()), doctest::Contains("not found"),
                       Error);
  fs::create_directories(dir);
  CHECK_THROWS_WITH_AS(nn::load_model(dir.string()), doctest::Contains("tokenizer.json"), Error);
  fs::remove_all(dir);
}

// Catches load_model mapping a purpose to the wrong holding: a GPU run or a conversion
// (float_only) must not pay for a block copy, CPU inference must not keep float matrices.
TEST_CASE("block weights: load_model holds what each purpose needs") {
  if (!test::real_teacher()) return;
  const std::string path = test::teacher_path().string();
  const auto any = nn::load_model(path, nn::LoadFor::any).model;
  const auto floats = nn::load_model(path, nn::LoadFor::float_only).model;
  const auto lean = nn::load_model(path, nn::LoadFor::cpu_inference).model;
  CHECK((any.block_weights() && any.has_float_weights()));
  CHECK((!floats.block_weights() && floats.has_float_weights()));
  CHECK((lean.block_weights() && !lean.has_float_weights()));
}

// Catches a bf16 folder loaded for CPU inference without BF16 blocks (float products: twice the
// bytes a generated token reads), with float copies kept beside them, with a value changed on the
// way (the decoder's logits must be the float load's up to summation order), a block built where
// the product cannot take the rows (d_ff 40 is not a whole number of 32-value units), or a float32
// checkpoint forced into bf16 blocks, which would round its values.
TEST_CASE("load model: a bf16 folder loaded for CPU inference keeps its linear layers in BF16 blocks") {
  const fs::path src = fs::path(MIL_SOURCE_DIR) / "tests/text/golden/hf_tokenizers/smollm";
  const fs::path dir = fs::temp_directory_path() / ("mil_test_bf16_blocks_" + std::to_string(::getpid()));
  nn::HybridConfig cfg = test::small_hybrid_config(nn::LayerKind::mamba2);
  cfg.llama.vocab = 430;
  nn::HybridModel<float, Cpu> model(cfg);
  model.init_random(5, 0.2f);
  const std::vector<int32_t> prompt = {3, 17, 250, 9, 101, 44};
  for (const char* dtype : {"bfloat16", "float32"}) {
    CAPTURE(dtype);
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(src / f, dir / f);
    nn::HybridSaveOptions o;
    o.hf.dtype = dtype;
    nn::save_hybrid(dir, model, o);
    const auto lean = nn::load_model(dir.string(), nn::LoadFor::cpu_inference);
    const auto full = nn::load_model(dir.string(), nn::LoadFor::float_only);
    CHECK(full.model.has_float_weights());
    CHECK_FALSE(full.model.block_weights());
    if (std::string(dtype) == "float32") {
      CHECK_FALSE(lean.model.block_weights());
      CHECK(lean.model.has_float_weights());
      continue;
    }
    const auto& blocks = lean.model.block_weights();
    REQUIRE(blocks);
    CHECK_FALSE(lean.model.has_float_weights());
    const auto& attention = blocks->layers[1];
    for (const nn::BlockMatrix* m : {&attention.wqkv, &attention.wo, &attention.gate_up, &blocks->lm_head}) {
      REQUIRE(m->parts().size() == 1);
      CHECK(m->parts()[0].type == io::GgmlType::BF16);
    }
    CHECK(blocks->layers[0].wqkv.empty());  // a Mamba layer
    CHECK(attention.down.empty());          // rows of 40
    CHECK(lean.model.weights().layers[1].mlp.w_down.value().defined());

    nn::Decoder<float, Cpu> a(lean.model, {.max_seq = 32}), b(full.model, {.max_seq = 32, .block_weights = false});
    a.prefill(0, prompt);
    b.prefill(0, prompt);
    test::require_close("BF16 blocks vs float logits", a.logits_host(), b.logits_host(), 1e-5);
    CHECK(greedy(lean.model, lean.tokenizer, prompt) == greedy(full.model, full.tokenizer, prompt));
  }
  fs::remove_all(dir);
}
