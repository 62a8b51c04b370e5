// mil-convert: turn a Llama-family teacher into a hybrid Mamba model initialised from its
// attention weights (docs/METHOD.md §4), ready for distillation, and save it as safetensors +
// mamba_config.json (the reference implementation's format) with the teacher's tokenizer.
//
//   mil-convert --teacher models/SmolLM2-135M-Instruct.Q4_1.gguf --attn-layers 1,3,5 -o DIR
//   mil-convert --teacher hf-folder --layout 25% --mixer mamba1 --seed 7 -o DIR
//
// The hybrid is not distilled yet: expect it to talk nonsense until it is.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <mil/distill/init_from_attention.hpp>
#include <mil/nn/hybrid_checkpoint.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/hf_tokenizer_writer.hpp>
#include <mil/util/progress.hpp>

using namespace mil;

namespace {

std::vector<int64_t> parse_layers(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    MIL_CHECK(!item.empty() && item.find_first_not_of("0123456789") == std::string::npos,
              "--attn-layers: '", item, "' is not a layer index (expected e.g. 1,3,5)");
    MIL_CHECK(item.size() < 9, "--attn-layers: layer '", item, "' is too large");
    out.push_back(std::stoll(item));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s.empty() ? "none" : s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string teacher_path, layers, layout, mixer = "mamba2", out_dir, dtype = "bfloat16";
  uint64_t seed = 0;
  bool reference_dt_bias = false;
  CLI::App app{"mil-convert: initialise a hybrid Mamba model from a Transformer teacher"};
  app.add_option("--teacher", teacher_path, "teacher: GGUF file or Hugging Face folder")->required();
  auto* layers_opt =
      app.add_option("--attn-layers", layers, "layers that keep attention, e.g. 1,3,5 (none: \"\")");
  auto* layout_opt = app.add_option("--layout", layout, "or a standard layout: 50%, 25%, 12.5%, 0%");
  layers_opt->excludes(layout_opt);
  app.add_option("--mixer", mixer, "Mamba mixer of the converted layers")
      ->check(CLI::IsMember({"mamba2", "mamba1"}))
      ->capture_default_str();
  app.add_option("--seed", seed, "seed of the freshly initialised parameters")->capture_default_str();
  app.add_option("--dtype", dtype, "storage type of the weights")
      ->check(CLI::IsMember({"bfloat16", "float32"}))
      ->capture_default_str();
  app.add_flag("--reference-dt-bias", reference_dt_bias,
               "Mamba-1: the reference code's doubled dt bias (softplus(W u + 2 b))");
  app.add_option("-o,--output", out_dir, "output folder")->required();
  CLI11_PARSE(app, argc, argv);

  try {
    MIL_CHECK(layers_opt->count() || layout_opt->count(),
              "say which layers keep attention: --attn-layers 1,3,5 or --layout 50%");
    util::ProgressBar progress("[mil-convert]", 4);
    auto teacher = nn::load_model(teacher_path, nn::LoadFor::float_only);
    MIL_CHECK(teacher.model.config().n_mamba_layers() == 0, "'", teacher_path, "' is already a ",
              "hybrid: --teacher takes a Transformer (GGUF file or Hugging Face folder)");
    const auto& tc = teacher.model.config().llama;
    progress.update(1, "teacher loaded");

    nn::HybridConfig cfg;
    cfg.llama = tc;
    cfg.attn_layers = layout_opt->count() ? nn::attention_layout(tc.n_layers, layout) : parse_layers(layers);
    cfg.mixer = nn::parse_mixer(mixer);
    cfg.mamba1_double_dt_bias = reference_dt_bias;
    MIL_CHECK(!reference_dt_bias || cfg.mixer == nn::MixerKind::mamba1,
              "--reference-dt-bias applies to --mixer mamba1 only");
    cfg.validate();
    auto hybrid = distill::init_from_attention(teacher.model, cfg, seed);
    progress.update(2, "initialised");

    nn::HybridSaveOptions save;
    save.hf.dtype = dtype;
    nn::save_hybrid(out_dir, hybrid, save);
    progress.update(3, "weights written");
    text::save_hf_tokenizer(out_dir, teacher.tokenizer.data(), teacher.chat_template);
    progress.update(4, "tokenizer written");

    std::fprintf(stderr,
                 "[mil-convert] %s -> %s: %lld layers, attention on %s (%lld), %s on the other "
                 "%lld, %.1fM parameters, seed %llu\n",
                 teacher.name.c_str(), out_dir.c_str(), static_cast<long long>(tc.n_layers),
                 join(cfg.attn_layers).c_str(), static_cast<long long>(cfg.attn_layers.size()),
                 mixer.c_str(), static_cast<long long>(cfg.n_mamba_layers()),
                 double(hybrid.params().numel()) / 1e6, static_cast<unsigned long long>(seed));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-convert: error: %s\n", e.what());
    return 1;
  }
}
