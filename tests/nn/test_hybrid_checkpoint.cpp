// Hybrid checkpoints in the MambaInLlama reference layout (nn/hybrid_checkpoint.hpp): save -> load
// round trips of small random hybrids (Mamba-2 and Mamba-1, 0% and 50% attention, tied and untied
// embeddings; float32 exact to the bit, bfloat16 rounded once; one file and shards), the tensor
// names, shapes and row blocks the reference expects, mamba_config.json with exactly the
// reference's fields, the Mamba-1 doubled dt bias in both directions, and bad folders (missing
// files and tensors, wrong shapes, the other mixer, bad JSON fields), each with its own message.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include <mil/core/rng.hpp>
#include <mil/io/json.hpp>
#include <mil/nn/hybrid.hpp>
#include <mil/nn/hybrid_checkpoint.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/hf_tokenizer_writer.hpp>

#include "common/compare.hpp"

using namespace mil;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mil::Error& e) {
    return e.what();
  }
  return "<no error>";
}

fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / ("mil_test_hybrid_ckpt_" + name + "_" +
                                        std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// d_model 64, 4 heads of 16, 2 KV heads, 4 layers, vocab 300; attention on every `every`-th layer.
nn::HybridConfig small_config(nn::MixerKind mixer, int64_t every, bool tied) {
  nn::HybridConfig c;
  c.llama.vocab = 300;
  c.llama.d_model = 64;
  c.llama.n_layers = 4;
  c.llama.n_heads = 4;
  c.llama.n_kv_heads = 2;
  c.llama.head_dim = 16;
  c.llama.d_ff = 96;
  c.llama.rope_theta = 10000.f;
  c.llama.tied_embeddings = tied;
  c.attn_layers = nn::attention_every(4, every);
  c.mixer = mixer;
  return c;
}

// A model of configuration c whose every parameter is uniform(-1, 1) (seeded).
nn::HybridModel<float, Cpu> random_model(const nn::HybridConfig& c, uint64_t seed) {
  nn::HybridModel<float, Cpu> m(c);
  auto& values = m.params().values();
  for (int64_t i = 0; i < values.numel(); ++i)
    values[i] = rng::uniform(seed, 0, uint64_t(i), -1.f, 1.f);
  return m;
}

const float* param(const nn::HybridModel<float, Cpu>& m, const std::string& name) {
  return m.param(name).value().data();
}

// The model of configuration c loaded from dir.
nn::HybridModel<float, Cpu> loaded(const fs::path& dir, const nn::HybridConfig& c) {
  nn::HybridModel<float, Cpu> m(c);
  nn::load_hybrid_weights(dir, m);
  return m;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return json::parse(in);
}
void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

struct Stored {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// All tensors of a checkpoint folder as float.
std::map<std::string, Stored> read_all(const fs::path& dir) {
  const auto ck = io::SafetensorsCheckpoint::open(dir);
  std::map<std::string, Stored> out;
  for (const auto& t : ck.tensors()) out[t.name] = {t.shape, io::to_float(t)};
  return out;
}
// Rewrites the folder's weights (one F32 file) from `tensors`, with `metadata`.
void rewrite(const fs::path& dir, const std::map<std::string, Stored>& tensors,
             const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  std::vector<io::FloatTensorRef> refs;
  for (const auto& [name, t] : tensors) refs.push_back({name, t.shape, t.data.data()});
  io::write_float_safetensors(dir, refs, io::SafetensorsDtype::F32, int64_t(1) << 40, metadata);
}

void check_same_config(const nn::HybridConfig& a, const nn::HybridConfig& b) {
  CHECK(a.llama.vocab == b.llama.vocab);
  CHECK(a.llama.d_model == b.llama.d_model);
  CHECK(a.llama.n_layers == b.llama.n_layers);
  CHECK(a.llama.n_heads == b.llama.n_heads);
  CHECK(a.llama.n_kv_heads == b.llama.n_kv_heads);
  CHECK(a.llama.head_dim == b.llama.head_dim);
  CHECK(a.llama.d_ff == b.llama.d_ff);
  CHECK(a.llama.norm_eps == b.llama.norm_eps);
  CHECK(a.llama.rope_theta == b.llama.rope_theta);
  CHECK(a.llama.tied_embeddings == b.llama.tied_embeddings);
  CHECK(a.llama.attention_bias == b.llama.attention_bias);
  CHECK(a.attn_layers == b.attn_layers);
  CHECK(a.mixer == b.mixer);
  CHECK(a.conv_kernel == b.conv_kernel);
  CHECK(a.mamba1_d_state == b.mamba1_d_state);
  CHECK(a.mamba1_double_dt_bias == b.mamba1_double_dt_bias);
}

}  // namespace

TEST_CASE("hybrid checkpoint: save and load round trips for both mixers and layouts") {
  for (auto mixer : {nn::MixerKind::mamba2, nn::MixerKind::mamba1})
    for (int64_t every : {0, 2})
      for (bool tied : {true, false})
        for (const char* dtype : {"float32", "bfloat16"}) {
          const nn::HybridConfig c = small_config(mixer, every, tied);
          CAPTURE(nn::mixer_name(mixer));
          CAPTURE(every);
          CAPTURE(tied);
          CAPTURE(dtype);
          const auto w = random_model(c, 11 + every + tied);
          const fs::path dir = scratch("roundtrip");
          nn::HybridSaveOptions o;
          o.hf.dtype = dtype;
          nn::save_hybrid(dir, w, o);
          CHECK(nn::is_hybrid_checkpoint(dir));
          const nn::HybridConfig back = nn::hybrid_config_from_files(dir);
          check_same_config(back, c);
          const auto w2 = loaded(dir, back);
          REQUIRE(w2.params().numel() == w.params().numel());
          int64_t bad = 0;
          const auto& a = w.params().values();
          for (int64_t i = 0; i < a.numel(); ++i) {
            const float want = std::string(dtype) == "float32" ? a[i] : float(bf16(a[i]));
            bad += std::memcmp(&want, &w2.params().values()[i], 4) != 0;
          }
          CHECK(bad == 0);
          // The tied model also stores lm_head.weight for the reference's strict loading.
          const auto ck = io::SafetensorsCheckpoint::open(dir);
          CHECK((ck.find("lm_head.weight") != nullptr));
          fs::remove_all(dir);
        }
}

TEST_CASE("hybrid checkpoint: shards and an index round trip exactly") {
  const nn::HybridConfig c = small_config(nn::MixerKind::mamba2, 2, false);
  const auto w = random_model(c, 5);
  const fs::path dir = scratch("shards");
  nn::HybridSaveOptions o;
  o.hf.dtype = "float32";
  o.hf.max_shard_bytes = 60'000;
  nn::save_hybrid(dir, w, o);
  CHECK(fs::exists(dir / "model.safetensors.index.json"));
  CHECK_FALSE(fs::exists(dir / "model.safetensors"));
  const auto w2 = loaded(dir, nn::hybrid_config_from_files(dir));
  CHECK(std::memcmp(w.params().values().data(), w2.params().values().data(),
                    size_t(w.params().numel()) * 4) == 0);
  fs::remove_all(dir);
}

TEST_CASE("hybrid checkpoint: Mamba-2 tensors have the reference's names shapes and row blocks") {
  const nn::HybridConfig c = small_config(nn::MixerKind::mamba2, 2, true);
  const auto w = random_model(c, 7);
  const fs::path dir = scratch("names2");
  nn::HybridSaveOptions o;
  o.hf.dtype = "float32";
  nn::save_hybrid(dir, w, o);
  const auto t = read_all(dir);
  std::map<std::string, std::vector<int64_t>> layer0, layer1;
  for (const auto& [name, s] : t) {
    if (name.starts_with("model.layers.0.")) layer0[name.substr(15)] = s.shape;
    if (name.starts_with("model.layers.1.")) layer1[name.substr(15)] = s.shape;
  }
  // d_inner 64, d_xb 32, 4 heads: in_proj rows z 64 + x 32 + B 32 + C 64 + dt 4 = 196.
  const std::map<std::string, std::vector<int64_t>> mamba2{
      {"mamba.in_proj.weight", {196, 64}}, {"mamba.conv1d.weight", {128, 1, 4}},
      {"mamba.conv1d.bias", {128}},        {"mamba.dt_bias", {4}},
      {"mamba.A_log", {4}},                {"mamba.D", {4}},
      {"mamba.norm.weight", {64}},         {"mamba.out_proj.weight", {64, 64}},
      {"mlp.gate_proj.weight", {96, 64}},  {"mlp.up_proj.weight", {96, 64}},
      {"mlp.down_proj.weight", {64, 96}},  {"input_layernorm.weight", {64}},
      {"post_attention_layernorm.weight", {64}}};
  const std::map<std::string, std::vector<int64_t>> attention{
      {"self_attn.q_proj.weight", {64, 64}}, {"self_attn.k_proj.weight", {32, 64}},
      {"self_attn.v_proj.weight", {32, 64}}, {"self_attn.o_proj.weight", {64, 64}},
      {"mlp.gate_proj.weight", {96, 64}},    {"mlp.up_proj.weight", {96, 64}},
      {"mlp.down_proj.weight", {64, 96}},    {"input_layernorm.weight", {64}},
      {"post_attention_layernorm.weight", {64}}};
  CHECK(layer0 == mamba2);
  CHECK(layer1 == attention);
  CHECK(t.size() == 2 * mamba2.size() + 2 * attention.size() + 3);  // + embed, norm, lm_head
  CHECK(t.at("model.embed_tokens.weight").shape == std::vector<int64_t>{300, 64});
  CHECK(t.at("lm_head.weight").data == t.at("model.embed_tokens.weight").data);
  // in_proj is mil's in_proj as is ([z|x|B|C|dt]); conv [C, K] -> [C, 1, K] keeps the order.
  CHECK(std::memcmp(t.at("model.layers.2.mamba.in_proj.weight").data.data(),
                    param(w, "layers.2.in_proj"), 196 * 64 * 4) == 0);
  CHECK(std::memcmp(t.at("model.layers.2.mamba.conv1d.weight").data.data(),
                    param(w, "layers.2.conv_w"), 128 * 4 * 4) == 0);
  CHECK(std::memcmp(t.at("model.layers.2.mamba.norm.weight").data.data(),
                    param(w, "layers.2.ssm_norm"), 64 * 4) == 0);
  // Attention: q, k, v are row blocks of wqkv.
  CHECK(std::memcmp(t.at("model.layers.3.self_attn.k_proj.weight").data.data(),
                    param(w, "layers.3.wqkv") + 64 * 64, 32 * 64 * 4) == 0);
  fs::remove_all(dir);
}

TEST_CASE("hybrid checkpoint: Mamba-1 projections and the doubled dt bias") {
  nn::HybridConfig c = small_config(nn::MixerKind::mamba1, 2, false);
  const auto w = random_model(c, 9);
  const fs::path dir = scratch("names1");
  nn::HybridSaveOptions o;
  o.hf.dtype = "float32";
  nn::save_hybrid(dir, w, o);
  auto t = read_all(dir);
  std::map<std::string, std::vector<int64_t>> layer0;
  for (const auto& [name, s] : t)
    if (name.starts_with("model.layers.0.mamba.")) layer0[name.substr(21)] = s.shape;
  // d_inner 64, d_xb 32, dt_rank ceil(64 / 16) = 4, d_state 16.
  const std::map<std::string, std::vector<int64_t>> mamba1{
      {"in_proj_x.weight", {32, 64}},    {"in_proj_z.weight", {64, 64}},
      {"B_proj.weight", {32, 64}},       {"C_proj.weight", {64, 64}},
      {"dt_proj_down.weight", {4, 64}},  {"dt_proj.weight", {64, 4}},
      {"dt_proj.bias", {64}},            {"conv1d.weight", {64, 1, 4}},
      {"conv1d.bias", {64}},             {"A_log", {64, 16}},
      {"D", {64}},                       {"out_proj.weight", {64, 64}}};
  CHECK(layer0 == mamba1);
  // mil's in_proj rows are [x | z | B | C].
  const float* in_proj = param(w, "layers.0.in_proj");
  CHECK(std::memcmp(t.at("model.layers.0.mamba.in_proj_x.weight").data.data(), in_proj,
                    32 * 64 * 4) == 0);
  CHECK(std::memcmp(t.at("model.layers.0.mamba.in_proj_z.weight").data.data(), in_proj + 32 * 64,
                    64 * 64 * 4) == 0);
  CHECK(std::memcmp(t.at("model.layers.0.mamba.B_proj.weight").data.data(), in_proj + 96 * 64,
                    32 * 64 * 4) == 0);
  CHECK(std::memcmp(t.at("model.layers.0.mamba.C_proj.weight").data.data(), in_proj + 128 * 64,
                    64 * 64 * 4) == 0);
  // mil adds its dt bias once: the reference (which adds it twice) gets half of it.
  const auto& bias = t.at("model.layers.0.mamba.dt_proj.bias").data;
  const float* mine = param(w, "layers.0.dt_bias");
  for (int i = 0; i < 64; ++i) CHECK(bias[size_t(i)] == mine[i] / 2);
  CHECK(io::SafetensorsCheckpoint::open(dir).metadata().at("mil_mamba1_dt_bias_added") == "twice");
  CHECK(read_json(dir / "config.json").at("mil_mamba1_double_dt_bias") == false);

  // The same folder read into a model that adds the bias twice: the stored values as they are.
  nn::HybridConfig twice = c;
  twice.mamba1_double_dt_bias = true;
  auto w2 = loaded(dir, twice);
  for (int i = 0; i < 64; ++i) CHECK(param(w2, "layers.0.dt_bias")[i] == bias[size_t(i)]);

  // reference_dt_bias = false: mil's values, marked "once".
  o.reference_dt_bias = false;
  nn::save_hybrid(dir, w, o);
  t = read_all(dir);
  for (int i = 0; i < 64; ++i)
    CHECK(t.at("model.layers.0.mamba.dt_proj.bias").data[size_t(i)] == mine[i]);
  CHECK(io::SafetensorsCheckpoint::open(dir).metadata().at("mil_mamba1_dt_bias_added") == "once");
  w2 = loaded(dir, twice);
  for (int i = 0; i < 64; ++i) CHECK(param(w2, "layers.0.dt_bias")[i] == mine[i] / 2);

  // A folder as the reference writes it: no metadata key (the bias is added twice) and a
  // config.json without mil's key (the model reads as adding it twice: values unchanged).
  rewrite(dir, t);
  json cfg = read_json(dir / "config.json");
  cfg.erase("mil_mamba1_double_dt_bias");
  write_text(dir / "config.json", cfg.dump(2));
  const nn::HybridConfig ref = nn::hybrid_config_from_files(dir);
  CHECK(ref.mamba1_double_dt_bias);
  auto w3 = loaded(dir, ref);
  for (int i = 0; i < 64; ++i) CHECK(param(w3, "layers.0.dt_bias")[i] == mine[i]);
  w3 = loaded(dir, c);  // into a model that adds it once: doubled
  for (int i = 0; i < 64; ++i) CHECK(param(w3, "layers.0.dt_bias")[i] == 2 * mine[i]);

  rewrite(dir, t, {{"format", "pt"}, {"mil_mamba1_dt_bias_added", "thrice"}});
  CHECK(error_of([&] { nn::load_hybrid_weights(dir, w3); })
            .find("expected \"once\" or \"twice\"") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("hybrid checkpoint: mamba_config.json has exactly the reference's fields") {
  const nn::HybridConfig c2 = small_config(nn::MixerKind::mamba2, 2, true);
  const json j2 = json::parse(nn::hybrid_mamba_config_json(c2).dump());
  std::vector<std::string> keys;
  const auto ordered = nn::hybrid_mamba_config_json(c2);
  for (const auto& [k, v] : ordered.items()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"d_model", "ssm_cfg", "rms_norm_eps", "vocab_size",
                                         "d_inner", "d_xb", "intermediate_size", "hidden_act",
                                         "n_layer", "attn_layers"});
  CHECK(j2 == json::parse(R"({"d_model": 64, "ssm_cfg": {"expand": 1, "ngroups": 4,
      "d_state": 16}, "rms_norm_eps": 1e-05, "vocab_size": 300, "d_inner": 64, "d_xb": 32,
      "intermediate_size": 96, "hidden_act": "silu", "n_layer": 4, "attn_layers": [1, 3]})"));
  nn::HybridConfig c1 = small_config(nn::MixerKind::mamba1, 0, true);
  CHECK(json::parse(nn::hybrid_mamba_config_json(c1).dump()).at("ssm_cfg") ==
        json::parse(R"({"expand": 1})"));
  CHECK(json::parse(nn::hybrid_mamba_config_json(c1).dump()).at("attn_layers") == json::array());
  c1.conv_kernel = 3;
  c1.mamba1_d_state = 8;
  CHECK(json::parse(nn::hybrid_mamba_config_json(c1).dump()).at("ssm_cfg") ==
        json::parse(R"({"expand": 1, "d_state": 8, "d_conv": 3})"));

  // config.json: the teacher's (LlamaForCausalLM), with _name_or_path for the reference.
  const fs::path dir = scratch("json");
  nn::HybridSaveOptions o;
  o.teacher_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct";
  nn::save_hybrid(dir, random_model(c2, 1), o);
  const json cfg = read_json(dir / "config.json");
  CHECK(cfg.at("_name_or_path") == "HuggingFaceTB/SmolLM2-135M-Instruct");
  CHECK(cfg.at("architectures") == json::array({"LlamaForCausalLM"}));
  CHECK(cfg.at("num_key_value_heads") == 2);
  CHECK(cfg.at("tie_word_embeddings") == true);
  CHECK(cfg.at("torch_dtype") == "bfloat16");
  CHECK_FALSE(cfg.contains("mil_mamba1_double_dt_bias"));  // Mamba-2 has no such quirk
  CHECK(read_json(dir / "mamba_config.json") == j2);
  nn::save_hybrid(dir, random_model(c2, 1), {});
  CHECK(fs::path(read_json(dir / "config.json").at("_name_or_path").get<std::string>()) ==
        fs::absolute(dir).lexically_normal());
  fs::remove_all(dir);
}

TEST_CASE("hybrid checkpoint: a 7-layer model with its attention layers listed out of order") {
  // The reference only tests membership in attn_layers; mil sorts them.
  nn::HybridConfig c = small_config(nn::MixerKind::mamba2, 0, true);
  c.llama.n_layers = 7;
  c.attn_layers = {2, 5};
  const fs::path dir = scratch("order");
  nn::save_hybrid(dir, random_model(c, 3), {});
  json mj = read_json(dir / "mamba_config.json");
  mj["attn_layers"] = {5, 2};
  mj["vocab_size"] = nullptr;  // as the reference's scripts leave it
  write_text(dir / "mamba_config.json", mj.dump(4));
  CHECK(nn::hybrid_config_from_files(dir).attn_layers == std::vector<int64_t>{2, 5});
  fs::remove_all(dir);
}

TEST_CASE("hybrid checkpoint: bad folders and files each give their own error") {
  const nn::HybridConfig c = small_config(nn::MixerKind::mamba2, 2, true);
  const auto w = random_model(c, 21);
  const fs::path dir = scratch("bad");
  nn::save_hybrid(dir, w, {});
  const json good_m = read_json(dir / "mamba_config.json");
  const json good_c = read_json(dir / "config.json");
  const auto good_t = read_all(dir);
  auto contains = [](const std::string& s, const std::string& part) {
    CAPTURE(s);
    CAPTURE(part);
    CHECK(s.find(part) != std::string::npos);
  };
  auto config_error = [&] { return error_of([&] { nn::hybrid_config_from_files(dir); }); };
  nn::HybridModel<float, Cpu> w2(c);
  auto load_error = [&] { return error_of([&] { nn::load_hybrid_weights(dir, w2); }); };
  CHECK(load_error() == "<no error>");

  // Missing files.
  fs::remove(dir / "mamba_config.json");
  CHECK_FALSE(nn::is_hybrid_checkpoint(dir));
  contains(config_error(), "has no mamba_config.json");
  write_text(dir / "mamba_config.json", good_m.dump(4));
  fs::remove(dir / "config.json");
  contains(config_error(), "has no config.json");
  write_text(dir / "config.json", good_c.dump(2));
  fs::remove(dir / "model.safetensors");
  contains(load_error(), "has neither model.safetensors nor");

  // Weights that do not match the configuration.
  auto t = good_t;
  t.erase("model.layers.0.mamba.D");
  rewrite(dir, t);
  contains(load_error(), "tensor 'model.layers.0.mamba.D' is missing");
  t = good_t;
  t["model.layers.2.mamba.A_log"].shape = {2, 2};
  rewrite(dir, t);
  contains(load_error(), "tensor 'model.layers.2.mamba.A_log' has shape [2, 2], expected [4]");
  t = good_t;
  t["model.layers.0.mamba.extra"] = {{1}, {0.f}};
  rewrite(dir, t);
  contains(load_error(), "does not use ('model.layers.0.mamba.extra')");
  rewrite(dir, good_t);
  nn::HybridConfig other = c;
  other.mixer = nn::MixerKind::mamba1;
  nn::HybridModel<float, Cpu> w1(other);
  contains(error_of([&] { nn::load_hybrid_weights(dir, w1); }),
           "is missing (the checkpoint has a Mamba-2 layer there)");
  nn::HybridConfig all_attention = c;
  all_attention.attn_layers = {0, 1, 2, 3};
  nn::HybridModel<float, Cpu> wa(all_attention);
  contains(error_of([&] { nn::load_hybrid_weights(dir, wa); }),
           "'model.layers.0.self_attn.q_proj.weight' is missing (the checkpoint has a Mamba-2");
  nn::HybridSaveOptions f16;
  f16.hf.dtype = "float16";
  contains(error_of([&] { nn::save_hybrid(dir, w, f16); }), "is not bfloat16 or float32");

  // mamba_config.json fields, one bad value at a time.
  struct Case {
    const char* patch;
    const char* message;
  };
  const Case cases[] = {
      {R"({"d_model": 65})", "\"d_model\" is 65 but config.json gives hidden_size = 64"},
      {R"({"d_model": "64"})", "\"d_model\" must be an integer"},
      {R"({"d_inner": 32})", "\"d_inner\" is 32 but config.json gives num_attention_heads"},
      {R"({"d_xb": 64})", "\"d_xb\" is 64 but config.json gives num_key_value_heads"},
      {R"({"intermediate_size": 95})", "\"intermediate_size\" is 95"},
      {R"({"n_layer": 5})", "\"n_layer\" is 5 but config.json gives num_hidden_layers = 4"},
      {R"({"vocab_size": 301})", "\"vocab_size\" is 301"},
      {R"({"hidden_act": "gelu"})", "\"hidden_act\" is \"gelu\""},
      {R"({"rms_norm_eps": 1e-6})", "\"rms_norm_eps\" is 0.000001 but config.json's"},
      {R"({"rms_norm_eps": -1})", "\"rms_norm_eps\" must be a positive number"},
      {R"({"attn_layers": [1, 4]})", "\"attn_layers\" has 4, not a layer index in [0, 4)"},
      {R"({"attn_layers": [1, 1]})", "\"attn_layers\" lists a layer twice"},
      {R"({"attn_layers": 1})", "\"attn_layers\" must be a list"},
      {R"({"n_layers": 4})", "unknown field \"n_layers\""},
      {R"({"ssm_cfg": {"expand": 1, "ngroups": 2, "d_state": 16}})",
       "\"ssm_cfg.ngroups\" is 2, mil needs num_attention_heads = 4"},
      {R"({"ssm_cfg": {"expand": 1, "ngroups": 4, "d_state": 8}})",
       "\"ssm_cfg.d_state\" is 8, mil needs head_dim = 16"},
      {R"({"ssm_cfg": {"expand": 1, "ngroups": 4, "d_state": 16, "norm_before_gate": true}})",
       "\"ssm_cfg.norm_before_gate\" is true, mil supports only false"},
      {R"({"ssm_cfg": {"expand": 1, "ngroups": 4, "d_state": 16, "repeat_kv_before_conv": true}})",
       "\"ssm_cfg.repeat_kv_before_conv\" is true"},
      {R"({"ssm_cfg": {"expand": 1, "ngroups": 4, "d_state": 16, "d_conv": 9}})",
       "\"ssm_cfg.d_conv\" must be an integer in [2, 8]"},
      {R"({"ssm_cfg": {"expand": 1, "ngroups": 4, "d_state": 16, "foo": 1}})",
       "unknown field \"ssm_cfg.foo\" (not a Mamba2 argument"},
      {R"({"ssm_cfg": {"expand": 1, "dt_rank": 5}})",
       "\"ssm_cfg.dt_rank\" is 5, mil supports only \"auto\""},
      {R"({"ssm_cfg": {"expand": 1, "repeat_kv_before_conv": false}})",
       "\"ssm_cfg.repeat_kv_before_conv\" is false, mil supports only true"},
      {R"({"ssm_cfg": {"expand": 1, "d_state": 7}})", "multiples of d_state 7"},
      {R"({"ssm_cfg": [1]})", "\"ssm_cfg\" must be a JSON object"},
  };
  for (const auto& k : cases) {
    json m = good_m;
    const json patch = json::parse(k.patch);
    for (const auto& [key, v] : patch.items()) m[key] = v;  // whole values, not merged
    write_text(dir / "mamba_config.json", m.dump(4));
    contains(config_error(), k.message);
  }
  write_text(dir / "mamba_config.json", "{\"d_model\": 64,");
  contains(config_error(), "is not valid JSON");
  write_text(dir / "mamba_config.json", good_m.dump(4));
  CHECK(config_error() == "<no error>");
  json cfg = good_c;
  cfg["mil_mamba1_double_dt_bias"] = "yes";
  write_text(dir / "config.json", cfg.dump(2));
  contains(config_error(), "\"mil_mamba1_double_dt_bias\" must be true or false");
  cfg = good_c;
  cfg["num_key_value_heads"] = 4;
  write_text(dir / "config.json", cfg.dump(2));
  contains(config_error(), "\"d_xb\" is 32 but config.json gives num_key_value_heads");
  fs::remove_all(dir);
}

// mil's forward against scripts/check_hybrid_reference.py, an independent float64 numpy
// implementation of the reference code's forward run on the checkpoints save_hybrid writes
// (scripts/make_hybrid_reference_golden.sh regenerates the golden file).
TEST_CASE("hybrid reference: logits equal the numpy reference forward of the saved checkpoint") {
  struct Variant {
    const char* name;
    nn::MixerKind mixer;
    int every;  // attention on every `every`-th layer; 0 = none
    bool tied, double_bias;
  };
  const Variant variants[] = {{"mamba2_50_untied", nn::MixerKind::mamba2, 2, false, false},
                              {"mamba2_0_tied", nn::MixerKind::mamba2, 0, true, false},
                              {"mamba1_50_tied_double", nn::MixerKind::mamba1, 2, true, true},
                              {"mamba1_0_untied", nn::MixerKind::mamba1, 0, false, false}};
  const std::vector<int32_t> ids = {3, 17, 0, 23, 5, 5, 11, 20, 9, 299, 1, 42};
  const char* write_dir = std::getenv("MIL_WRITE_HYBRID_GOLDEN");
  nlohmann::json golden;
  if (!write_dir) {
    const auto path = std::filesystem::path(MIL_SOURCE_DIR) / "tests/nn/golden/hybrid_reference.json";
    golden = io::read_json_file_strict(path);
    REQUIRE(golden.at("ids").get<std::vector<int32_t>>() == ids);
  } else {
    std::ofstream(std::filesystem::path(write_dir) / "ids.json") << nlohmann::json(ids).dump();
  }
  for (const Variant& v : variants) {
    CAPTURE(v.name);
    nn::HybridConfig c;
    c.llama.vocab = 300;
    c.llama.d_model = 64;
    c.llama.n_layers = 4;
    c.llama.n_heads = 4;
    c.llama.n_kv_heads = 2;
    c.llama.head_dim = 16;
    c.llama.d_ff = 96;
    c.llama.rope_theta = 10000.f;
    c.llama.tied_embeddings = v.tied;
    c.attn_layers = nn::attention_every(4, v.every);
    c.mixer = v.mixer;
    c.mamba1_double_dt_bias = v.double_bias;
    nn::HybridModel<float, Cpu> m(c);
    m.init_random(42, 0.3f);
    if (write_dir) {
      nn::HybridSaveOptions o;
      o.hf.dtype = "float32";
      nn::save_hybrid(std::filesystem::path(write_dir) / v.name, m, o);
      continue;
    }
    const int64_t T = int64_t(ids.size());
    auto idt = Tensor<int32_t, Cpu>::from(Shape{T}, ids);
    ag::Tape tape;
    ag::NoGrad ng(tape);
    const auto logits = m.forward(tape, idt, nn::sequence_positions<Cpu>(1, T), 1, T).value();
    const auto& rows = golden.at("models").at(v.name);
    REQUIRE(int64_t(rows.size()) == T);
    double max_diff = 0;
    int agree = 0;
    for (int64_t t = 0; t < T; ++t) {
      const auto ref = rows[size_t(t)].get<std::vector<double>>();
      REQUIRE(int64_t(ref.size()) == c.llama.vocab);
      int64_t a = 0, b = 0;
      for (int64_t k = 0; k < c.llama.vocab; ++k) {
        const double x = logits[t * c.llama.vocab + k];
        max_diff = std::max(max_diff, std::abs(x - ref[size_t(k)]));
        if (x > logits[t * c.llama.vocab + a]) a = k;
        if (ref[size_t(k)] > ref[size_t(b)]) b = k;
      }
      agree += a == b;
    }
    MESSAGE(std::string(v.name) << ": max |logit - reference| " << max_diff << ", argmax " << agree << "/" << T);
    CHECK(max_diff < 1e-4);
    CHECK(agree == T);
  }
}

TEST_CASE("hybrid checkpoint: save then load_model gives bitwise identical logits") {
  for (auto mixer : {nn::MixerKind::mamba2, nn::MixerKind::mamba1}) {
    CAPTURE(std::string(nn::mixer_name(mixer)));
    nn::HybridConfig c;
    c.llama.vocab = 260;
    c.llama.d_model = 64;
    c.llama.n_layers = 3;
    c.llama.n_heads = 4;
    c.llama.n_kv_heads = 2;
    c.llama.head_dim = 16;
    c.llama.d_ff = 96;
    c.attn_layers = {1};
    c.mixer = mixer;
    nn::HybridModel<float, Cpu> m(c);
    m.init_random(5, 0.2f);
    // A byte-level tokenizer of the 256 byte tokens and one special, enough for load_model.
    text::TokenizerData td;
    td.model = "gpt2";
    td.pre = "gpt2";
    for (int b = 0; b < 256; ++b) td.tokens.push_back(text::to_utf8(text::byte_to_unicode()[b]));
    td.tokens.push_back("ab");
    td.merges = {"a b"};
    td.tokens.push_back("<|endoftext|>");
    td.token_types.assign(td.tokens.size(), text::kTokenNormal);
    td.token_types.back() = text::kTokenControl;
    td.eos = 257;
    const auto dir = std::filesystem::temp_directory_path() /
                     ("mil_hybrid_roundtrip_" + std::to_string(::getpid()) + nn::mixer_name(mixer));
    nn::HybridSaveOptions o;
    o.hf.dtype = "float32";
    nn::save_hybrid(dir, m, o);
    text::save_hf_tokenizer(dir, td, "");
    auto loaded = nn::load_model(dir.string());
    std::filesystem::remove_all(dir);
    const std::vector<int32_t> ids = {1, 7, 250, 3, 99, 12, 0};
    auto idt = Tensor<int32_t, Cpu>::from(Shape{int64_t(ids.size())}, ids);
    auto pos = nn::sequence_positions<Cpu>(1, int64_t(ids.size()));
    ag::Tape tape;
    ag::NoGrad ng(tape);
    const auto a = m.forward(tape, idt, pos, 1, int64_t(ids.size())).value().to_vector();
    const auto b = loaded.model.forward(tape, idt, pos, 1, int64_t(ids.size())).value().to_vector();
    CHECK(loaded.model.config().attn_layers == c.attn_layers);
    CHECK(loaded.model.config().mixer == mixer);
    CHECK(test::bytes_of(a) == test::bytes_of(b));
  }
}
