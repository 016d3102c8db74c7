// Decode and prefill of the default model with its linears as packed int4 (the GGUF's Q4_1 blocks run through
// the W4A16 kernels) against the same model dequantized to f32 (BLAS), measured in the same run.
// Prints validate -> time -> tokens/s and the ratio. Usage: w4_decode_bench --model MODEL.gguf [--decode 64]
#include <fmt/format.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/cpu/w4a16.h"
#include "model/layer_spec.h"
#include "model/loader.h"
#include "ops/ops.h"

using namespace qforge;
using bench::Clock;
using bench::cpu_name;
using bench::seconds_since;


// Bytes of linear weights a decode step streams.
static double linear_bytes(const LlamaModel& m) {
  double b = 0;
  for (const LayerWeights& L : m.weights().layers)
    for (const LinearSpec& s : kLlamaLinears) {
      const PackedWeight& p = L.*s.packed;
      b += p ? double(p->bytes()) : double((L.*s.weight).numel()) * 4.0;
    }
  return b;
}

struct DecodeResult {
  double prefill_tok_s = 0, decode_tok_s = 0;
  std::vector<int32_t> tokens;
};

static DecodeResult run(const LlamaModel& m, const std::vector<int32_t>& prompt, int64_t n_decode) {
  const ModelConfig& c = m.config();
  DecodeResult r;
  std::vector<float> logits(size_t(c.vocab_size));
  std::vector<double> tp;
  KVCache cache = m.make_cache(int64_t(prompt.size()) + n_decode);
  for (int rep = 0; rep < 3; ++rep) {
    cache.reset();
    auto t0 = Clock::now();
    auto h = m.forward_hidden(prompt.data(), int64_t(prompt.size()), cache);
    m.logits(h->f32() + (int64_t(prompt.size()) - 1) * c.hidden_size, 1, logits.data());
    tp.push_back(seconds_since(t0));
  }
  std::sort(tp.begin(), tp.end());
  r.prefill_tok_s = double(prompt.size()) / tp[1];
  int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  auto t0 = Clock::now();
  for (int64_t i = 0; i < n_decode; ++i) {
    r.tokens.push_back(next);
    auto h = m.forward_hidden(&next, 1, cache);
    m.logits(h->f32(), 1, logits.data());
    next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  r.decode_tok_s = double(n_decode) / seconds_since(t0);
  return r;
}

int main(int argc, char** argv) {
  std::string model_path;
  int64_t n_decode = 64, n_prompt = 256;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--model") && i + 1 < argc) model_path = argv[++i];
    else if (!std::strcmp(argv[i], "--decode") && i + 1 < argc) n_decode = std::stoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--prompt") && i + 1 < argc) n_prompt = std::stoll(argv[++i]);
    else {
      fmt::print(stderr, "usage: {} --model MODEL.gguf [--decode 64] [--prompt 256]\n", argv[0]);
      return 2;
    }
  }
  if (model_path.empty()) {
    fmt::print(stderr, "w4_decode_bench: --model is required\n");
    return 2;
  }
  struct utsname u{};
  uname(&u);
  fmt::print("machine: {} ({} threads), {} {}; int4 kernel: {}\n", cpu_name(), ops::num_threads(), u.sysname,
             u.machine, kernels::cpu_isa_name(kernels::w4_active_isa()));
  auto fp = load_model(model_path);
  auto w4 = load_model(model_path, LoadOptions{.pack_q4 = true});
  if (!fp || !w4) {
    fmt::print(stderr, "error: {}\n", fp ? w4.message() : fp.message());
    return 1;
  }
  if (!w4->model->weights().has_packed()) {
    fmt::print(stderr, "error: {} has no Q4_0/Q4_1 linears to run packed\n", model_path);
    return 1;
  }
  const ModelConfig& c = fp->model->config();
  std::vector<int32_t> prompt(static_cast<size_t>(n_prompt));
  std::mt19937 rng(7);
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(c.vocab_size));

  // Validate: both runs decode greedily from the same prompt; report how many tokens agree (the W4 runtime
  // differs from f32 only by the rounding of Q4_1's zero point to fp16 and the order of f32 sums).
  const DecodeResult a = run(*fp->model, prompt, n_decode), b = run(*w4->model, prompt, n_decode);
  int64_t same = 0;
  while (same < n_decode && a.tokens[size_t(same)] == b.tokens[size_t(same)]) ++same;
  fmt::print("validate: greedy decode agrees on the first {} of {} tokens\n", same, n_decode);
  const double lm_head = double(c.vocab_size * c.hidden_size) * 4.0;
  fmt::print("weights streamed per decode step: linears f32 {:.1f} MB vs int4 {:.1f} MB; f32 lm_head {:.1f} MB in both\n",
             linear_bytes(*fp->model) / 1e6, linear_bytes(*w4->model) / 1e6, lm_head / 1e6);
  fmt::print("prefill ({} tokens): f32 {:.0f} tokens/s, int4 {:.0f} tokens/s ({:.2f}x)\n", n_prompt, a.prefill_tok_s,
             b.prefill_tok_s, b.prefill_tok_s / a.prefill_tok_s);
  fmt::print("decode ({} tokens after {}): f32 {:.1f} tokens/s, int4 {:.1f} tokens/s ({:.2f}x)\n", n_decode, n_prompt,
             a.decode_tok_s, b.decode_tok_s, b.decode_tok_s / a.decode_tok_s);
  return 0;
}
