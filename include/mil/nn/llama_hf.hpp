#pragma once
// Llama-family models in Hugging Face's layout (config.json + safetensors): the configuration of
// LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM, loading their weights into an
// all-attention nn::HybridModel<float, Cpu>, and saving one so that transformers loads it.
//
// config.json is untrusted: every field mil reads is type- and range-checked, absent optional
// fields take transformers' defaults for the model type, and anything mil cannot run exactly
// (other activations, RoPE types, an o_proj or MLP bias, partial RoPE) is a clear error.
// Safetensors weights use the HF row layout that mil's RoPE uses (no Q/K permutation, unlike
// GGUF); q, k, v (and gate, up) are stacked by rows into mil's fused parameters.
//
// Sliding windows (Mistral; Qwen2 with use_sliding_window): accepted and recorded in
// HfLlamaConfig::sliding_window. mil attends over the whole context, which is exactly the HF
// model's computation for sequences of at most sliding_window tokens; callers that run longer
// sequences should cap the context there.
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "../io/limits.hpp"
#include "../io/safetensors.hpp"
#include "../io/safetensors_writer.hpp"
#include "hybrid.hpp"

namespace mil::nn {

struct HfLlamaConfig {
  LlamaConfig model;
  std::string model_type;            // "llama", "mistral" or "qwen2"
  std::string architecture;          // e.g. "LlamaForCausalLM"
  int64_t max_position_embeddings = 0;
  int64_t sliding_window = 0;        // 0: none (see the header comment)
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;           // "" when the file names none
};

namespace hf_detail {

using nlohmann::json;

// Typed, range-checked access to the members of config.json; errors name the file and field.
class Fields {
 public:
  Fields(const json& j, const std::string& source) : j_(j), src_(source) {
    MIL_CHECK(j.is_object(), "config.json '", src_, "': not a JSON object: ",
              io::json_excerpt(j));
  }
  // The member, or nullptr when absent or null (transformers treats both as "use the default").
  const json* get(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }
  [[noreturn]] void fail(const char* key, const std::string& want, const json* v) const {
    MIL_FAIL("config.json '", src_, "': \"", key, "\" must be ", want, ", found ",
             v ? io::json_excerpt(*v) : j_.contains(key) ? std::string("null")
                                                          : std::string("nothing"));
  }
  int64_t integer(const char* key, int64_t lo, int64_t hi) const {
    return integer_in(get(key), key, lo, hi);
  }
  int64_t integer_or(const char* key, int64_t fallback, int64_t lo, int64_t hi) const {
    return has(key) ? integer(key, lo, hi) : fallback;
  }
  int64_t integer_in(const json* v, const char* key, int64_t lo, int64_t hi) const {
    const std::string want = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                             "]";
    if (!v || !v->is_number_integer()) fail(key, want, v);
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(hi)) fail(key, want, v);
    const int64_t x = v->get<int64_t>();  // in int64 range now (hi <= INT64_MAX)
    if (x < lo || x > hi) fail(key, want, v);
    return x;
  }
  // A finite number that fits a float, > 0 when `positive`.
  float number_in(const json* v, const char* key, bool positive) const {
    const char* want = positive ? "a positive number" : "a number";
    if (!v || !v->is_number()) fail(key, want, v);
    const double d = v->get<double>();
    const float f = float(d);
    if (!std::isfinite(d) || !std::isfinite(f) || (positive && !(f > 0.f))) fail(key, want, v);
    return f;
  }
  float number_or(const char* key, float fallback, bool positive) const {
    return has(key) ? number_in(get(key), key, positive) : fallback;
  }
  bool boolean_or(const char* key, bool fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(key, "true or false", v);
    return v->get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_string()) fail(key, "a string", v);
    return v->get<std::string>();
  }
  const std::string& source() const { return src_; }

 private:
  const json& j_;
  const std::string& src_;
};

struct ModelType {
  const char* model_type;
  const char* architecture;
  int64_t default_kv_heads;  // when num_key_value_heads is absent; -1: num_attention_heads
  int64_t default_max_positions;
  int64_t default_sliding_window;  // when sliding_window is absent; 0: none
};
inline constexpr ModelType kModelTypes[] = {
    {"llama", "LlamaForCausalLM", -1, 2048, 0},
    {"mistral", "MistralForCausalLM", 8, 4096 * 32, 4096},
    {"qwen2", "Qwen2ForCausalLM", 32, 32768, 4096},
};

// The shortest decimal that reads back as the same float (1e-05, not 9.99999974737875e-06).
inline double shortest(float f) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf - 1, f);
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

// RoPE: "rope_scaling" (transformers 4) or "rope_parameters" (transformers 5); rope_theta inside
// it wins over the top-level one. Only the default and Llama-3.1 ("llama3") types are exact in mil.
inline void read_rope(const Fields& f, LlamaConfig& c, int64_t max_positions) {
  const json* rope = f.get("rope_scaling");
  const char* key = "rope_scaling";
  if (!rope || (rope->is_object() && rope->empty())) {
    rope = f.get("rope_parameters");
    key = "rope_parameters";
  }
  if (rope && !rope->is_object()) f.fail(key, "an object or null", rope);
  c.rope_theta = f.number_or("rope_theta", 10000.f, true);
  auto full_rotary = [&](const Fields& in, const std::string& name) {
    const json* p = in.get("partial_rotary_factor");
    if (p && in.number_in(p, name.c_str(), true) != 1.f)
      in.fail(name.c_str(), "1 (partial RoPE is not supported)", p);
  };
  full_rotary(f, "partial_rotary_factor");
  if (!rope) return;
  const std::string k = key;
  for (const auto& [name, v] : rope->items())
    if (v.is_object())
      MIL_FAIL("config.json '", f.source(), "': ", k, " has per-layer-type RoPE parameters (\"",
               name, "\"), which mil does not support");
  const Fields r(*rope, f.source());
  const std::string type = r.string_or("rope_type", r.string_or("type", "default"));
  c.rope_theta = r.number_or("rope_theta", c.rope_theta, true);
  full_rotary(r, k + ".partial_rotary_factor");
  if (type == "default") return;
  MIL_CHECK(type == "llama3", "config.json '", f.source(), "': RoPE scaling type \"", type,
            "\" is not supported (mil runs the default RoPE and Llama-3.1's \"llama3\" scaling)");
  auto factor = [&](const char* name) {
    const std::string shown = k + "." + name;
    return r.number_in(r.get(name), shown.c_str(), true);
  };
  c.rope_llama3_scaling = true;
  c.rope_factor = factor("factor");
  c.rope_low_freq_factor = factor("low_freq_factor");
  c.rope_high_freq_factor = factor("high_freq_factor");
  MIL_CHECK(c.rope_high_freq_factor > c.rope_low_freq_factor, "config.json '", f.source(),
            "': llama3 RoPE needs high_freq_factor (", c.rope_high_freq_factor,
            ") > low_freq_factor (", c.rope_low_freq_factor, ")");
  // transformers falls back to max_position_embeddings; 2^24 keeps the value exact in float.
  const std::string omp = k + ".original_max_position_embeddings";
  const json* o = r.get("original_max_position_embeddings");
  const json fallback = max_positions;
  c.rope_original_max_positions =
      float(r.integer_in(o ? o : &fallback, omp.c_str(), 1, int64_t(1) << 24));
}

}  // namespace hf_detail

// The configuration of a Hugging Face LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM;
// `source` names the file in errors.
inline HfLlamaConfig hf_llama_config(const nlohmann::json& j, const std::string& source) {
  using hf_detail::json;
  const hf_detail::Fields f(j, source);
  HfLlamaConfig out;
  out.model_type = f.string_or("model_type", "");
  MIL_CHECK(!out.model_type.empty(), "config.json '", source, "': no \"model_type\": not the ",
            "config.json of a transformers model");
  const hf_detail::ModelType* mt = nullptr;
  for (const auto& t : hf_detail::kModelTypes)
    if (out.model_type == t.model_type) mt = &t;
  MIL_CHECK(mt, "config.json '", source, "': model_type \"", out.model_type, "\" is not ",
            "supported (mil loads llama, mistral and qwen2 models)");
  out.architecture = mt->architecture;
  if (const json* a = f.get("architectures")) {
    if (!a->is_array() || a->empty() || !(*a)[0].is_string())
      f.fail("architectures", "a list of class names", a);
    MIL_CHECK((*a)[0].get<std::string>() == mt->architecture, "config.json '", source,
              "': architecture ", io::json_excerpt((*a)[0]), " is not supported for model_type \"",
              out.model_type, "\" (mil loads ", mt->architecture, ")");
  }
  // Sizes within io/limits.hpp; token ids fit int32 (the vocabulary's own limit is lower).
  namespace lim = io::limits;
  const int64_t kMaxTokens = int64_t(INT32_MAX);
  LlamaConfig& c = out.model;
  c.vocab = lim::check_count(f.integer("vocab_size", 1, kMaxTokens), lim::kMaxVocab,
                             "config.json '" + source + "'", "vocab_size");
  c.d_model = f.integer("hidden_size", 1, lim::kMaxModelDim);
  c.n_layers = f.integer("num_hidden_layers", 1, lim::kMaxLayers);
  c.n_heads = f.integer("num_attention_heads", 1, lim::kMaxHeads);
  c.d_ff = f.integer("intermediate_size", 1, lim::kMaxFfDim);
  {
    auto it = j.find("num_key_value_heads");  // absent and null differ for mistral and qwen2
    const bool absent = it == j.end();
    const int64_t fallback = absent && mt->default_kv_heads > 0 ? mt->default_kv_heads : c.n_heads;
    c.n_kv_heads = f.integer_or("num_key_value_heads", fallback, 1, lim::kMaxHeads);
  }
  MIL_CHECK(c.n_heads % c.n_kv_heads == 0, "config.json '", source, "': num_attention_heads ",
            c.n_heads, " is not a multiple of num_key_value_heads ", c.n_kv_heads);
  if (f.has("head_dim")) {
    c.head_dim = f.integer("head_dim", 2, lim::kMaxHeadDim);
  } else {
    MIL_CHECK(c.d_model % c.n_heads == 0, "config.json '", source, "': hidden_size ", c.d_model,
              " is not a multiple of num_attention_heads ", c.n_heads, " and no head_dim is given");
    c.head_dim = c.d_model / c.n_heads;
  }
  MIL_CHECK(c.head_dim % 2 == 0, "config.json '", source, "': head_dim ", c.head_dim,
            " is odd; RoPE needs an even head dimension");
  c.norm_eps = f.number_or("rms_norm_eps", 1e-6f, true);
  c.tied_embeddings = f.boolean_or("tie_word_embeddings", false);
  const std::string act = f.string_or("hidden_act", "silu");
  MIL_CHECK(act == "silu" || act == "swish", "config.json '", source, "': hidden_act \"", act,
            "\" is not supported (mil's MLP is SwiGLU: silu)");
  if (out.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2: q, k and v always have biases, o_proj never
  } else if (out.model_type == "llama") {
    // Llama's attention_bias also gives o_proj a bias, which mil's layer does not have.
    MIL_CHECK(!f.boolean_or("attention_bias", false), "config.json '", source, "': ",
              "attention_bias = true (biases on q/k/v and o_proj) is not supported for llama");
    MIL_CHECK(!f.boolean_or("mlp_bias", false), "config.json '", source, "': mlp_bias = true ",
              "is not supported");
  }
  out.max_position_embeddings =
      f.integer_or("max_position_embeddings", mt->default_max_positions, 1, lim::kMaxContext);
  hf_detail::read_rope(f, c, out.max_position_embeddings);

  // Sliding windows: Mistral's sliding_window; Qwen2's when use_sliding_window (then layers from
  // max_window_layers on use it). A window no shorter than the context changes nothing.
  bool sliding = true;
  if (out.model_type == "qwen2") {
    sliding = f.boolean_or("use_sliding_window", false) &&
              f.integer_or("max_window_layers", 28, 0, 1 << 30) < c.n_layers;
  }
  if (sliding && out.model_type != "llama") {
    auto it = j.find("sliding_window");
    int64_t w = it == j.end() ? mt->default_sliding_window
                              : f.integer_or("sliding_window", 0, 1, kMaxTokens);
    out.sliding_window = w < out.max_position_embeddings ? w : 0;
  }

  if (f.has("bos_token_id")) out.bos_token_id = f.integer("bos_token_id", 0, kMaxTokens);
  if (const json* e = f.get("eos_token_id")) {
    if (e->is_array()) {
      for (const auto& v : *e)
        out.eos_token_ids.push_back(f.integer_in(&v, "eos_token_id", 0, kMaxTokens));
    } else {
      out.eos_token_ids.push_back(f.integer("eos_token_id", 0, kMaxTokens));
    }
  }
  out.torch_dtype = f.string_or("torch_dtype", f.string_or("dtype", ""));
  try {
    c.validate();
  } catch (const Error& e) {
    MIL_FAIL("config.json '", source, "': ", e.what());
  }
  return out;
}

inline LlamaConfig llama_config_from_hf(const nlohmann::json& j, const std::string& source) {
  return hf_llama_config(j, source).model;
}

// config.json itself, or the model folder holding it.
inline HfLlamaConfig hf_llama_config_file(const std::filesystem::path& path) {
  const auto file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  return hf_llama_config(io::read_json_file_strict(file), file.string());
}
inline LlamaConfig llama_config_from_hf_file(const std::filesystem::path& path) {
  return hf_llama_config_file(path).model;
}

// Where each Hugging Face tensor lives in mil's parameters: `shape` elements of the parameter
// `target` (kind and layer, nn/param_table.hpp) from element `offset` on (q, k, v are row blocks
// of wqkv; gate, up of w_gate_up).
struct HfTensorSlot {
  std::string hf_name;
  std::vector<int64_t> shape;
  ParamSlot target;
  int64_t offset = 0;
};

// The first element of a slot's tensor in a model's weights.
template <Element T>
T* slot_data(const ModelWeights<T, Cpu>& w, const HfTensorSlot& s) {
  return w[s.target].value().data() + s.offset;
}

// The tensors of a Llama-family Transformer: every layer as attention.
inline std::vector<HfTensorSlot> llama_hf_tensor_slots(const LlamaConfig& c) {
  const int64_t d = c.d_model, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  using P = Param;
  std::vector<HfTensorSlot> s{{"model.embed_tokens.weight", {c.vocab, d}, {P::tok_embeddings, -1, {}}, 0}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string h = "model.layers." + std::to_string(l) + ".";
    auto add = [&](const std::string& name, std::vector<int64_t> shape, Param p, int64_t offset) {
      s.push_back({h + name, std::move(shape), {p, l, {}}, offset});
    };
    add("input_layernorm.weight", {d}, P::attn_norm, 0);
    add("self_attn.q_proj.weight", {q, d}, P::wqkv, 0);
    add("self_attn.k_proj.weight", {kv, d}, P::wqkv, q * d);
    add("self_attn.v_proj.weight", {kv, d}, P::wqkv, (q + kv) * d);
    if (c.attention_bias) {
      add("self_attn.q_proj.bias", {q}, P::bqkv, 0);
      add("self_attn.k_proj.bias", {kv}, P::bqkv, q);
      add("self_attn.v_proj.bias", {kv}, P::bqkv, q + kv);
    }
    add("self_attn.o_proj.weight", {d, q}, P::wo, 0);
    add("post_attention_layernorm.weight", {d}, P::mlp_norm, 0);
    add("mlp.gate_proj.weight", {c.d_ff, d}, P::w_gate_up, 0);
    add("mlp.up_proj.weight", {c.d_ff, d}, P::w_gate_up, c.d_ff * d);
    add("mlp.down_proj.weight", {d, c.d_ff}, P::w_down, 0);
  }
  s.push_back({"model.norm.weight", {d}, {P::norm, -1, {}}, 0});
  if (!c.tied_embeddings) s.push_back({"lm_head.weight", {c.vocab, d}, {P::lm_head, -1, {}}, 0});
  return s;
}

// Checks that the checkpoint holds exactly the tensors of a model of configuration `c`: each
// present with the expected shape and a floating-point dtype (F32, F16, BF16, F64), none left
// over (another architecture), except RoPE caches (rotary_emb.inv_freq) and a stored
// lm_head.weight of a tied model, which transformers ignores too. It allocates nothing, so a
// config.json with absurd sizes fails here, against the files, before any model is built.
inline void check_llama_hf_tensors(const io::SafetensorsCheckpoint& ck, const LlamaConfig& c) {
  std::unordered_set<std::string> used;
  for (const auto& slot : llama_hf_tensor_slots(c)) {
    const io::SafetensorsTensor& t = ck.tensor(slot.hf_name);
    const io::SafetensorsTensor want{slot.hf_name, t.dtype, slot.shape, {}, ""};
    MIL_CHECK(t.shape == slot.shape, "safetensors '", t.source, "': tensor '", slot.hf_name,
              "' has shape ", t.shape_str(), ", expected ", want.shape_str(), " for the model's ",
              "configuration (config.json and weights disagree)");
    using D = io::SafetensorsDtype;
    MIL_CHECK(t.dtype == D::F32 || t.dtype == D::BF16 || t.dtype == D::F16 || t.dtype == D::F64,
              "safetensors '", t.source, "': tensor '", slot.hf_name, "' has dtype ",
              io::safetensors_dtype_name(t.dtype), ", not a floating-point type (F32, F16, BF16 ",
              "or F64): quantised checkpoints are not supported");
    used.insert(slot.hf_name);
  }
  std::vector<std::string> extra;
  for (const auto& t : ck.tensors())
    if (!used.count(t.name) && !t.name.ends_with("rotary_emb.inv_freq") &&
        !(c.tied_embeddings && t.name == "lm_head.weight"))
      extra.push_back(t.name);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 3; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
    MIL_FAIL("safetensors checkpoint '", ck.source(), "' holds ", extra.size(), " tensor(s) that ",
             "this Llama model does not use (", list, extra.size() > 3 ? ", ..." : "", "): it is ",
             "another architecture or its config.json does not match");
  }
}

// A Llama-family model folder (config.json + model.safetensors or an index with shards) into
// float on the CPU. The files are checked against the config before the model's memory is
// allocated.
inline HybridModel<float, Cpu> load_llama_model_hf(const std::filesystem::path& dir) {
  const LlamaConfig c = llama_config_from_hf_file(dir);
  const auto ck = io::SafetensorsCheckpoint::open(dir);
  check_llama_hf_tensors(ck, c);
  HybridModel<float, Cpu> model(all_attention(c));
  for (const auto& slot : llama_hf_tensor_slots(c))
    io::to_float(ck.tensor(slot.hf_name), slot_data(model.weights(), slot));
  return model;
}

struct HfSaveOptions {
  std::string dtype = "bfloat16";            // or "float32"
  int64_t max_shard_bytes = 5'000'000'000;   // transformers' long-standing default of "5GB"
  int64_t max_position_embeddings = 8192;
  std::optional<int64_t> bos_token_id, eos_token_id;
};

// config.json for `c`: LlamaForCausalLM, or Qwen2ForCausalLM when the model has q/k/v biases.
inline nlohmann::ordered_json llama_hf_config_json(const LlamaConfig& c, const HfSaveOptions& o) {
  using hf_detail::shortest;
  const bool qwen2 = c.attention_bias;
  nlohmann::ordered_json j;
  j["architectures"] = {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = qwen2 ? "qwen2" : "llama";
  j["vocab_size"] = c.vocab;
  j["hidden_size"] = c.d_model;
  j["intermediate_size"] = c.d_ff;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = o.max_position_embeddings;
  j["rms_norm_eps"] = shortest(c.norm_eps);
  j["rope_theta"] = shortest(c.rope_theta);
  if (c.rope_llama3_scaling) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", shortest(c.rope_factor)},
                         {"low_freq_factor", shortest(c.rope_low_freq_factor)},
                         {"high_freq_factor", shortest(c.rope_high_freq_factor)},
                         {"original_max_position_embeddings",
                          int64_t(std::lround(c.rope_original_max_positions))}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = c.tied_embeddings;
  if (qwen2) {
    j["use_sliding_window"] = false;
  } else {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  }
  j["bos_token_id"] = o.bos_token_id ? nlohmann::ordered_json(*o.bos_token_id) : nullptr;
  j["eos_token_id"] = o.eos_token_id ? nlohmann::ordered_json(*o.eos_token_id) : nullptr;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["torch_dtype"] = o.dtype;
  return j;
}

// Writes config.json and the weights (model.safetensors, or shards + index) into `dir` so that
// transformers' AutoModelForCausalLM.from_pretrained(dir) loads the model, which must be a
// Transformer (every layer attention; hybrids: save_hybrid).
inline void save_llama_hf(const std::filesystem::path& dir, const HybridModel<float, Cpu>& model,
                          const HfSaveOptions& o = {}) {
  const LlamaConfig& c = model.config().llama;
  MIL_CHECK(model.has_float_weights(), "save_llama_hf: the model keeps some weights in block format "
            "only (loaded for CPU inference): load it with its float weights to save it");
  MIL_CHECK(model.config().n_mamba_layers() == 0, "save_llama_hf: the model has ",
            model.config().n_mamba_layers(), " Mamba layers: save it with save_hybrid");
  MIL_CHECK(o.dtype == "bfloat16" || o.dtype == "float32", "save_llama_hf: dtype '", o.dtype,
            "' is not bfloat16 or float32");
  MIL_CHECK(o.max_position_embeddings > 0, "save_llama_hf: max_position_embeddings must be > 0");
  const nlohmann::ordered_json config = llama_hf_config_json(c, o);
  std::vector<io::FloatTensorRef> refs;
  for (const auto& s : llama_hf_tensor_slots(c))
    refs.push_back({s.hf_name, s.shape, slot_data(model.weights(), s)});
  io::write_float_safetensors(dir, refs,
                              o.dtype == "float32" ? io::SafetensorsDtype::F32
                                                   : io::SafetensorsDtype::BF16,
                              o.max_shard_bytes, {{"format", "pt"}});
  io::write_text_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

}  // namespace mil::nn
