// mil-demo: the library end to end on the CPU. Trains a small Llama-style byte-level language
// model on text files with AdamW + warm-up/cosine, shows progress (loss, tokens/s), reports the
// held-out loss before and after, writes the loss curve as an SVG plot and samples some text.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include <mil/nn/hybrid.hpp>
#include <mil/optim/adamw.hpp>
#include <mil/optim/schedule.hpp>
#include <mil/util/progress.hpp>
#include <mil/util/svg_plot.hpp>

using namespace mil;

namespace {

std::string read_files(const std::vector<std::string>& paths) {
  std::string text;
  for (const auto& p : paths) {
    std::ifstream f(p, std::ios::binary);
    MIL_CHECK(f.good(), "cannot read corpus file '", p, "'");
    text.append(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  return text;
}

// A batch of `batch` windows of seq + 1 bytes starting at Philox-drawn offsets of `text`.
void sample_batch(const std::string& text, uint64_t seed, uint64_t step, int64_t batch, int64_t seq,
                  std::vector<int32_t>& ids, std::vector<int32_t>& targets) {
  ids.resize(size_t(batch * seq));
  targets.resize(size_t(batch * seq));
  int64_t span = int64_t(text.size()) - seq - 1;
  for (int64_t b = 0; b < batch; ++b) {
    auto start = int64_t(rng::uniform(seed, step, uint64_t(b), 0.f, 1.f) * float(span));
    for (int64_t t = 0; t < seq; ++t) {
      ids[size_t(b * seq + t)] = uint8_t(text[size_t(start + t)]);
      targets[size_t(b * seq + t)] = uint8_t(text[size_t(start + t + 1)]);
    }
  }
}

// Mean loss (nats per byte) over consecutive windows of the held-out text.
double heldout_loss(const nn::HybridModel<float, Cpu>& model, const std::string& text, int64_t seq) {
  ag::Tape tape;
  ag::NoGrad no_grad(tape);
  int64_t windows = std::min<int64_t>(16, (int64_t(text.size()) - 1) / seq);
  MIL_CHECK(windows >= 1, "held-out text too short for windows of ", seq, " bytes");
  std::vector<int32_t> ids(size_t(windows * seq)), targets(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = uint8_t(text[i]);
    targets[i] = uint8_t(text[i + 1]);
  }
  auto pos = nn::sequence_positions<Cpu>(windows, seq);
  auto logits = model.forward(tape, Tensor<int32_t, Cpu>::from(Shape{windows * seq}, ids), pos, windows, seq);
  return ag::cross_entropy(tape, logits, Tensor<int32_t, Cpu>::from(Shape{windows * seq}, targets)).mean();
}

// Samples `n` bytes after `prompt` at temperature `temp` (no KV cache yet: recomputes the window).
std::string sample_text(const nn::HybridModel<float, Cpu>& model, std::string prompt, int n, float temp,
                        int64_t seq, uint64_t seed) {
  ag::Tape tape;
  ag::NoGrad no_grad(tape);
  for (int i = 0; i < n; ++i) {
    std::string window = prompt.substr(prompt.size() > size_t(seq) ? prompt.size() - size_t(seq) : 0);
    int64_t t = int64_t(window.size());
    std::vector<int32_t> ids(window.begin(), window.end());
    for (auto& id : ids) id = uint8_t(id);
    auto logits = model.forward(tape, Tensor<int32_t, Cpu>::from(Shape{t}, ids),
                                nn::sequence_positions<Cpu>(1, t), 1, t);
    const float* last = logits.value().data() + (t - 1) * 256;
    float mx = *std::max_element(last, last + 256);
    std::vector<double> p(256);
    double z = 0;
    for (int v = 0; v < 256; ++v) z += p[size_t(v)] = std::exp(double(last[v] - mx) / temp);
    double u = rng::uniform(seed, 1, uint64_t(i), 0.f, 1.f) * z, c = 0;
    int pick = 255;
    for (int v = 0; v < 256; ++v)
      if ((c += p[size_t(v)]) >= u) { pick = v; break; }
    prompt.push_back(char(pick));
  }
  return prompt;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mil-demo: train a small Llama-style byte-level model on text, on the CPU"};
  std::vector<std::string> corpus;
  int steps = 300, layers = 4;
  int64_t d_model = 128, seq = 128, batch = 8;
  float lr = 3e-3f, temp = 0.7f;
  uint64_t seed = 1;
  std::string plot = "demo_loss.svg", prompt = "The ";
  app.add_option("corpus", corpus, "text files to learn from")->required()->check(CLI::ExistingFile);
  app.add_option("--steps", steps, "optimizer steps")->check(CLI::Range(1, 1000000));
  app.add_option("--layers", layers, "decoder layers")->check(CLI::Range(1, 64));
  app.add_option("--d-model", d_model, "model width (a multiple of 32)")->check(CLI::Range(32, 4096));
  app.add_option("--seq", seq, "sequence length")->check(CLI::Range(8, 4096));
  app.add_option("--batch", batch, "sequences per step")->check(CLI::Range(1, 1024));
  app.add_option("--lr", lr, "peak learning rate");
  app.add_option("--seed", seed, "seed of initialisation and data order");
  app.add_option("--plot", plot, "where to write the loss curve (SVG)");
  app.add_option("--prompt", prompt, "text to continue after training");
  app.add_option("--temp", temp, "sampling temperature")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    MIL_CHECK(d_model % 32 == 0, "--d-model must be a multiple of 32, got ", d_model);
    std::string text = read_files(corpus);
    size_t split = text.size() * 9 / 10;
    std::string train_text = text.substr(0, split), heldout = text.substr(split);
    MIL_CHECK(int64_t(train_text.size()) > seq + 1 && int64_t(heldout.size()) > seq + 1,
              "corpus too small: ", text.size(), " bytes for --seq ", seq);

    nn::LlamaConfig cfg;
    cfg.vocab = 256;
    cfg.d_model = d_model;
    cfg.n_layers = layers;
    cfg.head_dim = 32;
    cfg.n_heads = d_model / 32;
    cfg.n_kv_heads = cfg.n_heads % 2 == 0 ? cfg.n_heads / 2 : cfg.n_heads;  // GQA where it divides
    cfg.d_ff = 3 * d_model;
    cfg.rope_theta = 10000.f;
    nn::HybridModel<float, Cpu> model(nn::all_attention(cfg));
    model.init_random(seed);
    std::printf("mil-demo: %lld-byte corpus (%zu train / %zu held out), Llama %d layers x %lld wide, "
                "%lld heads (%lld KV), %.2fM parameters\n",
                (long long)text.size(), train_text.size(), heldout.size(), layers, (long long)d_model,
                (long long)cfg.n_heads, (long long)cfg.n_kv_heads, double(model.params().numel()) / 1e6);
    std::fflush(stdout);
    double before = heldout_loss(model, heldout, seq);

    optim::AdamW<float, Cpu> opt(model.params(), {.weight_decay = 0.01f, .max_grad_norm = 1.0f});
    optim::CosineSchedule schedule{lr, std::max(1, steps / 20), steps, lr / 10};
    auto pos = nn::sequence_positions<Cpu>(batch, seq);
    std::vector<int32_t> ids, targets;
    std::vector<double> losses;
    util::ProgressBar bar("train", steps);
    for (int step = 0; step < steps; ++step) {
      sample_batch(train_text, seed, uint64_t(step), batch, seq, ids, targets);
      ag::Tape tape;
      auto logits = model.forward(tape, Tensor<int32_t, Cpu>::from(Shape{batch * seq}, ids), pos, batch, seq);
      auto loss = ag::cross_entropy(tape, logits, Tensor<int32_t, Cpu>::from(Shape{batch * seq}, targets));
      tape.backward();
      auto r = opt.step(schedule.lr(step));
      losses.push_back(loss.mean());
      char fields[128];
      std::snprintf(fields, sizeof fields, "loss %.3f  lr %.1e  |g| %.2f  %.0f tok/s%s", losses.back(),
                    r.lr, r.grad_norm, double(batch * seq) * (step + 1) / bar.seconds(),
                    r.skipped ? "  (skipped: non-finite gradient)" : "");
      bar.update(step + 1, fields);
    }
    double train_s = bar.seconds();
    double after = heldout_loss(model, heldout, seq);
    std::printf("training: %d steps, %.1f s, %.0f tokens/s (forward + backward + AdamW)\n", steps,
                train_s, double(steps) * double(batch * seq) / train_s);
    std::printf("held-out loss: %.3f -> %.3f nats/byte (%.2f -> %.2f bits/byte; uniform is 8)\n",
                before, after, before / std::log(2.0), after / std::log(2.0));
    util::write_svg_plot(plot, "mil-demo: training loss", "step", "loss (nats/byte)",
                         {{"train loss", losses}});
    std::printf("loss curve: %s\n", plot.c_str());
    std::printf("sample (temperature %.2f):\n%s\n", temp, sample_text(model, prompt, 160, temp, seq, seed).c_str());
    return after < before ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-demo: error: %s\n", e.what());
    return 1;
  }
}
