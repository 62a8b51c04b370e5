// mil-chat: chat with a Llama-family model or a hybrid, or complete a raw prompt, on the CPU or
// the GPU.
//
//   mil-chat -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "What is the capital of France?" -n 24
//   mil-chat -m path/to/hf-folder            (no -p: interactive chat; /reset, /exit)
//   mil-chat -m TARGET -md DRAFT --draft-max 4           (speculative decoding)
//   mil-chat -m TARGET --lookup --temp 0                 (prompt-lookup drafts, no model)
//   mil-chat -m MODEL --raw -p TEXT --logits-out L.json  (the logits of every prompt position)
//
// MODEL is a GGUF file, a Hugging Face folder (config.json + safetensors + tokenizer.json) or a
// hybrid folder (mamba_config.json + safetensors + tokenizer.json, from mil-convert).
// The prompt goes through the model's chat template as a user message (--raw sends it as is);
// tokens stream to stdout as they are generated, and a line with the prompt and generation
// speeds ends each answer on stderr.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <mil/core/threads.hpp>
#include <mil/generate/generate.hpp>
#include <mil/generate/speculative.hpp>
#include <mil/nn/decoder.hpp>
#include <mil/nn/model_load.hpp>
#include <mil/text/chat_prompt.hpp>

#include "common/cli.hpp"

using namespace mil;

namespace {

struct Options {
  std::string model, prompt, system, chat_template, device = "auto";
  int64_t n_predict = 256, ctx = 2048;
  int threads = 0;  // CPU threads; 0: all cores
  bool raw = false, prompt_given = false, float_weights = false, q8_activations = false;
  // Speculative decoding: a draft model (-md) or prompt lookup (--lookup).
  std::string draft_model;
  bool lookup = false, draft_adaptive = false;
  int64_t draft_max = 4, draft_min = 0, lookup_ngram = 3;
  gen::SamplingConfig sampling;
  std::vector<std::string> stop;
  std::string logits_out;  // write the prompt's logits here instead of generating
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

void print_speculation(const gen::SpeculativeStats& s) {
  std::fprintf(stderr,
               "[mil-chat] speculation: %lld of %lld drafted tokens accepted (%.1f%%), %.2f tokens "
               "per target step (%lld steps, %lld replays)\n",
               static_cast<long long>(s.accepted), static_cast<long long>(s.drafted),
               100 * s.acceptance(), s.tokens_per_step(), static_cast<long long>(s.target_steps),
               static_cast<long long>(s.replays));
}

// The logits of every position of the prompt in one prefill step, as JSON {"model", "device",
// "ids", "vocab", "logits": [[vocab floats] per position]}: what another implementation's logits
// are compared with (scripts/check_hybrid_reference.py --compare reads this layout). Written to a
// temporary file first, so a failed run leaves no half-written file under the name.
template <Element T, Device D>
int write_prompt_logits(const Options& o, const nn::HybridModel<T, D>& model, const text::Tokenizer& tok,
                        const std::optional<text::ChatTemplate>& tmpl) {
  std::vector<text::ChatMessage> messages;
  if (!o.system.empty()) messages.push_back({"system", o.system});
  messages.push_back({"user", o.prompt});
  const std::vector<int32_t> ids =
      tmpl ? text::encode_chat_prompt(tok, *tmpl, messages) : tok.encode(o.prompt, tok.data().add_bos, true);
  MIL_CHECK(!ids.empty(), "--logits-out: the prompt has no tokens");
  const int64_t n = int64_t(ids.size()), vocab = model.config().llama.vocab;
  MIL_CHECK(n <= o.ctx, "--logits-out: the prompt has ", n, " tokens, more than the context (-c ", o.ctx, ")");
  nn::Decoder<T, D> decoder(model, {.max_seq = o.ctx, .max_tokens = std::max<int64_t>(n, 512), .max_logits = n,
                                    .q8_activations = o.q8_activations});
  const nn::StepRow row{0, ids, -1, nn::RowLogits::all};
  decoder.step(std::span(&row, 1));
  const std::vector<float> logits = decoder.logits_host();
  nlohmann::ordered_json j;
  j["model"] = o.model;
  j["device"] = std::string(D::name) + " " + std::string(dtype_name(dtype_of<T>::value));
  j["ids"] = ids;
  j["vocab"] = vocab;
  j["logits"] = nlohmann::ordered_json::array();
  for (int64_t r = 0; r < n; ++r)
    j["logits"].push_back(std::vector<float>(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab));
  const std::string tmp = o.logits_out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MIL_CHECK(f.good(), "--logits-out: cannot write '", tmp, "'");
    f << j.dump() << '\n';
    f.close();
    MIL_CHECK(f.good(), "--logits-out: writing '", tmp, "' failed");
  }
  std::filesystem::rename(tmp, o.logits_out);
  std::fprintf(stderr, "[mil-chat] logits of %lld positions x %lld -> %s\n", static_cast<long long>(n),
               static_cast<long long>(vocab), o.logits_out.c_str());
  return 0;
}

template <Element T, Device D>
int run(const Options& o, const nn::HybridModel<T, D>& model, const text::Tokenizer& tok,
        const std::optional<text::ChatTemplate>& tmpl, const nn::HybridModel<T, D>* draft_model) {
  if (!o.logits_out.empty()) return write_prompt_logits(o, model, tok, tmpl);
  nn::DecoderOptions dopt;
  dopt.max_seq = o.ctx;
  dopt.q8_activations = o.q8_activations;
  // Snapshot 0: the state at the end of the last prompt (hybrids return to it); 1: speculation's.
  dopt.snapshots = 2;
  const bool speculate = draft_model || o.lookup;
  if (speculate) dopt.max_logits = o.draft_max + 1;
  nn::Decoder<T, D> decoder(model, dopt);
  std::unique_ptr<nn::Decoder<T, D>> draft_decoder;
  std::unique_ptr<gen::Draft> draft;
  if (draft_model) {
    draft_decoder = std::make_unique<nn::Decoder<T, D>>(*draft_model, nn::DecoderOptions{.max_seq = o.ctx});
    draft = std::make_unique<gen::DecoderDraft<T, D>>(*draft_decoder);
  } else if (o.lookup) {
    draft = std::make_unique<gen::PromptLookupDraft>(o.lookup_ngram, std::min<int64_t>(2, o.lookup_ngram));
  }
  const gen::SpeculativeConfig spec{.draft_max = o.draft_max, .draft_min = o.draft_min, .snapshot = 1,
                                    .adaptive = o.draft_adaptive};
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
    auto print = [](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    };
    gen::SpeculativeStats stats;
    auto r = draft ? gen::speculative_generate(decoder, 0, *draft, tok,
                                               std::span(ids).first(ids.size() - 1),
                                               std::span(ids).last(1), g, spec, &stats, print)
                   : gen::generate(decoder, 0, tok, std::span(ids).last(1), g, print,
                                   std::span(ids).first(ids.size() - 1));
    r.prompt_tokens += int64_t(head.size());
    r.prompt_seconds += head_seconds;
    session.cached = ids;
    // The decoder holds every generated token but the last one sampled.
    session.cached.insert(session.cached.end(), r.tokens.begin(), r.tokens.end());
    session.cached.resize(size_t(decoder.length(0)));
    if (tmpl) session.messages.push_back({"assistant", r.text});
    std::printf("\n");
    print_speed(r);
    if (draft) print_speculation(stats);
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
  app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)")
      ->check(CLI::Range(1, 1 << 12));
  app.add_flag("--float-weights", o.float_weights,
               "CPU: products on float copies of a GGUF file's quantised weights instead of on "
               "their blocks (slower; the reference for the block products)");
  app.add_flag("--q8-activations", o.q8_activations,
               "CPU: the block products take the activations quantised to 8 bits (faster; the "
               "output is no longer the float path's)");
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
  auto* md = app.add_option("--model-draft", o.draft_model,
                            "draft model for speculative decoding (same tokenizer); also -md");
  app.add_flag("--lookup", o.lookup, "speculative decoding with prompt-lookup drafts")
      ->excludes(md);
  app.add_option("--draft-max", o.draft_max, "tokens drafted per target step at most")
      ->check(CLI::Range(int64_t(1), int64_t(64)))
      ->capture_default_str();
  app.add_flag("--draft-adaptive", o.draft_adaptive,
               "draft length adapts: 2 more after a fully kept draft, 1 fewer after a rejection");
  app.add_option("--draft-min", o.draft_min, "shorter drafts are not verified")
      ->check(CLI::Range(int64_t(0), int64_t(64)))
      ->capture_default_str();
  app.add_option("--lookup-ngram", o.lookup_ngram,
                 "longest n-gram that prompt lookup matches (it tries shorter ones down to 2-grams)")
      ->check(CLI::Range(int64_t(1), int64_t(16)))
      ->capture_default_str();
  auto* logits_out = app.add_option("--logits-out", o.logits_out,
                                     "write the logits of every prompt position to this JSON file "
                                     "and generate nothing (needs -p)");
  if (const int code = examples::parse_command_line(app, argc, argv); code >= 0) return code;
  o.prompt_given = prompt->count() > 0;
  if (logits_out->count() > 0 && !o.prompt_given) {
    std::fprintf(stderr, "mil-chat: error: --logits-out needs a prompt (-p)\n");
    return 2;
  }

  try {
    o.sampling.validate();
    if (o.threads > 0) cpu::set_threads(o.threads);
    const bool gpu = examples::runs_on_gpu(o.device);
    MIL_CHECK(!o.q8_activations || (!gpu && !o.float_weights),
              "--q8-activations: only the CPU's block products take 8-bit activations (not the GPU, "
              "not --float-weights)");
    auto loaded = examples::load_for_decoding(o.model, gpu, o.float_weights);
    std::optional<text::ChatTemplate> tmpl;
    if (!o.raw) {
      tmpl = o.chat_template.empty()
                 ? text::detect_chat_template(loaded.chat_template)
                 : text::chat_template_for_family(text::parse_chat_family(o.chat_template));
    }
    std::optional<nn::LoadedModel> draft;
    if (!o.draft_model.empty()) {
      draft = examples::load_for_decoding(o.draft_model, gpu, o.float_weights);
      gen::check_draft_tokenizer(loaded.tokenizer, loaded.model.config().llama.vocab,
                                 draft->tokenizer, draft->model.config().llama.vocab, o.draft_model);
      std::fprintf(stderr, "[mil-chat] draft: %s, %lld layers\n", draft->name.c_str(),
                   static_cast<long long>(draft->model.config().llama.n_layers));
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
    if (gpu) {
      MIL_CHECK(mil::cuda::device_count() > 0, "--device cuda: no CUDA device found");
      std::fprintf(stderr, "[mil-chat] device: CUDA (bf16)\n");
      const auto gpu_model = nn::convert_model<bf16, Cuda>(loaded.model);
      std::optional<nn::HybridModel<bf16, Cuda>> gpu_draft;
      if (draft) gpu_draft.emplace(nn::convert_model<bf16, Cuda>(draft->model));
      return run(o, gpu_model, loaded.tokenizer, tmpl, gpu_draft ? &*gpu_draft : nullptr);
    }
#else
    MIL_CHECK(o.device != "cuda", "--device cuda: this mil-chat was built without CUDA");
#endif
    MIL_CHECK(!o.q8_activations || (loaded.model.block_weights() && loaded.model.block_weights()->has_q8_parts()),
              "--q8-activations: '", o.model,
              "' has no quantised blocks (a GGUF file's Q8_0, Q4_0, Q4_1, Q4_K or Q6_K layers)");
    std::fprintf(stderr, "[mil-chat] device: CPU (float%s%s), %d threads\n",
                 loaded.model.block_weights() ? ", products on the weights' blocks" : "",
                 o.q8_activations ? " with 8-bit activations" : "",
                 cpu::threads());
    return run(o, loaded.model, loaded.tokenizer, tmpl, draft ? &draft->model : nullptr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mil-chat: error: %s\n", e.what());
    return 1;
  }
}
