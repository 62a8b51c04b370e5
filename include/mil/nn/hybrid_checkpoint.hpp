#pragma once
// Hybrid checkpoints in the layout of the paper's reference code (github.com/jxiw/MambaInLlama,
// docs/hybrid_checkpoint_format.md): a folder with
//   mamba_config.json   the reference's MambaConfig (d_model, ssm_cfg, rms_norm_eps, vocab_size,
//                       d_inner, d_xb, intermediate_size, hidden_act, n_layer, attn_layers);
//   config.json         the teacher's transformers config (its "_name_or_path" is what the
//                       reference loads the teacher from before it swaps the Mamba layers in);
//   model.safetensors   (or shards + model.safetensors.index.json) the whole hybrid's state dict
//                       under the teacher's names: attention layers as in Llama, Mamba layers as
//                       model.layers.N.mamba.* next to their own mlp and norms.
// One table (hybrid_tensor_slots: reference tensor name -> row block of a mil parameter, built on
// llama_hf_tensor_slots) serves load and save, so the two cannot disagree.
//
// Mamba-1 dt bias. The reference's dt_proj adds its bias and its scan adds the same bias again,
// so a stored dt_proj.bias b means softplus(W u + 2 b). mil's HybridConfig::mamba1_double_dt_bias
// says whether mil's math adds its dt_bias twice too. The number of times the stored bias is
// added is recorded in the safetensors metadata "mil_mamba1_dt_bias_added" ("twice" or "once";
// absent, as in the reference's own files: "twice"), and loading rescales the stored value so
// the model computes the same function: v = s * added_in_file / added_by_mil (a factor 1, 2 or
// 1/2, exact in binary floating point). save_hybrid writes "twice" files (values the reference
// runs as they are) unless HybridSaveOptions::reference_dt_bias is false, which stores mil's
// values as they are and marks them "once" or "twice" after the model's flag. config.json
// carries the model's flag as "mil_mamba1_double_dt_bias"; a folder without it (the reference's)
// reads as true, the reference's math, so its values load unchanged.
//
// Reference behaviour that mil does not share (see the format document): the Mamba-2 gated norm
// of the reference always uses eps 1e-5, whatever rms_norm_eps says.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "../io/json.hpp"
#include "../io/limits.hpp"
#include "../io/safetensors.hpp"
#include "../io/safetensors_writer.hpp"
#include "hybrid_config.hpp"
#include "llama_hf.hpp"

namespace mil::nn {

inline constexpr const char* kMambaConfigName = "mamba_config.json";
// safetensors metadata key: how many times the stored Mamba-1 dt_proj.bias is added.
inline constexpr const char* kDtBiasMetadataKey = "mil_mamba1_dt_bias_added";
// config.json key that carries HybridConfig::mamba1_double_dt_bias.
inline constexpr const char* kDoubleDtBiasConfigKey = "mil_mamba1_double_dt_bias";

struct HybridSaveOptions {
  HfSaveOptions hf;                  // dtype ("bfloat16" or "float32"), shard size, config.json ids
  // config.json "_name_or_path": where the reference loads the teacher from (a Hub name such as
  // "HuggingFaceTB/SmolLM2-135M-Instruct" or a folder). "" writes the absolute path of the saved
  // folder itself, which the reference can also use: its config.json and weights make a Llama
  // whose attention layers are then replaced and every tensor overwritten from the same files.
  std::string teacher_name_or_path;
  // Mamba-1: store dt_proj.bias as the reference adds it (twice); false stores mil's values.
  bool reference_dt_bias = true;
  // Tied embeddings: also write lm_head.weight (a copy of the embeddings). The reference loads
  // the state dict strictly, and a tied Llama's state dict lists lm_head.weight.
  bool write_tied_lm_head = true;
};

namespace hybrid_detail {

inline bool is_attention_param(Param p) {
  return p == Param::wqkv || p == Param::bqkv || p == Param::wo;
}

inline void append_mamba_slots(std::vector<HfTensorSlot>& s, const HybridConfig& c, int64_t l) {
  const int64_t d = c.llama.d_model, di = c.d_inner(), dxb = c.d_xb(), K = c.conv_kernel;
  const int64_t C = c.conv_channels();
  const std::string h = "model.layers." + std::to_string(l) + ".mamba.";
  auto add = [&](const char* name, std::vector<int64_t> shape, Param p, int64_t offset = 0) {
    s.push_back({h + name, std::move(shape), {p, l, {}}, offset});
  };
  using P = Param;
  if (c.mixer == MixerKind::mamba2) {
    const int64_t H = c.llama.n_heads;
    add("in_proj.weight", {c.in_proj_rows(), d}, P::in_proj);  // [z|x|B|C|dt]
    add("conv1d.weight", {C, 1, K}, P::conv_w);
    add("conv1d.bias", {C}, P::conv_b);
    add("dt_bias", {H}, P::dt_bias);
    add("A_log", {H}, P::A_log);
    add("D", {H}, P::D);
    add("norm.weight", {di}, P::ssm_norm);
    add("out_proj.weight", {d, di}, P::out_proj);
  } else {
    // mil's in_proj is [x | z | B | C]; the reference keeps four Linear layers.
    add("in_proj_x.weight", {dxb, d}, P::in_proj);
    add("in_proj_z.weight", {di, d}, P::in_proj, dxb * d);
    add("B_proj.weight", {dxb, d}, P::in_proj, (dxb + di) * d);
    add("C_proj.weight", {di, d}, P::in_proj, (2 * dxb + di) * d);
    add("dt_proj_down.weight", {c.dt_rank(), d}, P::dt_down);
    add("dt_proj.weight", {di, c.dt_rank()}, P::dt_proj);
    add("dt_proj.bias", {di}, P::dt_bias);
    add("conv1d.weight", {C, 1, K}, P::conv_w);
    add("conv1d.bias", {C}, P::conv_b);
    add("A_log", {di, c.mamba1_d_state}, P::A_log);
    add("D", {di}, P::D);
    add("out_proj.weight", {d, di}, P::out_proj);
  }
}

// Times the Mamba-1 dt bias is added by the model of `c` (1 or 2).
inline int dt_bias_count(const HybridConfig& c) { return c.mamba1_double_dt_bias ? 2 : 1; }

}  // namespace hybrid_detail

// Every tensor of the reference's state dict for `c` and where it lives in mil's parameters.
// Embeddings, norms, MLPs and attention layers come from llama_hf_tensor_slots (the teacher's
// names); each Mamba layer's attention slots are replaced by its model.layers.N.mamba.* slots.
// lm_head.weight is listed only for untied embeddings.
inline std::vector<HfTensorSlot> hybrid_tensor_slots(const HybridConfig& c) {
  c.validate();
  std::vector<HfTensorSlot> out;
  int64_t mamba_layers = 0;
  for (auto& slot : llama_hf_tensor_slots(c.llama)) {
    const int64_t l = slot.target.layer;
    if (l >= 0 && !c.is_attention(l)) {
      if (hybrid_detail::is_attention_param(slot.target.param)) continue;
      if (slot.target.param == Param::mlp_norm) {  // the mixer's tensors go before the MLP's
        hybrid_detail::append_mamba_slots(out, c, l);
        ++mamba_layers;
      }
    }
    out.push_back(std::move(slot));
  }
  MIL_CHECK(mamba_layers == c.n_mamba_layers(), "hybrid_tensor_slots: placed ", mamba_layers,
            " Mamba layers of ", c.n_mamba_layers(), " (llama_hf_tensor_slots changed?)");
  return out;
}

// mamba_config.json of `c`, with the reference's fields in its order (json.dump of its
// MambaConfig dataclass); ssm_cfg as its training scripts write it, plus d_conv / d_state where
// they differ from the reference's defaults.
inline nlohmann::ordered_json hybrid_mamba_config_json(const HybridConfig& c) {
  c.validate();
  const LlamaConfig& l = c.llama;
  nlohmann::ordered_json ssm = {{"expand", 1}};
  if (c.mixer == MixerKind::mamba2) {
    ssm["ngroups"] = l.n_heads;
    ssm["d_state"] = l.head_dim;
  } else if (c.mamba1_d_state != 16) {
    ssm["d_state"] = c.mamba1_d_state;
  }
  if (c.conv_kernel != 4) ssm["d_conv"] = c.conv_kernel;
  nlohmann::ordered_json j;
  j["d_model"] = l.d_model;
  j["ssm_cfg"] = ssm;
  j["rms_norm_eps"] = hf_detail::shortest(l.norm_eps);
  j["vocab_size"] = l.vocab;
  j["d_inner"] = c.d_inner();
  j["d_xb"] = c.d_xb();
  j["intermediate_size"] = l.d_ff;
  j["hidden_act"] = "silu";
  j["n_layer"] = l.n_layers;
  j["attn_layers"] = c.attn_layers;
  return j;
}

inline bool is_hybrid_checkpoint(const std::filesystem::path& dir) {
  std::error_code ec;
  return std::filesystem::is_regular_file(dir / kMambaConfigName, ec);
}

namespace hybrid_detail {

using nlohmann::json;

// Typed access to mamba_config.json (and its ssm_cfg); errors name the file and the field.
class MambaFields {
 public:
  MambaFields(const json& j, const std::string& file, std::string prefix)
      : j_(j), file_(file), prefix_(std::move(prefix)) {
    MIL_CHECK(j.is_object(), "mamba_config.json '", file_, "': ",
              prefix_.empty() ? "the top level" : "\"" + prefix_.substr(0, prefix_.size() - 1) + "\"",
              " must be a JSON object, found ", io::json_excerpt(j));
  }
  const json* get(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  [[noreturn]] void fail(const char* key, const std::string& msg) const {
    MIL_FAIL("mamba_config.json '", file_, "': \"", prefix_, key, "\" ", msg);
  }
  // An integer in [lo, hi], or `fallback` when absent.
  int64_t integer(const char* key, int64_t fallback, int64_t lo, int64_t hi) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(hi)) ||
        v->get<int64_t>() < lo || v->get<int64_t>() > hi)
      fail(key, "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "], found " + io::json_excerpt(*v));
    return v->get<int64_t>();
  }
  double number(const char* key, double fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number() || !std::isfinite(v->get<double>()) || !(v->get<double>() > 0))
      fail(key, "must be a positive number, found " + io::json_excerpt(*v));
    return v->get<double>();
  }
  // A field the reference reads but whose value mil's layout fixes: absent, or exactly `want`.
  void require(const char* key, const json& want, const std::string& why) const {
    const json* v = get(key);
    if (v && *v != want)
      fail(key, "is " + io::json_excerpt(*v) + ", mil supports only " + want.dump() + " (" + why +
                    ")");
  }
  // Every key must be one the reference's class takes (its constructor refuses others).
  void check_keys(const std::set<std::string>& known, const std::string& what) const {
    for (const auto& [k, v] : j_.items())
      if (!known.count(k))
        MIL_FAIL("mamba_config.json '", file_, "': unknown field \"", prefix_, k, "\" (not a ",
                 what, " argument of the reference code; the reference would refuse it too)");
  }

 private:
  const json& j_;
  const std::string& file_;
  std::string prefix_;
};

}  // namespace hybrid_detail

// The HybridConfig of a folder written by save_hybrid or by the reference code: mamba_config.json
// for the hybrid's own fields and config.json (the teacher's, read by hf_llama_config) for the
// Llama shape (heads, KV heads, head_dim, RoPE, tied embeddings, vocabulary). Every field of
// mamba_config.json is checked, absent ones take the reference dataclass's defaults, and each
// must agree with config.json. The mixer is Mamba-2 when ssm_cfg has Mamba-2's arguments
// (ngroups, ...), else Mamba-1.
inline HybridConfig hybrid_config_from_files(const std::filesystem::path& dir) {
  using hybrid_detail::json;
  const std::filesystem::path mpath = dir / kMambaConfigName, cpath = dir / "config.json";
  MIL_CHECK(is_hybrid_checkpoint(dir), "folder '", dir.string(), "' has no ", kMambaConfigName,
            ": not a hybrid checkpoint (of mil or of the MambaInLlama reference code)");
  std::error_code ec;
  MIL_CHECK(std::filesystem::is_regular_file(cpath, ec), "hybrid checkpoint '", dir.string(),
            "' has no config.json (the teacher's configuration, which gives the attention "
            "layers' shape)");
  const std::string mfile = mpath.string(), cfile = cpath.string();
  const json mj = io::read_json_file_strict(mpath, 10'000'000);
  const json cj = io::read_json_file_strict(cpath, 10'000'000);

  HybridConfig h;
  h.llama = hf_llama_config(cj, cfile).model;
  const LlamaConfig& l = h.llama;

  const hybrid_detail::MambaFields f(mj, mfile, "");
  f.check_keys({"d_model", "ssm_cfg", "rms_norm_eps", "vocab_size", "d_inner", "d_xb",
                "intermediate_size", "hidden_act", "n_layer", "attn_layers"},
               "MambaConfig");
  const int64_t kMax = int64_t(1) << 30;
  auto agree = [&](const char* key, int64_t got, int64_t want, const std::string& what) {
    if (got != want)
      f.fail(key, "is " + std::to_string(got) + " but config.json gives " + what + " = " +
                      std::to_string(want) + " (mamba_config.json and config.json disagree)");
  };
  // Absent fields: the defaults of the reference's MambaConfig dataclass.
  const int64_t d_model = f.integer("d_model", 2560, 1, kMax);
  agree("d_model", d_model, l.d_model, "hidden_size");

  static const json kEmpty = json::object();
  const json* ssm_j = f.get("ssm_cfg");
  const hybrid_detail::MambaFields s(ssm_j ? *ssm_j : kEmpty, mfile, "ssm_cfg.");
  static const std::set<std::string> kMamba2Only = {
      "ngroups", "headdim", "d_ssm", "conv_init", "A_init_range", "D_has_hdim", "rmsnorm",
      "norm_before_gate", "dt_limit", "bias", "chunk_size", "use_mem_eff_path"};
  bool mamba2 = false;
  if (ssm_j)
    for (const auto& [k, v] : ssm_j->items()) mamba2 = mamba2 || kMamba2Only.count(k);
  h.mixer = mamba2 ? MixerKind::mamba2 : MixerKind::mamba1;
  if (auto it = cj.find(kDoubleDtBiasConfigKey); it != cj.end()) {
    MIL_CHECK(it->is_boolean(), "config.json '", cfile, "': \"", kDoubleDtBiasConfigKey,
              "\" must be true or false, found ", io::json_excerpt(*it));
    h.mamba1_double_dt_bias = it->get<bool>();
  } else {
    h.mamba1_double_dt_bias = h.mixer == MixerKind::mamba1;  // the reference's Mamba-1 math
  }
  const int64_t expand = s.integer("expand", 2, 1, 64);
  int64_t d_inner = d_model * expand;  // the reference's fallback when d_inner is null
  if (const json* v = f.get("d_inner"); v && !v->is_null())
    d_inner = f.integer("d_inner", 0, 1, kMax);
  agree("d_inner", d_inner, l.n_heads * l.head_dim, "num_attention_heads * head_dim");
  agree("d_xb", f.integer("d_xb", 2560, 1, kMax), l.n_kv_heads * l.head_dim,
        "num_key_value_heads * head_dim");
  agree("intermediate_size", f.integer("intermediate_size", 10240, 1, kMax), l.d_ff,
        "intermediate_size");
  agree("n_layer", f.integer("n_layer", 32, 1, io::limits::kMaxLayers), l.n_layers,
        "num_hidden_layers");
  if (const json* v = f.get("vocab_size"); v && !v->is_null())  // unused by the reference
    agree("vocab_size", f.integer("vocab_size", 0, 1, INT32_MAX), l.vocab, "vocab_size");
  if (const json* v = f.get("hidden_act"); v && *v != "silu" && *v != "swish")
    f.fail("hidden_act", "is " + io::json_excerpt(*v) + ", mil's MLP is SwiGLU (silu)");
  const double eps = f.number("rms_norm_eps", 1e-5);
  if (float(eps) != l.norm_eps)
    f.fail("rms_norm_eps", "is " + std::to_string(eps) + " but config.json's rms_norm_eps is " +
                               std::to_string(l.norm_eps) + " (mil uses one eps for all norms)");

  if (const json* a = f.get("attn_layers")) {
    if (!a->is_array()) f.fail("attn_layers", "must be a list of layer indices");
    for (const json& v : *a) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= l.n_layers)
        f.fail("attn_layers", "has " + io::json_excerpt(v) + ", not a layer index in [0, " +
                                  std::to_string(l.n_layers) + ")");
      h.attn_layers.push_back(v.get<int64_t>());
    }
  }
  std::sort(h.attn_layers.begin(), h.attn_layers.end());  // the reference tests membership only
  if (std::adjacent_find(h.attn_layers.begin(), h.attn_layers.end()) != h.attn_layers.end())
    f.fail("attn_layers", "lists a layer twice");

  // ssm_cfg: the arguments of the reference's Mamba2 / Mamba module. Initialisation-only ones are
  // accepted and ignored; ones that change the layout must have the value mil implements.
  h.conv_kernel = s.integer("d_conv", 4, 2, 8);
  if (h.mixer == MixerKind::mamba2) {
    s.check_keys({"expand", "ngroups", "d_state", "d_conv", "headdim", "d_ssm", "conv_init",
                  "A_init_range", "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max",
                  "dt_init_floor", "dt_limit", "repeat_kv_before_conv", "bias", "conv_bias",
                  "chunk_size", "use_mem_eff_path"},
                 "Mamba2");
    // The reference sets nheads = ngroups and headdim = d_state (its "headdim" is overwritten).
    const int64_t ngroups = s.integer("ngroups", 1, 1, kMax);
    const int64_t d_state = s.integer("d_state", 128, 1, kMax);
    if (ngroups != l.n_heads)
      s.fail("ngroups", "is " + std::to_string(ngroups) + ", mil needs num_attention_heads = " +
                            std::to_string(l.n_heads) + " (one SSM head per attention head)");
    if (d_state != l.head_dim)
      s.fail("d_state", "is " + std::to_string(d_state) + ", mil needs head_dim = " +
                            std::to_string(l.head_dim));
    if (const json* v = s.get("d_ssm"); v && !v->is_null())
      s.fail("d_ssm", "must be null (a partial SSM with a gated MLP is not supported)");
    if (s.get("dt_limit")) s.fail("dt_limit", "is not supported (mil does not clamp dt)");
    s.require("D_has_hdim", false, "D per head");
    s.require("rmsnorm", true, "gated RMSNorm before out_proj");
    s.require("norm_before_gate", false, "norm(y * silu(z))");
    s.require("repeat_kv_before_conv", false, "conv over the unexpanded [x | B | C]");
    s.require("bias", false, "in_proj and out_proj have no bias");
    s.require("conv_bias", true, "conv1d has a bias");
  } else {
    s.check_keys({"expand", "d_state", "d_conv", "dt_rank", "dt_min", "dt_max", "dt_init",
                  "dt_scale", "dt_init_floor", "repeat_kv_before_conv", "conv_bias",
                  "proj_x_bias", "proj_z_bias", "out_proj_bias", "use_fast_path"},
                 "Mamba (Mamba-1)");
    h.mamba1_d_state = s.integer("d_state", 16, 1, io::limits::kMaxStateDim);
    if (const json* v = s.get("dt_rank"); v && *v != "auto")
      if (s.integer("dt_rank", 0, 1, kMax) != h.dt_rank())
        s.fail("dt_rank", "is " + io::json_excerpt(*v) + ", mil supports only \"auto\" = ceil(" +
                              "d_model / 16) = " + std::to_string(h.dt_rank()));
    s.require("repeat_kv_before_conv", true, "x repeated to d_inner channels before the conv");
    s.require("conv_bias", true, "conv1d has a bias");
    s.require("proj_x_bias", false, "in_proj_x has no bias");
    s.require("proj_z_bias", false, "in_proj_z has no bias");
    s.require("out_proj_bias", false, "out_proj has no bias");
  }
  try {
    h.validate();
  } catch (const Error& e) {
    MIL_FAIL("hybrid checkpoint '", dir.string(), "' (", kMambaConfigName, " + config.json): ",
             e.what());
  }
  return h;
}

// Checks that the checkpoint holds exactly the tensors of the hybrid `c`, each with the expected
// shape and a floating-point dtype; besides them only RoPE caches and a tied model's
// lm_head.weight are allowed. A missing tensor's message says when the checkpoint has the other
// mixer's or an attention layer's tensors there instead (mamba_config.json and weights disagree).
inline void check_hybrid_tensors(const io::SafetensorsCheckpoint& ck, const HybridConfig& c) {
  std::unordered_set<std::string> used;
  for (const auto& slot : hybrid_tensor_slots(c)) {
    const io::SafetensorsTensor* t = ck.find(slot.hf_name);
    if (!t) {
      std::string hint;
      const size_t at = slot.hf_name.find('.', 13);  // "model.layers.N."
      const std::string layer = slot.hf_name.starts_with("model.layers.")
                                    ? slot.hf_name.substr(0, at + 1) : std::string();
      auto has = [&](const std::string& n) { return !layer.empty() && ck.find(layer + n); };
      if (has("mamba.in_proj.weight"))
        hint = " (the checkpoint has a Mamba-2 layer there)";
      else if (has("mamba.in_proj_x.weight"))
        hint = " (the checkpoint has a Mamba-1 layer there)";
      else if (has("self_attn.q_proj.weight"))
        hint = " (the checkpoint has an attention layer there)";
      MIL_FAIL("hybrid checkpoint '", ck.source(), "': tensor '", slot.hf_name, "' is missing",
               hint, ": the weights do not match the configuration (",
               mixer_name(c.mixer), ", attention layers as in mamba_config.json)");
    }
    const io::SafetensorsTensor want{slot.hf_name, t->dtype, slot.shape, {}, ""};
    MIL_CHECK(t->shape == slot.shape, "hybrid checkpoint '", t->source, "': tensor '",
              slot.hf_name, "' has shape ", t->shape_str(), ", expected ", want.shape_str(),
              " for the model's configuration (mamba_config.json / config.json and weights ",
              "disagree)");
    using D = io::SafetensorsDtype;
    MIL_CHECK(t->dtype == D::F32 || t->dtype == D::BF16 || t->dtype == D::F16 ||
                  t->dtype == D::F64,
              "hybrid checkpoint '", t->source, "': tensor '", slot.hf_name, "' has dtype ",
              io::safetensors_dtype_name(t->dtype), ", not F32, F16, BF16 or F64");
    used.insert(slot.hf_name);
  }
  std::vector<std::string> extra;
  for (const auto& t : ck.tensors())
    if (!used.count(t.name) && !t.name.ends_with("rotary_emb.inv_freq") &&
        !(c.llama.tied_embeddings && t.name == "lm_head.weight"))
      extra.push_back(t.name);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 3; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
    MIL_FAIL("hybrid checkpoint '", ck.source(), "' holds ", extra.size(), " tensor(s) that this ",
             "hybrid does not use (", list, extra.size() > 3 ? ", ..." : "", "): the weights ",
             "and mamba_config.json / config.json do not match");
  }
}

// How many times the stored Mamba-1 dt_proj.bias is added, from the checkpoint's metadata.
inline int stored_dt_bias_count(const io::SafetensorsCheckpoint& ck) {
  const auto& m = ck.metadata();
  auto it = m.find(kDtBiasMetadataKey);
  if (it == m.end() || it->second == "twice") return 2;
  MIL_CHECK(it->second == "once", "hybrid checkpoint '", ck.source(), "': metadata \"",
            kDtBiasMetadataKey, "\" is \"", it->second, "\", expected \"once\" or \"twice\"");
  return 1;
}

// Fills `model` from the folder's safetensors, checked first by check_hybrid_tensors; Mamba-1 dt
// biases are rescaled as the header says.
inline void load_hybrid_weights(const std::filesystem::path& dir, HybridModel<float, Cpu>& model) {
  const HybridConfig& c = model.config();
  const auto ck = io::SafetensorsCheckpoint::open(dir);
  check_hybrid_tensors(ck, c);
  for (const auto& slot : hybrid_tensor_slots(c))
    io::to_float(ck.tensor(slot.hf_name), slot_data(model.weights(), slot));
  if (c.mixer != MixerKind::mamba1) return;
  const int in_file = stored_dt_bias_count(ck), by_model = hybrid_detail::dt_bias_count(c);
  if (in_file == by_model) return;
  const float scale = float(in_file) / float(by_model);  // 2 or 1/2: exact
  for (const auto& layer : model.weights().layers) {
    if (layer.kind != LayerKind::mamba1) continue;
    const auto& t = layer.mamba1.dt_bias;
    for (int64_t i = 0; i < t.numel(); ++i) t.value().data()[i] *= scale;
  }
}

// Writes the hybrid in the reference's layout into `dir` (created if needed): the weights first
// (model.safetensors, or shards + index when larger than hf.max_shard_bytes; bf16 or f32), then
// mamba_config.json and config.json. Each file is written under a temporary name and renamed,
// so none is ever half-written; files of an earlier save that would contradict this one are
// removed (write_safetensors_sharded).
inline void save_hybrid(const std::filesystem::path& dir, const HybridModel<float, Cpu>& model,
                        const HybridSaveOptions& o = {}) {
  const HybridConfig& c = model.config();
  MIL_CHECK(model.has_float_weights(), "save_hybrid: the model keeps some weights in block format "
            "only (loaded for CPU inference): load it with its float weights to save it");
  MIL_CHECK(o.hf.dtype == "bfloat16" || o.hf.dtype == "float32", "save_hybrid: dtype '",
            o.hf.dtype, "' is not bfloat16 or float32");
  MIL_CHECK(o.hf.max_position_embeddings > 0, "save_hybrid: max_position_embeddings must be > 0");
  const nlohmann::ordered_json mamba_config = hybrid_mamba_config_json(c);

  // Mamba-1 dt biases: stored = value * (times mil adds it) / (times the file says it is added).
  const int by_model = hybrid_detail::dt_bias_count(c);
  const int in_file = o.reference_dt_bias ? 2 : by_model;
  std::map<std::string, std::vector<float>> scaled;
  std::vector<io::FloatTensorRef> refs;
  for (const auto& s : hybrid_tensor_slots(c)) {
    const float* data = slot_data(model.weights(), s);
    if (c.mixer == MixerKind::mamba1 && s.target.param == Param::dt_bias && in_file != by_model) {
      auto& v = scaled[s.hf_name];
      const int64_t n = model.weights()[s.target].numel();
      v.resize(size_t(n));
      const float scale = float(by_model) / float(in_file);
      for (int64_t i = 0; i < n; ++i) v[size_t(i)] = data[i] * scale;
      data = v.data();
    }
    refs.push_back({s.hf_name, s.shape, data});
  }
  if (c.llama.tied_embeddings && o.write_tied_lm_head)
    refs.push_back({"lm_head.weight", {c.llama.vocab, c.llama.d_model},
                    model.weights().tok_embeddings.value().data()});
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  if (c.mixer == MixerKind::mamba1) metadata[kDtBiasMetadataKey] = in_file == 2 ? "twice" : "once";

  nlohmann::ordered_json config;
  std::error_code ec;
  config["_name_or_path"] = o.teacher_name_or_path.empty()
                                ? std::filesystem::absolute(dir, ec).lexically_normal().string()
                                : o.teacher_name_or_path;
  const nlohmann::ordered_json teacher = llama_hf_config_json(c.llama, o.hf);
  for (const auto& [k, v] : teacher.items()) config[k] = v;
  if (c.mixer == MixerKind::mamba1) config[kDoubleDtBiasConfigKey] = c.mamba1_double_dt_bias;

  io::write_float_safetensors(dir, refs,
                              o.hf.dtype == "float32" ? io::SafetensorsDtype::F32
                                                      : io::SafetensorsDtype::BF16,
                              o.hf.max_shard_bytes, metadata);
  io::write_text_file_atomic(dir / kMambaConfigName, mamba_config.dump(4));
  io::write_text_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

}  // namespace mil::nn
