// Hugging Face Llama-family models: config.json of llama, mistral and qwen2 (transformers'
// defaults, Llama-3.1 RoPE scaling, transformers 4 and 5 RoPE keys), a table of bad configs each
// with its own message, save -> load round trips of small random models (float32 exact to the
// bit, bfloat16 rounded once; one file and shards; tied and untied; with q/k/v biases) giving
// the same parameters and logits, weight files that do not match their config, and tiny
// checkpoints written by Python (transformers' config classes, safetensors) whose logits come
// from an independent numpy forward (tests/nn/golden, scripts/make_llama_hf_golden.py).
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>

#include <mil/nn/llama_hf.hpp>

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

fs::path golden_dir() {
#ifdef MIL_SOURCE_DIR
  return fs::path(MIL_SOURCE_DIR) / "tests/nn/golden";
#else
  return fs::path(__FILE__).parent_path() / "golden";
#endif
}

fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / ("mil_test_llama_hf_" + name + "_" +
                                        std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// SmolLM2-135M's config.json (as on the Hub), the base of the table below.
json smollm2() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
    "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
    "is_llama_config": true, "max_position_embeddings": 8192, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false,
    "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true,
    "vocab_size": 49152})");
}

// `j` with the members of `patch` set (a null member removes the key: merge-patch semantics).
json with(json j, const json& patch) {
  j.merge_patch(patch);
  return j;
}
// `j` with `key` set to an explicit null (transformers treats it unlike an absent key).
json with_null(json j, const char* key) {
  j[key] = nullptr;
  return j;
}

void check_same_config(const nn::LlamaConfig& a, const nn::LlamaConfig& b) {
  CHECK(a.vocab == b.vocab);
  CHECK(a.d_model == b.d_model);
  CHECK(a.n_layers == b.n_layers);
  CHECK(a.n_heads == b.n_heads);
  CHECK(a.n_kv_heads == b.n_kv_heads);
  CHECK(a.head_dim == b.head_dim);
  CHECK(a.d_ff == b.d_ff);
  CHECK(a.norm_eps == b.norm_eps);
  CHECK(a.rope_theta == b.rope_theta);
  CHECK(a.tied_embeddings == b.tied_embeddings);
  CHECK(a.attention_bias == b.attention_bias);
  CHECK(a.rope_llama3_scaling == b.rope_llama3_scaling);
  if (a.rope_llama3_scaling) {
    CHECK(a.rope_factor == b.rope_factor);
    CHECK(a.rope_low_freq_factor == b.rope_low_freq_factor);
    CHECK(a.rope_high_freq_factor == b.rope_high_freq_factor);
    CHECK(a.rope_original_max_positions == b.rope_original_max_positions);
  }
}

std::vector<float> logits(const nn::HybridModel<float, Cpu>& m, int64_t seq) {
  std::vector<int32_t> ids(static_cast<size_t>(seq));
  for (int64_t i = 0; i < seq; ++i) ids[size_t(i)] = int32_t((i * 17 + 5) % m.config().llama.vocab);
  auto t = Tensor<int32_t, Cpu>::from(Shape{seq}, ids);
  ag::Tape tape;
  ag::NoGrad ng(tape);
  return m.forward(tape, t, nn::sequence_positions<Cpu>(1, seq), 1, seq).value().to_vector();
}

nn::LlamaConfig small_config(bool tied, bool bias, bool llama3) {
  nn::LlamaConfig c;
  c.vocab = 61;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = bias ? 12 : 8;  // with bias: head_dim * heads != d_model, as in some models
  c.d_ff = 40;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  c.tied_embeddings = tied;
  c.attention_bias = bias;
  c.rope_llama3_scaling = llama3;
  c.rope_factor = 8.f;
  c.rope_original_max_positions = 32.f;
  return c;
}

}  // namespace

TEST_CASE("llama hf: configs of llama mistral and qwen2 with transformers' defaults") {
  auto smol = nn::hf_llama_config(smollm2(), "smol");
  check_same_config(smol.model, nn::LlamaConfig::smollm2_135m());
  CHECK(smol.model_type == "llama");
  CHECK(smol.max_position_embeddings == 8192);
  CHECK(smol.sliding_window == 0);
  CHECK(smol.bos_token_id == 1);
  CHECK(smol.eos_token_ids == std::vector<int64_t>{2});
  CHECK(smol.torch_dtype == "bfloat16");

  // Absent optional fields: llama's defaults (kv heads = heads, untied, eps 1e-6, theta 1e4).
  json bare = {{"model_type", "llama"}, {"vocab_size", 100}, {"hidden_size", 64},
               {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"intermediate_size", 96}};
  auto b = nn::hf_llama_config(bare, "bare");
  CHECK(b.model.n_kv_heads == 4);
  CHECK(b.model.head_dim == 16);
  CHECK_FALSE(b.model.tied_embeddings);
  CHECK(b.model.norm_eps == 1e-6f);
  CHECK(b.model.rope_theta == 10000.f);
  CHECK(b.max_position_embeddings == 2048);
  CHECK_FALSE(b.bos_token_id);

  // Mistral: kv heads default 8, sliding window default 4096; head_dim given (Mistral-Nemo).
  json mistral = with(bare, {{"model_type", "mistral"}, {"architectures", {"MistralForCausalLM"}},
                             {"num_attention_heads", 32}, {"hidden_size", 5120},
                             {"head_dim", 128}, {"max_position_embeddings", 32768},
                             {"eos_token_id", {2, 7}}});
  auto m = nn::hf_llama_config(mistral, "mistral");
  CHECK(m.model.n_kv_heads == 8);
  CHECK(m.model.head_dim == 128);
  CHECK(m.sliding_window == 4096);
  CHECK(m.eos_token_ids == std::vector<int64_t>{2, 7});
  CHECK(nn::hf_llama_config(with_null(mistral, "sliding_window"), "m").sliding_window == 0);
  CHECK(nn::hf_llama_config(with(mistral, {{"sliding_window", 65536}}), "m").sliding_window == 0);
  CHECK(nn::hf_llama_config(with_null(mistral, "num_key_value_heads"), "m").model.n_kv_heads ==
        32);

  // Qwen2: q/k/v biases always; kv heads default 32; a sliding window only when enabled.
  json qwen = with(bare, {{"model_type", "qwen2"}, {"architectures", {"Qwen2ForCausalLM"}},
                          {"num_attention_heads", 32}, {"hidden_size", 2048},
                          {"max_position_embeddings", 32768}, {"sliding_window", 32768},
                          {"use_sliding_window", false}, {"rope_theta", 1000000.0}});
  auto q = nn::hf_llama_config(qwen, "qwen2");
  CHECK(q.model.attention_bias);
  CHECK(q.model.n_kv_heads == 32);
  CHECK(q.model.rope_theta == 1e6f);
  CHECK(q.sliding_window == 0);
  auto qs = nn::hf_llama_config(with(qwen, {{"use_sliding_window", true}, {"sliding_window", 4096},
                                            {"max_window_layers", 1}}), "q");
  CHECK(qs.sliding_window == 4096);
  CHECK(nn::hf_llama_config(with(qwen, {{"use_sliding_window", true}, {"sliding_window", 4096},
                                        {"max_window_layers", 2}}), "q").sliding_window == 0);

  // Llama-3.1 RoPE scaling, in every spelling transformers reads.
  const json llama3 = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  for (const json& patch :
       {json{{"rope_scaling", llama3}, {"rope_theta", 500000.0}},
        json{{"rope_scaling", with(llama3, {{"rope_type", nullptr}, {"type", "llama3"}})},
             {"rope_theta", 500000.0}},
        json{{"rope_parameters", with(llama3, {{"rope_theta", 500000.0}})}}}) {
    INFO(patch.dump());
    auto l = nn::hf_llama_config(with(bare, patch), "llama3").model;
    CHECK(l.rope_llama3_scaling);
    CHECK(l.rope_theta == 500000.f);
    CHECK(l.rope_factor == 8.f);
    CHECK(l.rope_low_freq_factor == 1.f);
    CHECK(l.rope_high_freq_factor == 4.f);
    CHECK(l.rope_original_max_positions == 8192.f);
  }
  auto no_omp = nn::hf_llama_config(
      with(bare, {{"max_position_embeddings", 4096},
                  {"rope_scaling", with(llama3, {{"original_max_position_embeddings", nullptr}})}}),
      "l");
  CHECK(no_omp.model.rope_original_max_positions == 4096.f);
  auto deflt = nn::hf_llama_config(
      with(bare, {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 20000.0}}}}), "d");
  CHECK_FALSE(deflt.model.rope_llama3_scaling);
  CHECK(deflt.model.rope_theta == 20000.f);
}

TEST_CASE("llama hf: a table of bad configs gives one clear error each") {
  const json base = smollm2();
  struct Bad {
    const char* what;
    json config;
    const char* error;
  };
  const json rope_l3 = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  const std::vector<Bad> table = {
      {"not an object", json::array({1, 2}), "not a JSON object"},
      {"no model_type", with(base, {{"model_type", nullptr}}), "no \"model_type\""},
      {"gemma", with(base, {{"model_type", "gemma"}}), "model_type \"gemma\" is not supported"},
      {"model_type a number", with(base, {{"model_type", 3}}), "\"model_type\" must be a string"},
      {"classifier", with(base, {{"architectures", {"LlamaForSequenceClassification"}}}),
       "architecture \"LlamaForSequenceClassification\" is not supported"},
      {"architectures a string", with(base, {{"architectures", "LlamaForCausalLM"}}),
       "\"architectures\" must be a list of class names"},
      {"vocab a string", with(base, {{"vocab_size", "49152"}}),
       "\"vocab_size\" must be an integer in [1, 2147483647], found \"49152\""},
      {"no vocab", with(base, {{"vocab_size", nullptr}}),
       "\"vocab_size\" must be an integer in [1, 2147483647], found nothing"},
      {"null vocab", with_null(base, "vocab_size"), "\"vocab_size\" must be an integer in [1, "
                                                    "2147483647], found null"},
      {"vocab 2^40", with(base, {{"vocab_size", int64_t(1) << 40}}), "\"vocab_size\" must be"},
      {"hidden 0", with(base, {{"hidden_size", 0}}), "\"hidden_size\" must be an integer in [1,"},
      {"hidden negative", with(base, {{"hidden_size", -576}}), "found -576"},
      {"hidden a float", with(base, {{"hidden_size", 576.0}}),
       "\"hidden_size\" must be an integer"},
      {"layers huge", with(base, {{"num_hidden_layers", 1000000}}),
       "\"num_hidden_layers\" must be"},
      {"kv not a divisor", with(base, {{"num_key_value_heads", 2}}),
       "num_attention_heads 9 is not a multiple of num_key_value_heads 2"},
      {"kv zero", with(base, {{"num_key_value_heads", 0}}), "\"num_key_value_heads\" must be"},
      {"hidden not a multiple", with(base, {{"hidden_size", 577}}),
       "hidden_size 577 is not a multiple of num_attention_heads 9"},
      {"odd head_dim", with(base, {{"head_dim", 63}}), "head_dim 63 is odd"},
      {"eps zero", with(base, {{"rms_norm_eps", 0}}), "\"rms_norm_eps\" must be a positive number"},
      {"eps a string", with(base, {{"rms_norm_eps", "1e-5"}}), "\"rms_norm_eps\" must be"},
      {"eps beyond float", with(base, {{"rms_norm_eps", 1e300}}), "\"rms_norm_eps\" must be"},
      {"theta negative", with(base, {{"rope_theta", -1.0}}), "\"rope_theta\" must be a positive"},
      {"gelu", with(base, {{"hidden_act", "gelu"}}), "hidden_act \"gelu\" is not supported"},
      {"tie a string", with(base, {{"tie_word_embeddings", "yes"}}),
       "\"tie_word_embeddings\" must be true or false"},
      {"llama attention_bias", with(base, {{"attention_bias", true}}),
       "attention_bias = true (biases on q/k/v and o_proj) is not supported"},
      {"mlp_bias", with(base, {{"mlp_bias", true}}), "mlp_bias = true is not supported"},
      {"linear rope", with(base, {{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}}),
       "RoPE scaling type \"linear\" is not supported"},
      {"yarn rope", with(base, {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}}),
       "RoPE scaling type \"yarn\" is not supported"},
      {"rope_scaling a number", with(base, {{"rope_scaling", 5}}),
       "\"rope_scaling\" must be an object or null"},
      {"llama3 without factor",
       with(base, {{"rope_scaling", with(rope_l3, {{"factor", nullptr}})}}),
       "\"rope_scaling.factor\" must be a positive number, found nothing"},
      {"llama3 factors reversed",
       with(base, {{"rope_scaling", with(rope_l3, {{"high_freq_factor", 0.5}})}}),
       "needs high_freq_factor (0.5) > low_freq_factor (1)"},
      {"llama3 bad original",
       with(base, {{"rope_scaling", with(rope_l3, {{"original_max_position_embeddings", 1.5}})}}),
       "\"rope_scaling.original_max_position_embeddings\" must be an integer"},
      {"partial rope", with(base, {{"partial_rotary_factor", 0.5}}),
       "\"partial_rotary_factor\" must be 1 (partial RoPE is not supported)"},
      {"per-layer rope",
       with(base, {{"rope_parameters", {{"full_attention", {{"rope_type", "default"}}}}}}),
       "rope_parameters has per-layer-type RoPE parameters (\"full_attention\")"},
      {"sliding a string", with(base, {{"model_type", "mistral"}, {"architectures", nullptr},
                                       {"sliding_window", "4k"}}),
       "\"sliding_window\" must be an integer"},
      {"eos list with a string", with(base, {{"eos_token_id", {1, "x"}}}),
       "\"eos_token_id\" must be an integer"},
      {"bos negative", with(base, {{"bos_token_id", -1}}), "\"bos_token_id\" must be an integer"},
      {"max positions zero", with(base, {{"max_position_embeddings", 0}}),
       "\"max_position_embeddings\" must be an integer in [1,"},
  };
  for (const auto& b : table) {
    INFO(std::string(b.what));
    std::string e = error_of([&] { nn::hf_llama_config(b.config, "cfg.json"); });
    INFO(e);
    CHECK(e.find("config.json 'cfg.json'") != std::string::npos);
    CHECK(e.find(b.error) != std::string::npos);
  }
}

TEST_CASE("llama hf: config.json from a folder and a broken file") {
  const auto dir = scratch("config_file");
  io::write_text_file_atomic(dir / "config.json", smollm2().dump());
  check_same_config(nn::llama_config_from_hf_file(dir), nn::LlamaConfig::smollm2_135m());
  check_same_config(nn::llama_config_from_hf_file(dir / "config.json"),
                    nn::LlamaConfig::smollm2_135m());
  io::write_text_file_atomic(dir / "config.json", "{\"model_type\": \"llama\",");
  std::string e = error_of([&] { nn::llama_config_from_hf_file(dir); });
  CHECK(e.find((dir / "config.json").string()) != std::string::npos);
  CHECK(e.find("is not valid JSON") != std::string::npos);
  io::write_text_file_atomic(dir / "config.json", R"({"model_type":"llama","model_type":"qwen2"})");
  CHECK(error_of([&] { nn::llama_config_from_hf_file(dir); })
            .find("duplicate key \"model_type\"") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("llama hf: save then load gives the same parameters and logits") {
  struct Case {
    const char* what;
    bool tied, bias, llama3;
    int64_t shard_bytes;
  };
  for (const Case& k : {Case{"tied one file", true, false, false, int64_t(1) << 30},
                        Case{"untied llama3 sharded", false, false, true, 20000},
                        Case{"qwen2 bias sharded", false, true, false, 30000},
                        Case{"qwen2 bias tied", true, true, true, int64_t(1) << 30}}) {
    INFO(std::string(k.what));
    const auto cfg = small_config(k.tied, k.bias, k.llama3);
    nn::HybridModel<float, Cpu> model(nn::all_attention(cfg));
    model.init_random(42, 0.3f);
    // Norm weights and biases away from their init values, so a mix-up would show.
    for (auto& e : model.params().entries())
      if (e.name.ends_with("norm") || e.name.ends_with("bqkv"))
        for (int64_t i = 0; i < e.var.numel(); ++i)
          e.var.value().data()[i] = 1.f + 0.01f * float((i * 7 + e.offset) % 13);
    const auto dir = scratch("roundtrip");
    nn::HfSaveOptions opt;
    opt.dtype = "float32";
    opt.max_shard_bytes = k.shard_bytes;
    opt.bos_token_id = 1;
    opt.eos_token_id = 2;
    nn::save_llama_hf(dir, model, opt);
    const bool sharded = fs::exists(dir / "model.safetensors.index.json");
    CHECK(sharded == (k.shard_bytes < 100000));
    CHECK(fs::exists(dir / "model.safetensors") == !sharded);

    auto hf = nn::hf_llama_config_file(dir);
    check_same_config(hf.model, cfg);
    CHECK(hf.model_type == (k.bias ? "qwen2" : "llama"));
    CHECK(hf.bos_token_id == 1);
    auto loaded = nn::load_llama_model_hf(dir);
    const auto& a = model.params().values();
    const auto& b = loaded.params().values();
    REQUIRE(a.numel() == b.numel());
    CHECK(std::memcmp(a.data(), b.data(), size_t(a.numel()) * 4) == 0);
    auto la = logits(model, 7), lb = logits(loaded, 7);
    REQUIRE(la.size() == lb.size());
    CHECK(std::memcmp(la.data(), lb.data(), la.size() * 4) == 0);

    // bfloat16: every weight rounded to nearest even, once.
    opt.dtype = "bfloat16";
    nn::save_llama_hf(dir, model, opt);
    auto half = nn::load_llama_model_hf(dir);
    CHECK(io::SafetensorsCheckpoint::open(dir).tensors().front().dtype ==
          io::SafetensorsDtype::BF16);
    const auto& h = half.params().values();
    int64_t differ = 0;
    for (int64_t i = 0; i < a.numel(); ++i) differ += h[i] != float(bf16(a[i]));
    CHECK(differ == 0);
    fs::remove_all(dir);
  }
}

TEST_CASE("llama hf: weights that do not match the config are clear errors") {
  const auto cfg = small_config(false, true, false);
  nn::HybridModel<float, Cpu> model(nn::all_attention(cfg));
  model.init_random(7);
  const auto slots = nn::llama_hf_tensor_slots(cfg);
  auto entries_of = [&](const std::function<bool(io::SafetensorsEntry&)>& edit) {
    std::vector<io::SafetensorsEntry> out;
    for (const auto& s : slots) {
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      const float* p = nn::slot_data(model.weights(), s);
      io::SafetensorsEntry e{s.hf_name, io::SafetensorsDtype::F32, s.shape,
                             {reinterpret_cast<const uint8_t*>(p), size_t(n) * 4}};
      if (edit(e)) out.push_back(e);
    }
    return out;
  };
  const auto dir = scratch("bad_weights");
  io::write_text_file_atomic(dir / "config.json",
                             nn::llama_hf_config_json(cfg, nn::HfSaveOptions{}).dump());
  auto load_error = [&](std::vector<io::SafetensorsEntry> entries) {
    io::write_safetensors(dir / "model.safetensors", entries);
    return error_of([&] { nn::load_llama_model_hf(dir); });
  };
  const std::string up = "model.layers.1.mlp.up_proj.weight";
  CHECK(load_error(entries_of([&](auto& e) { return e.name != up; }))
            .find("tensor '" + up + "' is missing") != std::string::npos);
  std::string shape = load_error(entries_of([&](auto& e) {
    if (e.name == up) e.shape = {cfg.d_model, cfg.d_ff};
    return true;
  }));
  CHECK(shape.find("tensor '" + up + "' has shape [32, 40], expected [40, 32]") !=
        std::string::npos);
  std::string dtype = load_error(entries_of([&](auto& e) {
    if (e.name == up) e.dtype = io::SafetensorsDtype::I32;
    return true;
  }));
  CHECK(dtype.find("tensor '" + up + "' has dtype I32, not a floating-point type") !=
        std::string::npos);
  auto extra = entries_of([](auto&) { return true; });
  std::vector<float> zeros(size_t(cfg.d_model));
  const std::span<const uint8_t> zero_bytes(reinterpret_cast<const uint8_t*>(zeros.data()),
                                            zeros.size() * 4);
  extra.push_back({"model.layers.0.self_attn.o_proj.bias", io::SafetensorsDtype::F32,
                   {cfg.d_model}, zero_bytes});
  CHECK(load_error(extra).find("holds 1 tensor(s) that this Llama model does not use "
                               "('model.layers.0.self_attn.o_proj.bias')") != std::string::npos);
  // RoPE caches of old checkpoints are ignored; the model then loads.
  auto cache = entries_of([](auto&) { return true; });
  cache.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", io::SafetensorsDtype::F32,
                   {4}, zero_bytes.first(16)});
  CHECK(load_error(cache) == "<no error>");
  fs::remove_all(dir);
}

TEST_CASE("llama hf: checkpoints written by Python give the logits of an independent forward") {
  const auto golden = io::read_json_file_strict(golden_dir() / "hf_tiny_logits.json");
  const auto ids = golden["ids"].get<std::vector<int32_t>>();
  const int64_t seq = int64_t(ids.size());
  for (const char* name : {"llama", "qwen2"}) {
    INFO(std::string(name));
    const auto dir = golden_dir() / ("hf_tiny_" + std::string(name));
    auto hf = nn::hf_llama_config_file(dir);
    CHECK(hf.model.attention_bias == (std::string(name) == "qwen2"));
    CHECK(hf.model.rope_llama3_scaling == (std::string(name) == "llama"));
    auto model = nn::load_llama_model_hf(dir);
    auto t = Tensor<int32_t, Cpu>::from(Shape{seq}, ids);
    ag::Tape tape;
    ag::NoGrad ng(tape);
    auto out =
        model.forward(tape, t, nn::sequence_positions<Cpu>(1, seq), 1, seq).value().to_vector();
    const auto want = golden[name].get<std::vector<double>>();
    REQUIRE(out.size() == want.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      num += (out[i] - want[i]) * (out[i] - want[i]);
      den += want[i] * want[i];
    }
    INFO("normalised error ", std::sqrt(num / den));
    CHECK(std::sqrt(num / den) < 1e-5);  // float32 against float64 (measured: 4e-7, 1.1e-6)
  }
}
