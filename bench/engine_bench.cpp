// FP engine benchmark: the machine's sgemm GFLOP/s (the baseline, measured in the same run), prefill
// tokens/s at ctx 2048 and its share of that sgemm rate, and decode tokens/s with the KV cache.
// Prints validate -> time -> rates. Usage: engine_bench --model MODEL.gguf [--ctx 2048] [--decode 64]
#include <benchmark/benchmark.h>
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
#include "model/loader.h"
#include "ops/ops.h"

using namespace qforge;
using bench::Clock;
using bench::cpu_name;
using bench::seconds_since;

// Median GFLOP/s of y[M,N] = x[M,K] w[N,K]^T over `reps` runs.
static double sgemm_gflops(int64_t M, int64_t K, int64_t N, int reps) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d;
  std::vector<float> x(size_t(M * K)), w(size_t(N * K)), y(size_t(M * N));
  for (auto& v : x) v = d(rng);
  for (auto& v : w) v = d(rng);
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {
    auto t0 = Clock::now();
    ops::linear(x.data(), M, K, K, w.data(), N, nullptr, y.data(), N);
    benchmark::DoNotOptimize(y.data());
    if (r) t.push_back(seconds_since(t0));  // first run is warm-up
  }
  std::sort(t.begin(), t.end());
  return 2.0 * double(M * K * N) / t[t.size() / 2] / 1e9;
}

int main(int argc, char** argv) {
  std::string model_path;
  int64_t ctx = 2048, n_decode = 64;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--model") && i + 1 < argc) model_path = argv[++i];
    else if (!std::strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = std::stoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--decode") && i + 1 < argc) n_decode = std::stoll(argv[++i]);
    else {
      fmt::print(stderr, "usage: {} --model MODEL.gguf|DIR [--ctx 2048] [--decode 64]\n", argv[0]);
      return 2;
    }
  }
  if (model_path.empty()) {
    fmt::print(stderr, "engine_bench: --model is required\n");
    return 2;
  }
  struct utsname u{};
  uname(&u);
  fmt::print("machine: {} ({} threads for BLAS), {} {}\n", cpu_name(), ops::num_threads(), u.sysname, u.machine);

  auto loaded = load_model(model_path);
  if (!loaded) {
    fmt::print(stderr, "error: {}\n", loaded.message());
    return 1;
  }
  const LlamaModel& m = *loaded->model;
  const ModelConfig& c = m.config();

  // Baseline: sgemm at the shapes of the prefill's linears (M = ctx).
  const double g_qkv = sgemm_gflops(ctx, c.hidden_size, c.q_dim() + 2 * c.kv_dim(), 5);
  const double g_up = sgemm_gflops(ctx, c.hidden_size, c.intermediate_size, 5);
  const double g_down = sgemm_gflops(ctx, c.intermediate_size, c.hidden_size, 5);
  const double g_sgemm = std::max({g_qkv, g_up, g_down});
  fmt::print("sgemm baseline: {:.1f} GFLOP/s (qkv {:.1f}, gate/up {:.1f}, down {:.1f}; M={})\n", g_sgemm, g_qkv,
             g_up, g_down, ctx);

  // Validate: prefill of a real text window gives finite hidden states.
  std::vector<int32_t> ids(static_cast<size_t>(ctx));
  std::mt19937 rng(7);
  for (auto& t : ids) t = int32_t(rng() % uint32_t(c.vocab_size));
  KVCache cache = m.make_cache(ctx + n_decode);
  auto h = m.forward_hidden(ids.data(), ctx, cache);
  if (!h || !std::all_of(h->f32(), h->f32() + h->numel(), [](float v) { return std::isfinite(v); })) {
    fmt::print(stderr, "validate: prefill failed or gave non-finite values\n");
    return 1;
  }
  fmt::print("validate: prefill of {} tokens finite\n", ctx);

  // FLOPs of one prefill: the linears, the causal attention (QK^T and PV over ~T^2/2 pairs), LM head
  // for the last position only (a prefill for decoding needs just that).
  const double T = double(ctx);
  const double lin = 2.0 * T * double(c.hidden_size) *
                     double(2 * c.q_dim() + 2 * c.kv_dim() + 3 * c.intermediate_size);
  const double attn = 2.0 * 2.0 * double(c.num_attention_heads * c.head_dim) * T * (T + 1) / 2.0;
  const double flops = double(c.num_hidden_layers) * (lin + attn) + 2.0 * double(c.hidden_size * c.vocab_size);
  std::vector<double> tp;
  std::vector<float> logits(size_t(c.vocab_size));
  for (int r = 0; r < 3; ++r) {
    cache.reset();
    auto t0 = Clock::now();
    auto hh = m.forward_hidden(ids.data(), ctx, cache);
    m.logits(hh->f32() + (ctx - 1) * c.hidden_size, 1, logits.data());
    tp.push_back(seconds_since(t0));
  }
  std::sort(tp.begin(), tp.end());
  const double t_prefill = tp[1];
  const double gflops = flops / t_prefill / 1e9;
  fmt::print("prefill: ctx {} in {:.2f}s = {:.0f} tokens/s, {:.1f} GFLOP/s = {:.0f}% of sgemm baseline\n", ctx,
             t_prefill, T / t_prefill, gflops, 100.0 * gflops / g_sgemm);

  // Decode: n_decode tokens one at a time after the prefill (greedy), KV cache of ctx positions.
  int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  auto t0 = Clock::now();
  for (int64_t i = 0; i < n_decode; ++i) {
    auto hd = m.forward_hidden(&next, 1, cache);
    m.logits(hd->f32(), 1, logits.data());
    next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const double t_dec = seconds_since(t0);
  fmt::print("decode: {} tokens after a {}-token context in {:.2f}s = {:.1f} tokens/s\n", n_decode, ctx, t_dec,
             double(n_decode) / t_dec);
  // Short-context decode, the usual chat case.
  KVCache small = m.make_cache(16 + n_decode);
  auto hs = m.forward_hidden(ids.data(), 16, small);
  t0 = Clock::now();
  for (int64_t i = 0; i < n_decode; ++i) {
    auto hd = m.forward_hidden(&next, 1, small);
    m.logits(hd->f32(), 1, logits.data());
    next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const double t_dec16 = seconds_since(t0);
  fmt::print("decode: {} tokens after a 16-token context in {:.2f}s = {:.1f} tokens/s\n", n_decode, t_dec16,
             double(n_decode) / t_dec16);
  return 0;
}
