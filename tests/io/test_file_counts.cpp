// Counts that model files declare (layers, widths, heads, vocabulary, context, experts, shards)
// are checked against what the file holds and against io/limits.hpp before a model is built
// from them: one test per count, each over every reader that takes it (GGUF metadata,
// config.json, mamba_config.json, the safetensors index). A refusal must come as a mil::Error
// that names the count, from the config readers, which allocate nothing in proportion to it.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <mil/io/limits.hpp>
#include <mil/nn/hybrid_checkpoint.hpp>
#include <mil/nn/llama_gguf.hpp>
#include <mil/nn/model_load.hpp>

#include "common/error_of.hpp"
#include "gguf_writer.hpp"

using namespace mil;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using test::error_of;

void check_has(const std::string& message, const std::string& part) {
  INFO("message: ", message);
  INFO("expected part: ", part);
  CHECK(message.find(part) != std::string::npos);
}

// ---- GGUF ----------------------------------------------------------------------------------

struct TinyLlama {
  int64_t d = 8, heads = 2, kv_heads = 1, ff = 12, vocab = 10, layers = 2;
};

// A complete Llama GGUF of shape `s` (f32 weights of zeros); `meta` replaces or adds llama.*
// metadata (u64 values), and `layer_names` renames the blk.N of each layer.
test::GgufWriter tiny_gguf(const TinyLlama& s, const std::map<std::string, uint64_t>& meta = {},
                           std::vector<int64_t> layer_names = {}) {
  using T = io::GgufType;
  std::map<std::string, uint64_t> m = {{"block_count", s.layers},
                                       {"embedding_length", s.d},
                                       {"feed_forward_length", s.ff},
                                       {"attention.head_count", s.heads},
                                       {"attention.head_count_kv", s.kv_heads}};
  for (const auto& [k, v] : meta) m[k] = v;
  test::GgufWriter w;
  w.str("general.architecture", "llama");
  for (const auto& [k, v] : m) w.scalar("llama." + k, T::u64, v);
  w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  std::vector<std::string> tokens;
  for (int64_t i = 0; i < s.vocab; ++i) tokens.push_back("t" + std::to_string(i));
  w.str_array("tokenizer.ggml.tokens", tokens);
  auto zeros = [](uint64_t rows, uint64_t cols) { return std::vector<float>(rows * cols, 0.f); };
  const uint64_t d = s.d, q = s.heads * (s.d / s.heads), kv = s.kv_heads * (s.d / s.heads);
  const uint64_t ff = s.ff;
  w.f32_tensor("token_embd.weight", {d, uint64_t(s.vocab)}, zeros(d, s.vocab));
  if (layer_names.empty())
    for (int64_t l = 0; l < s.layers; ++l) layer_names.push_back(l);
  for (int64_t l : layer_names) {
    const std::string p = "blk." + std::to_string(l) + ".";
    w.f32_tensor(p + "attn_norm.weight", {d}, zeros(1, d));
    w.f32_tensor(p + "attn_q.weight", {d, q}, zeros(d, q));
    w.f32_tensor(p + "attn_k.weight", {d, kv}, zeros(d, kv));
    w.f32_tensor(p + "attn_v.weight", {d, kv}, zeros(d, kv));
    w.f32_tensor(p + "attn_output.weight", {q, d}, zeros(q, d));
    w.f32_tensor(p + "ffn_norm.weight", {d}, zeros(1, d));
    w.f32_tensor(p + "ffn_gate.weight", {d, ff}, zeros(d, ff));
    w.f32_tensor(p + "ffn_up.weight", {d, ff}, zeros(d, ff));
    w.f32_tensor(p + "ffn_down.weight", {ff, d}, zeros(ff, d));
  }
  w.f32_tensor("output_norm.weight", {d}, zeros(1, d));
  return w;
}

// The error of reading the configuration of the file (what every GGUF load does first).
std::string gguf_config_error(const test::GgufWriter& w) {
  return error_of([&] { (void)nn::llama_config_from_gguf(io::GgufFile::from_bytes(w.bytes())); });
}
std::string gguf_error(const std::map<std::string, uint64_t>& meta, const TinyLlama& s = {}) {
  return gguf_config_error(tiny_gguf(s, meta));
}

// ---- config.json and mamba_config.json -------------------------------------------------------

// config.json of a Llama of the shape of TinyLlama{}.
json tiny_config_json() {
  return {{"model_type", "llama"},       {"vocab_size", 10},          {"hidden_size", 8},
          {"intermediate_size", 12},     {"num_hidden_layers", 2},    {"num_attention_heads", 2},
          {"num_key_value_heads", 1},    {"rms_norm_eps", 1e-5},      {"tie_word_embeddings", true}};
}
std::string hf_error(const json& patch) {
  json j = tiny_config_json();
  if (!patch.is_null()) j.update(patch);
  return error_of([&] { (void)nn::hf_llama_config(j, "config.json"); });
}

// mamba_config.json of a hybrid of TinyLlama{} (layer 1 attention, layer 0 Mamba-1).
json tiny_mamba_json() {
  return {{"d_model", 8},     {"ssm_cfg", {{"expand", 1}, {"d_state", 4}}}, {"rms_norm_eps", 1e-5},
          {"vocab_size", 10}, {"d_inner", 8},               {"d_xb", 4},
          {"intermediate_size", 12}, {"n_layer", 2},        {"attn_layers", {1}}};
}

struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& name)
      : path(fs::temp_directory_path() / ("mil_test_file_counts_" + name)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void write(const std::string& file, const std::string& text) const {
    std::ofstream(path / file, std::ios::binary) << text;
  }
};

std::string mamba_error(const json& config_patch, const json& mamba_patch) {
  ScratchDir dir("mamba");
  json c = tiny_config_json(), m = tiny_mamba_json();
  if (!config_patch.is_null()) c.update(config_patch);
  if (!mamba_patch.is_null()) m.update(mamba_patch, true);
  dir.write("config.json", c.dump());
  dir.write(nn::kMambaConfigName, m.dump());
  return error_of([&] { (void)nn::hybrid_config_from_files(dir.path); });
}

}  // namespace

TEST_CASE("file counts: the fixtures are valid (each refusal below comes from its one change)") {
  const nn::LlamaConfig c = nn::llama_config_from_gguf(io::GgufFile::from_bytes(tiny_gguf({}).bytes()));
  CHECK(c.n_layers == 2);
  CHECK(c.d_model == 8);
  CHECK(c.vocab == 10);
  CHECK(hf_error({}) == "<no error>");
  CHECK(mamba_error({}, {}) == "<no error>");
}

TEST_CASE("file counts: a 75 KB GGUF claiming 2^31 layers is refused by load_model, by its count") {
  // The reported file: a real two-layer model whose llama.block_count says 2^31. Before the
  // checks, loading it allocated the parameters of 2^31 layers (over 12 GB) and spun for minutes.
  const TinyLlama s{32, 4, 2, 64, 16, 2};
  const test::Bytes bytes = tiny_gguf(s, {{"block_count", uint64_t(1) << 31}}).bytes();
  CHECK(bytes.size() > 70'000);
  CHECK(bytes.size() < 80'000);
  const test::TempFile file(bytes);
  const std::string e = error_of([&] { (void)nn::load_model(file.path); });
  check_has(e, "llama.block_count = 2147483648 is more than mil's limit of 1024");
  // The same count within the limit but beyond the file's layers: refused against the tensors.
  check_has(error_of([&] {
              (void)nn::load_model(test::TempFile(tiny_gguf(s, {{"block_count", 1000}}).bytes()).path);
            }),
            "llama.block_count = 1000 but the file holds tensors of 2 layer(s)");
}

TEST_CASE("file counts: layers") {
  const std::string limit = "is more than mil's limit of " + std::to_string(io::limits::kMaxLayers);
  // GGUF: the limit, then exactly the blk.N layers the file holds (no more, no fewer, no gaps).
  check_has(gguf_error({{"block_count", io::limits::kMaxLayers + 1}}), "llama.block_count = 1025 " + limit);
  check_has(gguf_error({{"block_count", 0}}), "llama.block_count = 0 must be positive");
  check_has(gguf_error({{"block_count", 3}}), "llama.block_count = 3 but the file holds tensors of 2 layer(s)");
  check_has(gguf_error({{"block_count", 1}}), "llama.block_count = 1 but the file holds tensors of 2 layer(s)");
  check_has(gguf_config_error(tiny_gguf({}, {}, {0, 2})),
            "llama.block_count = 2 but the file holds tensors of 2 layer(s) (largest index blk.2)");
  check_has(gguf_config_error(tiny_gguf({}, {}, {0, 1, 99999999999999999})),
            "llama.block_count = 2 but the file holds tensors of 3 layer(s)");
  // config.json and mamba_config.json.
  check_has(hf_error({{"num_hidden_layers", 1025}}), "\"num_hidden_layers\" must be an integer in [1, 1024]");
  check_has(mamba_error({}, {{"n_layer", 1025}}), "\"n_layer\" must be an integer in [1, 1024]");
}

TEST_CASE("file counts: model width (embedding_length, hidden_size)") {
  check_has(gguf_error({{"embedding_length", 65537}}),
            "llama.embedding_length = 65537 is more than mil's limit of 65536");
  check_has(gguf_error({{"embedding_length", 16}}),
            "tensor 'token_embd.weight' has shape [8, 10], expected [16, 10]");
  check_has(hf_error({{"hidden_size", 65537}}), "\"hidden_size\" must be an integer in [1, 65536]");
}

TEST_CASE("file counts: MLP width (feed_forward_length, intermediate_size)") {
  check_has(gguf_error({{"feed_forward_length", 262145}}),
            "llama.feed_forward_length = 262145 is more than mil's limit of 262144");
  check_has(gguf_error({{"feed_forward_length", 24}}),
            "tensor 'blk.0.ffn_gate.weight' has shape [8, 12], expected [8, 24]");
  check_has(hf_error({{"intermediate_size", 262145}}),
            "\"intermediate_size\" must be an integer in [1, 262144]");
}

TEST_CASE("file counts: attention heads") {
  check_has(gguf_error({{"attention.head_count", 1025}}),
            "llama.attention.head_count = 1025 is more than mil's limit of 1024");
  check_has(gguf_error({{"attention.head_count", 0}}), "llama.attention.head_count = 0 must be positive");
  // 4 heads of 8 / 4 = 2: the KV width 1 x 2 disagrees with attn_k's 4 rows.
  check_has(gguf_error({{"attention.head_count", 4}}),
            "tensor 'blk.0.attn_k.weight' has shape [8, 4], expected [8, 2]");
  check_has(hf_error({{"num_attention_heads", 1025}}),
            "\"num_attention_heads\" must be an integer in [1, 1024]");
}

TEST_CASE("file counts: key/value heads") {
  check_has(gguf_error({{"attention.head_count_kv", 1025}}),
            "llama.attention.head_count_kv = 1025 is more than mil's limit of 1024");
  check_has(gguf_error({{"attention.head_count_kv", 2}}),
            "tensor 'blk.0.attn_k.weight' has shape [8, 4], expected [8, 8]");
  check_has(hf_error({{"num_key_value_heads", 1025}}),
            "\"num_key_value_heads\" must be an integer in [1, 1024]");
}

TEST_CASE("file counts: head dimension (key_length, head_dim)") {
  check_has(gguf_error({{"attention.key_length", 4097}}),
            "llama.attention.key_length = 4097 is more than mil's limit of 4096");
  check_has(gguf_error({{"attention.key_length", 8}}),
            "tensor 'blk.0.attn_q.weight' has shape [8, 8], expected [8, 16]");
  check_has(hf_error({{"head_dim", 4098}}), "\"head_dim\" must be an integer in [2, 4096]");
}

TEST_CASE("file counts: vocabulary") {
  // GGUF: the token list and the embedding rows must agree (12 tokens, 10 rows).
  test::GgufWriter w = tiny_gguf({});
  for (auto& kv : w.kvs)
    if (kv.key == "tokenizer.ggml.tokens") {
      test::GgufWriter t;
      t.str_array(kv.key, {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"});
      kv = t.kvs[0];
    }
  check_has(gguf_config_error(w), "tensor 'token_embd.weight' has shape [8, 10], expected [8, 12]");
  check_has(hf_error({{"vocab_size", (int64_t(1) << 24) + 1}}),
            "vocab_size = 16777217 is more than mil's limit of 16777216");
  check_has(mamba_error({}, {{"vocab_size", 11}}), "\"vocab_size\" is 11 but config.json gives");
}

TEST_CASE("file counts: context length") {
  check_has(gguf_error({{"context_length", (uint64_t(1) << 24) + 1}}),
            "llama.context_length = 16777217 is more than mil's limit of 16777216");
  check_has(gguf_error({{"context_length", 0}}), "llama.context_length = 0 must be positive");
  CHECK(gguf_error({{"context_length", 8192}}) == "<no error>");
  check_has(hf_error({{"max_position_embeddings", (int64_t(1) << 24) + 1}}),
            "\"max_position_embeddings\" must be an integer in [1, 16777216]");
}

TEST_CASE("file counts: experts (mixture-of-experts files are refused)") {
  check_has(gguf_error({{"expert_count", 8}}),
            "llama.expert_count = 8: mixture-of-experts models are not supported");
  CHECK(gguf_error({{"expert_count", 0}}) == "<no error>");
}

TEST_CASE("file counts: Mamba state size") {
  check_has(mamba_error({}, {{"ssm_cfg", {{"expand", 1}, {"d_state", 4097}}}}),
            "\"ssm_cfg.d_state\" must be an integer in [1, 4096]");
}

TEST_CASE("file counts: config.json counts beyond the weights are refused before allocation") {
  // A Hugging Face folder whose config.json claims 3 layers over the weights of 2.
  ScratchDir dir("hf_layers");
  nn::LlamaConfig c = nn::llama_config_from_hf(tiny_config_json(), "tiny");
  nn::save_llama_hf(dir.path, nn::HybridModel<float, Cpu>(nn::all_attention(c)));
  json j = tiny_config_json();
  j["num_hidden_layers"] = 3;
  dir.write("config.json", j.dump());
  check_has(error_of([&] { (void)nn::load_llama_model_hf(dir.path); }),
            "tensor 'model.layers.2.input_layernorm.weight' is missing");
}

TEST_CASE("file counts: safetensors shards") {
  ScratchDir dir("shards");
  json map = json::object();
  for (int64_t i = 0; i <= io::limits::kMaxShards; ++i)
    map[std::to_string(i)] = std::to_string(i) + ".safetensors";
  dir.write("model.safetensors.index.json", json{{"weight_map", map}}.dump());
  check_has(error_of([&] { (void)io::SafetensorsCheckpoint::open(dir.path); }),
            "it names 16385 shards, more than mil's limit of 16384");
}
