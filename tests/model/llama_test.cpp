#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <random>

#include "core/mapped_file.h"
#include "model/loader.h"
#include "test_util.h"

namespace qforge {
namespace {

constexpr double kF32Eps = 1.1920929e-07;

// A small random Llama model (GQA, tied embeddings) for tests that need no download.
LlamaModel tiny_model(uint64_t seed, bool bias = false) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.tie_word_embeddings = true;
  c.attention_bias = bias;
  ModelWeights w;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.3f);
  for (TensorSlot& s : tensor_slots(c, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    const bool norm = s.name.find("norm") != std::string::npos;
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = norm ? 1.0f + 0.1f * d(rng) : d(rng);
  }
  return LlamaModel(c, std::move(w));
}

TEST(Loader, RopePermutationRoundTripsAndMatchesLlamaCpp) {
  // llama.cpp's convert: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): GGUF row 2i+j of a head is
  // Hugging Face row j*hd/2 + i.
  const int64_t n_head = 2, hd = 6, cols = 3, rows = n_head * hd;
  std::vector<float> w(size_t(rows * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i);
  auto g = w;
  permute_rope_rows(g.data(), rows, cols, n_head);
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t c = 0; c < cols; ++c)
          EXPECT_EQ(g[size_t((h * hd + 2 * i + j) * cols + c)], w[size_t((h * hd + j * hd / 2 + i) * cols + c)]);
  unpermute_rope_rows(g.data(), rows, cols, n_head);
  EXPECT_EQ(g, w);
}

// Decoding token by token with the KV cache gives the same hidden states as one prefill.
TEST(Llama, DecodeWithCacheEqualsPrefill) {
  for (bool bias : {false, true}) {
    LlamaModel m = tiny_model(11, bias);
    std::vector<int32_t> ids = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84, 19};
    const int64_t T = int64_t(ids.size()), H = m.config().hidden_size;
    KVCache c1 = m.make_cache(T);
    auto full = m.forward_hidden(ids.data(), T, c1);
    ASSERT_TRUE(full) << full.message();
    KVCache c2 = m.make_cache(T);
    // Prefill 7, then one at a time.
    auto first = m.forward_hidden(ids.data(), 7, c2);
    ASSERT_TRUE(first);
    for (int64_t t = 0; t < 7; ++t)
      for (int64_t h = 0; h < H; ++h) EXPECT_NEAR(first->f32()[t * H + h], full->f32()[t * H + h], 1e-4);
    for (int64_t t = 7; t < T; ++t) {
      auto one = m.forward_hidden(&ids[size_t(t)], 1, c2);
      ASSERT_TRUE(one);
      // Same arithmetic except BLAS blocking: a few ulps of the O(1) normed activations.
      for (int64_t h = 0; h < H; ++h) EXPECT_NEAR(one->f32()[h], full->f32()[t * H + h], 1e-4) << t;
    }
    EXPECT_EQ(c2.length, T);
  }
}

TEST(Llama, ReportsBadTokensAndCacheOverflow) {
  LlamaModel m = tiny_model(1);
  KVCache c = m.make_cache(4);
  int32_t bad = 97;
  auto r = m.forward_hidden(&bad, 1, c);
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("token id 97"), std::string::npos) << r.message();
  std::vector<int32_t> five = {1, 2, 3, 4, 5};
  auto o = m.forward_hidden(five.data(), 5, c);
  ASSERT_FALSE(o);
  EXPECT_NE(o.message().find("capacity 4"), std::string::npos) << o.message();
}

TEST(Llama, LinearInputHookSeesEveryLinearInput) {
  LlamaModel m = tiny_model(2);
  std::vector<int32_t> ids = {1, 2, 3, 4, 5};
  KVCache c = m.make_cache(5);
  std::vector<std::string> seen;
  auto r = m.forward_hidden(ids.data(), 5, c, [&](int layer, LinearInput s, const float*, int64_t T, int64_t in) {
    EXPECT_EQ(T, 5);
    EXPECT_EQ(in, s == LinearInput::kDown ? 48 : 32);
    seen.push_back(std::to_string(layer) + linear_input_name(s));
  });
  ASSERT_TRUE(r);
  EXPECT_EQ(seen, (std::vector<std::string>{"0qkv", "0o", "0gate_up", "0down", "1qkv", "1o", "1gate_up", "1down"}));
}

TEST(Llama, DecoderLayerStopsAfterTheRequestedInput) {
  LlamaModel m = tiny_model(3);
  std::vector<float> x(5 * 32, 0.1f);
  std::vector<float> k(5 * 16), v(5 * 16);
  for (LinearInput stop : {LinearInput::kQKV, LinearInput::kO, LinearInput::kGateUp, LinearInput::kDown}) {
    std::vector<LinearInput> seen;
    m.decoder_layer(0, x.data(), 5, 0, k.data(), v.data(),
                    [&](int, LinearInput s, const float*, int64_t, int64_t) { seen.push_back(s); }, stop);
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back(), stop);
    EXPECT_EQ(seen.size(), size_t(int(stop) + 1));
  }
}

// The FP model's logits equal those of Hugging Face transformers (tests/golden/logits_smollm2.json,
// made by python/make_logits_golden.py from the same GGUF).
//
// Bound: both sides compute in float32 with different summation orders. A float32 dot product of
// length K has relative error <= K*eps (worst case); the deepest chain is L=30 layers of K<=1536 dot
// products on the residual stream, so a logit may differ by up to 2*L*K*eps relative to the largest
// logit magnitude: 2*30*1536*1.19e-7 = 1.1e-2 of max|logit|. (Observed errors are far smaller; see
// docs/fp-reference.md.)
TEST(Llama, LogitsMatchTransformers) {
  const std::string path = testing::default_model_path();
  QF_REQUIRE_MODEL(path);
  auto loaded = load_model(path);
  ASSERT_TRUE(loaded) << loaded.message();
  const LlamaModel& m = *loaded->model;
  auto text = read_text_file(testing::source_dir() + "/tests/golden/logits_smollm2.json");
  ASSERT_TRUE(text) << text.message();
  const auto golden = nlohmann::json::parse(*text);
  const auto probe = golden["probe_ids"].get<std::vector<int>>();
  const int64_t V = m.config().vocab_size, H = m.config().hidden_size;
  const double rel = 2.0 * 30 * 1536 * kF32Eps;
  double worst = 0;
  for (const auto& p : golden["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    // The tokenizer reproduces transformers' ids for the prompt.
    EXPECT_EQ(loaded->tokenizer.encode(p["text"].get<std::string>()), ids) << p["text"];
    const int64_t T = int64_t(ids.size());
    KVCache c = m.make_cache(T);
    auto h = m.forward_hidden(ids.data(), T, c);
    ASSERT_TRUE(h) << h.message();
    std::vector<float> logits(size_t(T * V));
    m.logits(h->f32(), T, logits.data());
    const double bound = rel * p["max_abs_logit"].get<double>();
    for (int64_t t = 0; t < T; ++t) {
      const float* l = logits.data() + t * V;
      double mx = l[0];
      for (int64_t i = 1; i < V; ++i) mx = std::max(mx, double(l[i]));
      double s = 0;
      for (int64_t i = 0; i < V; ++i) s += std::exp(double(l[i]) - mx);
      const double lse = mx + std::log(s);
      EXPECT_NEAR(lse, p["logsumexp"][size_t(t)].get<double>(), bound) << "position " << t;
      for (size_t k = 0; k < probe.size(); ++k) {
        const double want = p["probe_logits"][size_t(t)][k].get<double>();
        EXPECT_NEAR(l[probe[k]], want, bound) << "position " << t << " id " << probe[k];
        worst = std::max(worst, std::fabs(l[probe[k]] - want));
      }
      const int64_t am = int64_t(std::max_element(l, l + V) - l);
      EXPECT_EQ(am, p["argmax"][size_t(t)].get<int64_t>()) << "position " << t;
    }
  }
  std::printf("largest |logit - transformers| on probe ids: %.3g (bound %.3g x max|logit|)\n", worst, rel);
  (void)H;
}

}  // namespace
}  // namespace qforge
