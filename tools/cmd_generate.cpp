// qforge generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T --top-k K --top-p P --seed S]
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

#include "model/loader.h"
#include "model/sampler.h"
#include "ops/ops.h"
#include "tools/commands.h"

namespace qforge::tools {

namespace {

struct GenerateArgs {
  std::string model, prompt;
  int64_t max_tokens = 64;
  SamplerOptions sampler;
  int threads = 0;
  bool w4 = false;
  bool chat = false;
};

// Length of the longest prefix of s that ends on a complete UTF-8 character.
size_t complete_utf8_prefix(const std::string& s) {
  size_t n = s.size(), i = n;
  int back = 0;
  while (i > 0 && back < 4) {
    const unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) {  // lead byte or ASCII
      const int need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
      return (n - (i - 1)) >= size_t(need) ? n : i - 1;
    }
    --i;
    ++back;
  }
  return n;
}

Status run_generate(const GenerateArgs& a) {
  ops::set_num_threads(a.threads);
  QF_ASSIGN_OR_RETURN(LoadedModel m, load_model(a.model, LoadOptions{.pack_q4 = a.w4}));
  const LlamaModel& model = *m.model;
  std::string prompt = a.prompt;
  if (a.chat) prompt = "<|im_start|>user\n" + a.prompt + "<|im_end|>\n<|im_start|>assistant\n";
  std::vector<int32_t> ids = m.tokenizer.encode(prompt, /*add_special=*/true);
  if (ids.empty()) return error("generate: the prompt encodes to no tokens");
  const int64_t capacity = int64_t(ids.size()) + a.max_tokens;
  if (capacity > model.config().max_position_embeddings)
    return error("generate: prompt ({} tokens) + --max-tokens {} exceeds max_position_embeddings {}", ids.size(),
                 a.max_tokens, model.config().max_position_embeddings);
  KVCache cache = model.make_cache(capacity);
  Sampler sampler(a.sampler);
  std::vector<float> logits(size_t(model.config().vocab_size));

  const auto t0 = std::chrono::steady_clock::now();
  QF_ASSIGN_OR_RETURN(Tensor h, model.forward_hidden(ids.data(), int64_t(ids.size()), cache));
  model.logits(h.f32() + (int64_t(ids.size()) - 1) * model.config().hidden_size, 1, logits.data());
  const auto t1 = std::chrono::steady_clock::now();

  std::fputs(a.prompt.c_str(), stdout);
  std::fflush(stdout);
  std::vector<int32_t> out;
  std::string printed;
  for (int64_t i = 0; i < a.max_tokens; ++i) {
    const int32_t next = sampler.sample(logits.data(), model.config().vocab_size);
    const auto& eos = model.config().eos_token_ids;
    if (std::find(eos.begin(), eos.end(), next) != eos.end() || next == m.tokenizer.eos_id()) break;
    out.push_back(next);
    // Stream: print the newly completed characters of the decoded continuation.
    const std::string text = m.tokenizer.decode(out);
    const size_t upto = complete_utf8_prefix(text);
    if (upto > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::fwrite(text.data() + printed.size(), 1, upto - printed.size(), stdout);
      std::fflush(stdout);
      printed = text.substr(0, upto);
    }
    if (i + 1 == a.max_tokens) break;
    QF_ASSIGN_OR_RETURN(Tensor hn, model.forward_hidden(&next, 1, cache));
    model.logits(hn.f32(), 1, logits.data());
  }
  const auto t2 = std::chrono::steady_clock::now();
  const std::string text = m.tokenizer.decode(out);
  if (text.size() > printed.size()) std::fputs(text.c_str() + printed.size(), stdout);
  std::fputs("\n", stdout);
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  fmt::print(stderr, "generate: prompt {} tokens in {:.2f}s ({:.1f} tokens/s), generated {} tokens in {:.2f}s ({:.1f} tokens/s)\n",
             ids.size(), prefill_s, double(ids.size()) / prefill_s, out.size(), decode_s,
             out.empty() ? 0.0 : double(out.size()) / decode_s);
  return Status::ok();
}

}  // namespace

Command make_generate_command() {
  auto args = std::make_shared<GenerateArgs>();
  Command c;
  c.declare = [args](CLI::App& app) {
    CLI::App* sub = app.add_subcommand("generate", "Generate text (greedy, or seeded top-k/top-p sampling)");
    sub->add_option("--model", args->model, "model directory or .gguf file")->required();
    sub->add_option("--prompt", args->prompt, "prompt text")->required();
    sub->add_option("--max-tokens", args->max_tokens, "tokens to generate")->check(CLI::PositiveNumber);
    sub->add_option("--temperature", args->sampler.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
    sub->add_option("--top-k", args->sampler.top_k, "keep the K most likely tokens (0: all)")
        ->check(CLI::NonNegativeNumber);
    sub->add_option("--top-p", args->sampler.top_p, "nucleus probability")->check(CLI::Range(0.0f, 1.0f));
    sub->add_option("--seed", args->sampler.seed, "sampling seed");
    sub->add_flag("--chat", args->chat, "wrap the prompt in the ChatML template of SmolLM2-Instruct");
    sub->add_flag("--w4", args->w4,
                  "GGUF: run the Q4_0/Q4_1 linears through the int4 kernels (AWQ/GPTQ checkpoints always do)");
    sub->add_option("--threads", args->threads, "BLAS threads (0: default)")->check(CLI::NonNegativeNumber);
    return sub;
  };
  c.run = [args]() { return exit_code(run_generate(*args)); };
  return c;
}

}  // namespace qforge::tools
