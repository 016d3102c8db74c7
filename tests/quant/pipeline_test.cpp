#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "eval/perplexity.h"
#include "model/layer_spec.h"
#include "quant/calibration.h"
#include "quant/pipeline.h"
#include "quant/rtn.h"
#include "test_util.h"

namespace qforge::quant {
namespace {

// A small random Llama whose hidden size (64) takes group sizes 32/64 and whose MLP (96) only 32.
LlamaModel tiny_model(uint64_t seed) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 128;
  c.tie_word_embeddings = true;
  ModelWeights w;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.3f);
  for (TensorSlot& s : tensor_slots(c, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    const bool norm = s.name.find("norm") != std::string::npos;
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = norm ? 1.0f : d(rng);
  }
  // Correlated activations make GPTQ's error feedback matter: a few large embedding channels.
  for (int64_t v = 0; v < c.vocab_size; ++v)
    for (int64_t ch : {3, 17, 40}) w.embed.f32()[v * c.hidden_size + ch] *= 8.0f;
  return LlamaModel(c, std::move(w));
}

std::vector<std::vector<int32_t>> random_windows(int64_t n, int64_t L, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  for (auto& w : out) {
    w.resize(static_cast<size_t>(L));
    for (auto& t : w) t = int32_t(rng() % 64);
  }
  return out;
}

TEST(Pipeline, RtnReplacesEveryLinearWithItsRtnDequantization) {
  LlamaModel m = tiny_model(1), orig = tiny_model(1);
  PipelineOptions opt;
  opt.method = Method::kRtn;
  opt.quant.bits = 4;
  opt.quant.group_size = 32;
  opt.progress = false;
  auto rep = quantize_model(m, {}, opt);
  ASSERT_TRUE(rep) << rep.message();
  EXPECT_EQ(rep->linears.size(), 14u);
  for (int l = 0; l < 2; ++l)
    for (const LinearSpec& s : kLlamaLinears) {
      const Tensor& W = orig.weights().layers[size_t(l)].*s.weight;
      auto q = rtn_quantize(W.f32(), W.shape()[0], W.shape()[1], opt.quant, s.name);
      ASSERT_TRUE(q);
      Tensor want = q->dequantize();
      const Tensor& got = m.weights().layers[size_t(l)].*s.weight;
      ASSERT_EQ(0, std::memcmp(want.f32(), got.f32(), want.nbytes())) << s.name;
    }
  // Norms and embeddings untouched.
  EXPECT_EQ(0, std::memcmp(m.weights().embed.f32(), orig.weights().embed.f32(), orig.weights().embed.nbytes()));
}

// On the model's own calibration distribution, GPTQ's quantized model is closer to FP than RTN's
// (KL divergence of next-token distributions on held-out windows).
TEST(Pipeline, GptqIsCloserToFullPrecisionThanRtn) {
  const LlamaModel fp = tiny_model(2);
  auto calib = random_windows(16, 32, 3);
  std::vector<int32_t> held;
  for (const auto& w : random_windows(8, 32, 4)) held.insert(held.end(), w.begin(), w.end());
  EvalOptions eo;
  eo.ctx = 32;
  eo.progress = false;
  double kl[2];
  for (int i = 0; i < 2; ++i) {
    LlamaModel m = tiny_model(2);
    PipelineOptions opt;
    opt.method = i == 0 ? Method::kRtn : Method::kGptq;
    opt.quant.bits = 4;
    opt.quant.group_size = 32;
    opt.progress = false;
    auto rep = quantize_model(m, calib, opt);
    ASSERT_TRUE(rep) << rep.message();
    if (i == 1) {
      EXPECT_EQ(rep->calibration_tokens, 16 * 32);
      for (const auto& r : rep->linears) {
        EXPECT_GT(r.output_error, 0.0) << r.name;
        EXPECT_GT(r.gptq_loss, 0.0) << r.name;
      }
    }
    auto res = evaluate_perplexity(m, held, eo, &fp);
    ASSERT_TRUE(res) << res.message();
    kl[i] = res->mean_kl;
  }
  std::printf("KL to FP: RTN %.5f, GPTQ %.5f\n", kl[0], kl[1]);
  EXPECT_LT(kl[1], 0.8 * kl[0]);
}

// AWQ and AWQ+GPTQ: the built-in scale-equivalence check passes (no error), every group but the GQA
// v->o one is scaled and folded, and both end closer to FP than RTN on the same grid.
TEST(Pipeline, AwqScalesFoldAndBeatRtn) {
  const LlamaModel fp = tiny_model(5);
  auto calib = random_windows(16, 32, 6);
  std::vector<int32_t> held;
  for (const auto& w : random_windows(8, 32, 7)) held.insert(held.end(), w.begin(), w.end());
  EvalOptions eo;
  eo.ctx = 32;
  eo.progress = false;
  double kl[3];
  const Method methods[3] = {Method::kRtn, Method::kAwq, Method::kAwqGptq};
  for (int i = 0; i < 3; ++i) {
    LlamaModel m = tiny_model(5);
    PipelineOptions opt;
    opt.method = methods[i];
    opt.quant.bits = 4;
    opt.quant.group_size = 32;
    opt.quant.grid = QuantGrid::kAwq;
    opt.progress = false;
    auto rep = quantize_model(m, calib, opt);
    ASSERT_TRUE(rep) << method_name(methods[i]) << ": " << rep.message();
    if (methods[i] != Method::kRtn) {
      ASSERT_EQ(rep->awq_groups.size(), 8u);  // 4 groups x 2 layers
      for (const auto& g : rep->awq_groups) {
        if (g.name.find("o_proj") != std::string::npos) {
          // GQA: v_proj has 32 outputs, o_proj 64 inputs: 1/s cannot be folded into v's rows.
          EXPECT_FALSE(g.skipped.empty()) << g.name;
          continue;
        }
        EXPECT_TRUE(g.skipped.empty()) << g.name << ": " << g.skipped;
        EXPECT_LE(g.err_after, g.err_before) << g.name;  // alpha 0 (plain RTN) is in the grid
        EXPECT_EQ(g.top_scales.size(), 5u);
      }
      EXPECT_NE(rep->awq_groups[0].fold_into.find("input_layernorm"), std::string::npos);
    }
    auto res = evaluate_perplexity(m, held, eo, &fp);
    ASSERT_TRUE(res) << res.message();
    kl[i] = res->mean_kl;
  }
  std::printf("KL to FP: RTN %.5f, AWQ %.5f, AWQ+GPTQ %.5f\n", kl[0], kl[1], kl[2]);
  EXPECT_LT(kl[1], kl[0]);
  EXPECT_LT(kl[2], kl[0]);
}

// Ablation: keeping the most activated input channels in FP leaves exactly those columns unquantized.
TEST(Pipeline, KeepSalientChannelsInFullPrecision) {
  const LlamaModel fp = tiny_model(8);
  auto calib = random_windows(8, 32, 9);
  for (SalientBy by : {SalientBy::kActivation, SalientBy::kWeight, SalientBy::kRandom}) {
    LlamaModel m = tiny_model(8);
    PipelineOptions opt;
    opt.method = Method::kRtn;
    opt.quant.bits = 3;
    opt.quant.group_size = 32;
    opt.keep_fp_fraction = 0.05;  // 3 of 64 inputs, 5 of 96
    opt.keep_fp_by = by;
    opt.progress = false;
    auto rep = quantize_model(m, calib, opt);
    ASSERT_TRUE(rep) << rep.message();
    EXPECT_EQ(rep->calibration_tokens, by == SalientBy::kActivation ? 8 * 32 : 0);
    // Count the columns of layer 0's q_proj equal to FP in every row.
    const Tensor& Wq = m.weights().layers[0].wq;
    const Tensor& Fq = fp.weights().layers[0].wq;
    int64_t exact_cols = 0;
    std::vector<int64_t> kept;
    for (int64_t ch = 0; ch < 64; ++ch) {
      bool same = true;
      for (int64_t o = 0; o < Wq.shape()[0]; ++o) same &= Wq.f32()[o * 64 + ch] == Fq.f32()[o * 64 + ch];
      if (same) kept.push_back(ch);
    }
    exact_cols = int64_t(kept.size());
    EXPECT_EQ(exact_cols, 3) << salient_by_name(by);
    if (by == SalientBy::kActivation) {
      // Layer 0's q/k/v input is the normed embedding, whose channels 3, 17 and 40 are 8x larger.
      EXPECT_EQ(kept, (std::vector<int64_t>{3, 17, 40}));
    }
  }
}

TEST(Pipeline, GroupSizeNotDividingALayerNamesIt) {
  LlamaModel m = tiny_model(1);
  PipelineOptions opt;
  opt.method = Method::kRtn;
  opt.quant.group_size = 64;  // divides 64 but not the MLP's 96
  opt.progress = false;
  auto rep = quantize_model(m, {}, opt);
  ASSERT_FALSE(rep);
  EXPECT_NE(rep.message().find("model.layers.0.mlp.down_proj"), std::string::npos) << rep.message();
  EXPECT_NE(rep.message().find("96"), std::string::npos) << rep.message();
}

TEST(Pipeline, GptqWithoutCalibrationIsAnError) {
  LlamaModel m = tiny_model(1);
  PipelineOptions opt;
  opt.quant.group_size = 32;
  opt.progress = false;
  auto rep = quantize_model(m, {}, opt);
  ASSERT_FALSE(rep);
  EXPECT_NE(rep.message().find("calibration data is required"), std::string::npos) << rep.message();
}

TEST(Calibration, GeneratedFromTheModelIsSeededAndInVocabulary) {
  const LlamaModel m = tiny_model(4);
  auto a = generate_calibration(m, 3, 20, 11, false);
  auto b = generate_calibration(m, 3, 20, 11, false);
  auto c = generate_calibration(m, 3, 20, 12, false);
  ASSERT_TRUE(a && b && c) << a.message();
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  ASSERT_EQ(a->size(), 3u);
  for (const auto& s : *a) {
    ASSERT_EQ(s.size(), 20u);
    for (int32_t t : s) EXPECT_TRUE(t >= 0 && t < 64);
  }
}

TEST(Calibration, ReadsPlainTextAndJsonLines) {
  testing::TempDir d;
  std::ofstream(d.file("a.txt")) << "plain text\nsecond line\n";
  auto a = read_calibration_text(d.file("a.txt"));
  ASSERT_TRUE(a) << a.message();
  EXPECT_EQ(*a, "plain text\nsecond line\n");
  std::ofstream(d.file("b.jsonl")) << "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 2}\n";
  auto b = read_calibration_text(d.file("b.jsonl"));
  ASSERT_TRUE(b) << b.message();
  EXPECT_EQ(*b, "one\n\ntwo");
  std::ofstream(d.file("c.jsonl")) << "{\"text\": \"one\"}\n{\"txt\": 3}\n";
  auto c = read_calibration_text(d.file("c.jsonl"));
  ASSERT_FALSE(c);
  EXPECT_NE(c.message().find("c.jsonl:2"), std::string::npos) << c.message();
  std::ofstream(d.file("e.txt")) << "  \n\n";
  auto e = read_calibration_text(d.file("e.txt"));
  ASSERT_FALSE(e);
  EXPECT_NE(e.message().find("empty"), std::string::npos);
}

TEST(Calibration, SeededWindowsAreReproducibleAndShortTextIsAnError) {
  std::vector<int32_t> toks(1000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t(i);
  auto a = sample_calibration_windows(toks, 4, 100, 7, "x");
  auto b = sample_calibration_windows(toks, 4, 100, 7, "x");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(*a, *b);
  for (const auto& w : *a) {
    ASSERT_EQ(w.size(), 100u);
    for (size_t i = 1; i < w.size(); ++i) EXPECT_EQ(w[i], w[i - 1] + 1);  // contiguous windows
  }
  auto s = sample_calibration_windows(std::vector<int32_t>(50, 1), 4, 100, 7, "short.txt");
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("short.txt: calibration text has 50 tokens"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace qforge::quant
