// mil-chat: chat with a Llama-family model or a hybrid, or complete a raw prompt, on the CPU or
// the GPU.
//
//   mil-chat -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "What is the capital of France?" -n 24
//   mil-chat -m path/to/hf-folder            (no -p: interactive chat; /reset, /exit)
//
// MODEL is a GGUF file, a Hugging Face folder (config.json + safetensors + tokenizer.json) or a
// hybrid folder (mamba_config.json + safetensors + tokenizer.json, from mil-convert).
// The prompt goes through the model's chat template as a user message (--raw sends it as is);
// tokens stream to stdout as they are generated, and a line with the prompt and generation
// speeds ends each answer on stderr.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <mil/generate/generate.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/chat_prompt.hpp>

using namespace mil;

namespace {

struct Options {
  std::string model, prompt, system, chat_template, device = "auto";
  int64_t n_predict = 256, ctx = 2048;
  bool raw = false, prompt_given = false;
  gen::SamplingConfig sampling;
  std::vector<std::string> stop;
};

// The conversation so far and the tokens the decoder holds for it.
struct Session {
  std::vector<text::ChatMessage> messages;
  std::vector<int32_t> cached;  // tokens in the KV cache of slot 0
  size_t saved = 0;             // tokens of the state saved at the end of the last prompt
};

void print_speed(const gen::GenerateResult& r) {
  std::fprintf(stderr,
               "\n[mil-chat] prompt: %lld tokens, %.1f tokens/s | generated: %lld tokens, %.1f "
               "tokens/s | stop: %s\n",
               static_cast<long long>(r.prompt_tokens), r.prompt_tokens_per_second(),
               static_cast<long long>(r.sampled), r.generated_tokens_per_second(),
               gen::to_string(r.reason));
}

template <Element T, Device D>
int run(const Options& o, const nn::HybridModel<T, D>& model, const text::Tokenizer& tok,
        const std::optional<text::ChatTemplate>& tmpl) {
  nn::DecoderOptions dopt;
  dopt.max_seq = o.ctx;
  dopt.snapshots = 1;  // the state at the end of the last prompt (hybrids return to it)
  nn::Decoder<T, D> decoder(model, dopt);
  gen::GenerateConfig g;
  g.max_new_tokens = o.n_predict;
  g.sampling = o.sampling;
  g.stop_strings = o.stop;
  g.stop_tokens = text::stop_token_ids(tok, tmpl);

  Session session;
  if (!o.system.empty()) session.messages.push_back({"system", o.system});
  auto answer = [&](const std::string& user) {
    std::vector<int32_t> ids;
    if (tmpl) {
      session.messages.push_back({"user", user});
      ids = text::encode_chat_prompt(tok, *tmpl, session.messages);
    } else {
      ids = tok.encode(user, tok.data().add_bos && session.cached.empty(), true);
      ids.insert(ids.begin(), session.cached.begin(), session.cached.end());
    }
    // Reuse the cached prefix the new rendering shares; at least one token is prefilled.
    size_t same = 0;
    while (same < session.cached.size() && same < ids.size() && session.cached[same] == ids[same])
      ++same;
    same = std::min(same, ids.size() - 1);
    // A Mamba layer's state cannot go back token by token: a hybrid returns to the state saved
    // at the end of the last prompt when the new rendering extends that prompt (the usual case:
    // the answer is re-rendered, then the new turn follows), else it re-reads the conversation.
    if (!decoder.can_rewind() && same != session.cached.size()) {
      if (session.saved > 0 && same >= session.saved) {
        decoder.restore_state(0);
        same = session.saved;
      } else {
        same = 0;
      }
    }
    decoder.truncate(0, int64_t(same));
    MIL_CHECK(int64_t(ids.size()) < o.ctx, "the conversation (", ids.size(),
              " tokens) does not fit the context of ", o.ctx, " tokens (--ctx)");
    // The prompt but its last token, then a snapshot there; generate() reads the last token.
    const auto t0 = std::chrono::steady_clock::now();
    const auto head = std::span(ids).subspan(same, ids.size() - 1 - same);
    if (!head.empty()) decoder.prefill(0, head);
    decoder.save_state(0);
    session.saved = ids.size() - 1;
    const double head_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto r = gen::generate(decoder, 0, tok, std::span(ids).last(1), g,
                           [](std::string_view s) {
                             std::fwrite(s.data(), 1, s.size(), stdout);
                             std::fflush(stdout);
                           });
    r.prompt_tokens += int64_t(head.size());
    r.prompt_seconds += head_seconds;
    session.cached = ids;
    // The decoder holds every generated token but the last one sampled.
    session.cached.insert(session.cached.end(), r.tokens.begin(), r.tokens.end());
    session.cached.resize(size_t(decoder.length(0)));
    if (tmpl) session.messages.push_back({"assistant", r.text});
    std::printf("\n");
    print_speed(r);
  };

  if (o.prompt_given) {
    answer(o.prompt);
    return 0;
  }
  std::fprintf(stderr, "[mil-chat] interactive chat: /reset forgets the conversation, /exit or "
                       "end of input quits\n");
  for (std::string line;;) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      session = {};
      if (!o.system.empty()) session.messages.push_back({"system", o.system});
      continue;
    }
    if (!line.empty()) answer(line);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"mil-chat: chat with a Llama-family model (GGUF file or Hugging Face folder)"};
  app.add_option("-m,--model", o.model, "GGUF file, or folder with config.json + safetensors")
      ->required();
  auto* prompt = app.add_option("-p,--prompt", o.prompt, "prompt; without it: interactive chat");
  app.add_option("-n,--n-predict", o.n_predict, "tokens to generate at most")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30))
      ->capture_default_str();
  app.add_option("--temp", o.sampling.temperature, "temperature; 0 = greedy")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--top-k", o.sampling.top_k, "keep the k most likely tokens; 0 = off")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--top-p", o.sampling.top_p, "nucleus: smallest set of this mass; 1 = off")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--min-p", o.sampling.min_p, "drop tokens below min-p x the top one; 0 = off")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--repeat-penalty", o.sampling.repetition_penalty,
                 "penalty on recent tokens; 1 = off")
      ->capture_default_str();
  app.add_option("--repeat-last-n", o.sampling.repeat_last_n, "window of that penalty")
      ->capture_default_str();
  app.add_option("-s,--seed", o.sampling.seed, "sampling seed")->capture_default_str();
  app.add_option("--system", o.system, "system message");
  app.add_flag("--raw", o.raw, "send the prompt as is, without the chat template");
  app.add_option("--chat-template", o.chat_template,
                 "template family when the model's is not recognised (chatml, zephyr, llama3, "
                 "llama2, mistral)");
  app.add_option("--stop", o.stop, "stop before this string (repeatable)");
  app.add_option("-c,--ctx", o.ctx, "context size in tokens")
      ->check(CLI::Range(int64_t(16), int64_t(1) << 20))
      ->capture_default_str();
  app.add_option("--device", o.device, "cpu, cuda or auto")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  o.prompt_given = prompt->count() > 0;

  try {
    o.sampling.validate();
    auto loaded = nn::load_model(o.model);
    std::optional<text::ChatTemplate> tmpl;
    if (!o.raw) {
      tmpl = o.chat_template.empty()
                 ? text::detect_chat_template(loaded.chat_template)
                 : text::chat_template_for_family(text::parse_chat_family(o.chat_template));
    }
    const auto& c = loaded.model.config().llama;
    const auto& hc = loaded.model.config();
    const std::string mixers =
        hc.n_mamba_layers() == 0
            ? std::string()
            : ", " + std::to_string(hc.n_mamba_layers()) + " " + nn::mixer_name(hc.mixer) + " layers";
    std::fprintf(stderr, "[mil-chat] %s: %lld layers%s, d_model %lld, %lld/%lld heads, vocab %lld%s\n",
                 loaded.name.c_str(), static_cast<long long>(c.n_layers), mixers.c_str(),
                 static_cast<long long>(c.d_model), static_cast<long long>(c.n_heads),
                 static_cast<long long>(c.n_kv_heads), static_cast<long long>(c.vocab),
                 tmpl ? (", chat template " + text::to_string(tmpl->family)).c_str() : ", raw");
#if MIL_CUDA_ENABLED && defined(__CUDACC__)
    if (o.device == "cuda" || (o.device == "auto" && mil::cuda::device_count() > 0)) {
      MIL_CHECK(mil::cuda::device_count() > 0, "--device cuda: no CUDA device found");
      std::fprintf(stderr, "[mil-chat] device: CUDA (bf16)\n");
      const auto gpu_model = nn::convert_model<bf16, Cuda>(loaded.model);
      return run(o, gpu_model, loaded.tokenizer, tmpl);
    }
#else
    MIL_CHECK(o.device != "cuda", "--device cuda: this mil-chat was built without CUDA");
#endif
    std::fprintf(stderr, "[mil-chat] device: CPU (float)\n");
    return run(o, loaded.model, loaded.tokenizer, tmpl);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-chat: error: %s\n", e.what());
    return 1;
  }
}
