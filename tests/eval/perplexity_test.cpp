#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "eval/perplexity.h"
#include "model/llama.h"

namespace qforge {
namespace {

LlamaModel random_model(uint64_t seed) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = false;
  ModelWeights w;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.5f);
  for (TensorSlot& s : tensor_slots(c, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = d(rng);
  }
  return LlamaModel(c, std::move(w));
}

// Direct computation: per window, full logits, log-softmax in double, NLL of the next token.
struct Manual {
  double nll = 0, kl = 0;
  int64_t n = 0, agree = 0;
};
Manual manual(const LlamaModel& m, const LlamaModel* ref, const std::vector<int32_t>& toks, int64_t ctx,
              int64_t windows) {
  Manual r;
  const int64_t V = m.config().vocab_size;
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* win = toks.data() + w * ctx;
    auto lsm = [&](const LlamaModel& mm) {
      KVCache c = mm.make_cache(ctx);
      Tensor h = std::move(mm.forward_hidden(win, ctx, c)).value();
      std::vector<float> l(size_t(ctx * V));
      mm.logits(h.f32(), ctx, l.data());
      std::vector<double> out(l.size());
      for (int64_t t = 0; t < ctx; ++t) {
        double mx = -1e300, s = 0;
        for (int64_t i = 0; i < V; ++i) mx = std::max(mx, double(l[size_t(t * V + i)]));
        for (int64_t i = 0; i < V; ++i) s += std::exp(l[size_t(t * V + i)] - mx);
        for (int64_t i = 0; i < V; ++i) out[size_t(t * V + i)] = l[size_t(t * V + i)] - mx - std::log(s);
      }
      return out;
    };
    auto lp = lsm(m);
    std::vector<double> rp = ref ? lsm(*ref) : std::vector<double>();
    for (int64_t t = 0; t < ctx - 1; ++t) {
      r.nll -= lp[size_t(t * V + win[t + 1])];
      ++r.n;
      if (ref) {
        int64_t a = 0, b = 0;
        for (int64_t i = 0; i < V; ++i) {
          r.kl += std::exp(rp[size_t(t * V + i)]) * (rp[size_t(t * V + i)] - lp[size_t(t * V + i)]);
          if (lp[size_t(t * V + i)] > lp[size_t(t * V + a)]) a = i;
          if (rp[size_t(t * V + i)] > rp[size_t(t * V + b)]) b = i;
        }
        r.agree += (a == b);
      }
    }
  }
  return r;
}

TEST(Perplexity, MatchesDirectComputationOverNonOverlappingWindows) {
  LlamaModel m = random_model(1), ref = random_model(2);
  std::mt19937 rng(3);
  std::vector<int32_t> toks(150);
  for (auto& t : toks) t = int32_t(rng() % 50);
  EvalOptions opt;
  opt.ctx = 32;
  opt.progress = false;
  auto r = evaluate_perplexity(m, toks, opt, &ref);
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->windows, 4);  // 150 / 32, tail dropped
  EXPECT_EQ(r->tokens_scored, 4 * 31);
  Manual want = manual(m, &ref, toks, 32, 4);
  // Same float logits on both sides; the evaluator takes exp in f32 (<= 1 ulp per term) and sums a row
  // of V = 50 terms in f32 before the f64 total, so each row's logsumexp is within (V + 1) * eps of the
  // f64 direct computation, and so is the mean NLL; KL terms p_i * d_i carry the same relative error,
  // with sum p_i |d_i| <= max |d_i| (< 20 for these models).
  constexpr double kF32Eps = 1.1920929e-07;
  const double bound = (50 + 1) * kF32Eps;
  EXPECT_NEAR(r->mean_nll, want.nll / double(want.n), bound);
  EXPECT_NEAR(r->perplexity, std::exp(want.nll / double(want.n)), bound * r->perplexity);
  EXPECT_NEAR(r->mean_kl, want.kl / double(want.n), bound * 20.0);
  EXPECT_DOUBLE_EQ(r->top1_agreement, double(want.agree) / double(want.n));
  EXPECT_GT(r->mean_kl, 0.01);  // two different random models

  opt.max_windows = 2;
  auto r2 = evaluate_perplexity(m, toks, opt, &m);
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->windows, 2);
  EXPECT_NEAR(r2->mean_kl, 0.0, 1e-12);  // against itself
  EXPECT_DOUBLE_EQ(r2->top1_agreement, 1.0);
}

// Precomputed reference hidden states give exactly the result of running the reference each time.
TEST(Perplexity, CachedReferenceEqualsLiveReference) {
  LlamaModel m = random_model(1), ref = random_model(2);
  std::mt19937 rng(5);
  std::vector<int32_t> toks(100);
  for (auto& t : toks) t = int32_t(rng() % 50);
  EvalOptions opt;
  opt.ctx = 32;
  opt.progress = false;
  auto live = evaluate_perplexity(m, toks, opt, &ref);
  auto cache = compute_reference_hidden(ref, toks, opt);
  ASSERT_TRUE(live && cache);
  EXPECT_EQ(cache->windows.size(), 3u);
  auto cached = evaluate_perplexity(m, toks, opt, *cache);
  ASSERT_TRUE(cached) << cached.message();
  EXPECT_EQ(cached->mean_nll, live->mean_nll);
  EXPECT_EQ(cached->mean_kl, live->mean_kl);
  EXPECT_EQ(cached->top1_agreement, live->top1_agreement);
  opt.max_windows = 2;  // mismatched window count
  EXPECT_FALSE(evaluate_perplexity(m, toks, opt, *cache));
}

TEST(Perplexity, RejectsTextShorterThanOneWindow) {
  LlamaModel m = random_model(1);
  std::vector<int32_t> toks(10, 1);
  EvalOptions opt;
  opt.ctx = 32;
  opt.progress = false;
  auto r = evaluate_perplexity(m, toks, opt);
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("fewer than one window"), std::string::npos) << r.message();
  opt.ctx = 128;  // beyond max_position_embeddings 64
  auto r2 = evaluate_perplexity(m, std::vector<int32_t>(300, 1), opt);
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.message().find("max_position_embeddings"), std::string::npos);
}

}  // namespace
}  // namespace qforge
