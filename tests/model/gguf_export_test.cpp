#include "model/gguf_export.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "model/hf_export.h"
#include "model/layer_spec.h"
#include "model/loader.h"
#include "quant/pipeline.h"
#include "test_util.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using gguf::GgmlType;

std::string tokenizer_data(const std::string& name) {
  return testing::source_dir() + "/tests/data/tokenizer/" + name;
}

// A small random Llama: GQA (4 heads, 2 KV heads of 32) so the q/k permutations differ, hidden 128 and MLP
// 256 so group sizes 32..128 all divide. rms_norm_eps = 2^-17 is exact in the f32 GGUF key, so the reloaded
// config is identical.
LlamaModel tiny_model(uint64_t seed, int64_t vocab, bool tied) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = vocab;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = std::ldexp(1.0, -17);
  c.tie_word_embeddings = tied;
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

quant::QuantizedLinears rtn(LlamaModel& m, int64_t group, bool sym) {
  quant::PipelineOptions opt;
  opt.method = quant::Method::kRtn;
  opt.quant.bits = 4;
  opt.quant.group_size = group;
  opt.quant.sym = sym;
  opt.progress = false;
  quant::QuantizedLinears q;
  auto rep = quant::quantize_model(m, {}, opt, &q);
  EXPECT_TRUE(rep) << rep.message();
  EXPECT_EQ(q.layers.size(), size_t(m.config().num_hidden_layers));
  return q;
}

std::vector<float> logits_of(const LlamaModel& m, const std::vector<int32_t>& toks) {
  KVCache cache = m.make_cache(int64_t(toks.size()));
  auto h = m.forward_hidden(toks.data(), int64_t(toks.size()), cache);
  EXPECT_TRUE(h) << h.message();
  std::vector<float> out(toks.size() * size_t(m.config().vocab_size));
  m.logits(h->f32(), int64_t(toks.size()), out.data());
  return out;
}

std::vector<int32_t> some_tokens(int64_t vocab) {
  std::vector<int32_t> t;
  for (int i = 0; i < 24; ++i) t.push_back(int32_t((i * 37 + 5) % vocab));
  return t;
}

// max |a - b| / max |b|
double rel_max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  return d / s;
}

// With QFORGE_GGUF_EXPORT_DIR set, a test also leaves its GGUF and the in-memory model as a Hugging Face
// f32 directory there, for python/check_gguf_export.py (an independent reader: gguf-py).
void keep_for_python_check(const std::string& name, const std::string& gguf_path, const LlamaModel& m,
                           const Tokenizer& tok) {
  const char* dir = std::getenv("QFORGE_GGUF_EXPORT_DIR");
  if (!dir || !*dir) return;
  fs::create_directories(dir);
  fs::copy_file(gguf_path, fs::path(dir) / (name + ".gguf"), fs::copy_options::overwrite_existing);
  ASSERT_TRUE(save_hf_directory((fs::path(dir) / (name + "_hf")).string(), m.config(), m.weights(), tok,
                                HfExportOptions{}));
}

const char* kTexts[] = {"Hello world", "The quick brown fox, 12345 times!", "  leading spaces\nand lines\t",
                        "ünïcödé ✓ text"};

// Q4_0 of symmetric codes is exact: every reloaded tensor equals the in-memory quantized model bit for bit,
// and the tokenizer built from tokenizer.json encodes the same.
TEST(GgufExport, Q4_0SymmetricRoundTripIsExact) {
  auto tok = Tokenizer::from_tokenizer_json(tokenizer_data("llama2_bytefallback_tokenizer.json"));
  ASSERT_TRUE(tok) << tok.message();
  LlamaModel m = tiny_model(1, tok->vocab_size(), /*tied=*/true);
  quant::QuantizedLinears q = rtn(m, 32, /*sym=*/true);
  testing::TempDir d;
  const std::string path = d.file("q4_0.gguf");
  GgufExportOptions opt;
  opt.q4_type = GgmlType::kQ4_0;
  opt.embed_type = GgmlType::kF32;
  ASSERT_TRUE(save_gguf_checkpoint(path, m.config(), m.weights(), q, *tok, nullptr, opt));
  EXPECT_EQ(fs::directory_iterator(d.path())->path().filename(), "q4_0.gguf");  // no temporary left
  keep_for_python_check("q4_0", path, m, *tok);

  auto f = gguf::GgufFile::open(path);
  ASSERT_TRUE(f) << f.message();
  EXPECT_EQ(*f->get_string("general.architecture"), "llama");
  EXPECT_EQ(*f->get_uint("general.file_type"), 2u);
  EXPECT_EQ(*f->get_uint("llama.rope.dimension_count"), 32u);
  EXPECT_EQ(*f->get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->find_tensor("blk.1.ffn_down.weight")->type, GgmlType::kQ4_0);
  EXPECT_EQ(f->find_tensor("blk.1.ffn_down.weight")->ne, (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(f->find_tensor("token_embd.weight")->type, GgmlType::kF32);
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);  // tied

  auto back = load_model(path);
  ASSERT_TRUE(back) << back.message();
  const ModelConfig& c = back->model->config();
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rms_norm_eps, m.config().rms_norm_eps);
  EXPECT_TRUE(c.tie_word_embeddings);
  auto want = tensor_slots(m.config(), m.weights());
  auto got = tensor_slots(c, back->model->weights());
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(want[i].name, got[i].name);
    ASSERT_EQ(want[i].tensor->shape(), got[i].tensor->shape()) << want[i].name;
    EXPECT_EQ(0, std::memcmp(want[i].tensor->f32(), got[i].tensor->f32(), want[i].tensor->nbytes()))
        << want[i].name;
  }
  // Identical weights and config: the forward passes agree up to summation order.
  // kLogitRelTol: f32 reassociation over dot products of <= 256 terms (a W4 kernel may sum in another
  // order), ~1e-6 relative; far below what one wrong row or permutation would cause (O(1)).
  constexpr double kLogitRelTol = 1e-4;
  const auto toks = some_tokens(c.vocab_size);
  EXPECT_LE(rel_max_diff(logits_of(*back->model, toks), logits_of(m, toks)), kLogitRelTol);

  EXPECT_EQ(back->tokenizer.bos_id(), tok->bos_id());
  EXPECT_EQ(back->tokenizer.vocab_size(), tok->vocab_size());
  // The same tokenizer as the reference GGUF of this vocabulary (written by gguf-py's converter): same
  // tokens and types, and the same encodings through qforge's GGUF tokenizer reader.
  auto ref = gguf::GgufFile::open(tokenizer_data("llama2_bytefallback.gguf"));
  ASSERT_TRUE(ref) << ref.message();
  EXPECT_EQ(*f->get_string_array("tokenizer.ggml.tokens"), *ref->get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(*f->get_int_array("tokenizer.ggml.token_type"), *ref->get_int_array("tokenizer.ggml.token_type"));
  EXPECT_EQ(*f->get_bool("tokenizer.ggml.add_space_prefix"), true);
  auto ref_tok = Tokenizer::from_gguf(*ref);
  ASSERT_TRUE(ref_tok) << ref_tok.message();
  for (const char* s : kTexts) EXPECT_EQ(back->tokenizer.encode(s), ref_tok->encode(s)) << s;
  // And the same as the tokenizer.json it came from, for text that does not start with a space: for
  // leading spaces, qforge's GGUF reader (a Metaspace that prepends only when the text does not already
  // start with "▁") and Llama-2's tokenizer.json (a normalizer that always prepends; llama.cpp does too)
  // differ, whichever way the GGUF was written.
  for (const char* s : kTexts) {
    if (s[0] != ' ') {
      EXPECT_EQ(back->tokenizer.encode(s), tok->encode(s)) << s;
    }
  }
}

// Q4_1 of asymmetric codes, group 128 (four blocks of 32 share a group), F16 embedding and output, tokenizer
// copied from a source GGUF: every weight within the bound of the fp16 rounding of m.
TEST(GgufExport, Q4_1AsymmetricGroup128IsWithinTheOffsetRounding) {
  const std::string src_path = tokenizer_data("llama2_bytefallback.gguf");
  auto src = gguf::GgufFile::open(src_path);
  ASSERT_TRUE(src) << src.message();
  auto tok = Tokenizer::from_gguf(*src);
  ASSERT_TRUE(tok) << tok.message();
  LlamaModel m = tiny_model(2, tok->vocab_size(), /*tied=*/false);
  quant::QuantizedLinears q = rtn(m, 128, /*sym=*/false);
  testing::TempDir d;
  const std::string path = d.file("q4_1.gguf");
  GgufExportOptions opt;  // Q4_1, F16
  ASSERT_TRUE(save_gguf_checkpoint(path, m.config(), m.weights(), q, *tok, &*src, opt));
  keep_for_python_check("q4_1", path, m, *tok);

  auto f = gguf::GgufFile::open(path);
  ASSERT_TRUE(f) << f.message();
  EXPECT_EQ(*f->get_uint("general.file_type"), 3u);
  EXPECT_EQ(f->find_tensor("blk.0.attn_k.weight")->type, GgmlType::kQ4_1);
  EXPECT_EQ(f->find_tensor("output.weight")->type, GgmlType::kF16);
  // Every tokenizer key copied with its type and value.
  for (const auto& [k, v] : src->metadata()) {
    if (!k.starts_with("tokenizer.")) continue;
    const gguf::Value* got = f->find(k);
    ASSERT_NE(got, nullptr) << k;
    EXPECT_EQ(got->type, v.type) << k;
    EXPECT_EQ(got->arr.size(), v.arr.size()) << k;
    EXPECT_EQ(got->s, v.s) << k;
  }
  EXPECT_EQ(*f->get_string_array("tokenizer.ggml.tokens"), *src->get_string_array("tokenizer.ggml.tokens"));

  auto back = load_model(path);
  ASSERT_TRUE(back) << back.message();
  auto want = tensor_slots(m.config(), m.weights());
  auto got = tensor_slots(back->model->config(), back->model->weights());
  ASSERT_EQ(want.size(), got.size());
  double max_err = 0, max_rel_m = 0;
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < kLlamaLinears.size(); ++i) {
      const quant::QuantizedLinear& ql = q.layers[size_t(l)][i];
      const Tensor& w = m.weights().layers[size_t(l)].*kLlamaLinears[i].weight;
      const Tensor& g = back->model->weights().layers[size_t(l)].*kLlamaLinears[i].weight;
      ASSERT_EQ(w.shape(), g.shape());
      const int64_t n_groups = ql.scales.shape()[1];
      for (int64_t r = 0; r < ql.out; ++r)
        for (int64_t k = 0; k < ql.in; ++k) {
          const int64_t gi = r * n_groups + k / 128;
          const double zs = double(ql.zeros.f32()[gi]) * double(ql.scales.f32()[gi]);
          const double result = g.f32()[r * ql.in + k];
          // fp16 rounding of m = -z s (half ulp: 2^-11 |m|, 2^-25 if subnormal) + f32 rounding of q d + m.
          const double bound = std::max(std::ldexp(std::fabs(zs), -11), std::ldexp(1.0, -25)) +
                               std::ldexp(std::fabs(result), -24);
          const double err = std::fabs(result - double(w.f32()[r * ql.in + k]));
          ASSERT_LE(err, bound) << "model.layers." << l << "." << kLlamaLinears[i].name << " [" << r << ", "
                                << k << "]";
          max_err = std::max(max_err, err);
          if (zs > 0) max_rel_m = std::max(max_rel_m, err / zs);
        }
    }
  std::printf(
      "Q4_1 export: max |w_gguf - w_dequant| %.3g, max relative to |zero * scale| %.3g (2^-11 = %.3g)\n",
      max_err, max_rel_m, std::ldexp(1.0, -11));
  EXPECT_GT(max_err, 0.0);  // asymmetric zeros: m is rounded somewhere (the bound is not vacuous)
  for (size_t i = 0; i < want.size(); ++i) {
    const std::string& n = want[i].name;
    const Tensor& a = *want[i].tensor;
    const Tensor& b = *got[i].tensor;
    if (n.find("norm") != std::string::npos) {
      EXPECT_EQ(0, std::memcmp(a.f32(), b.f32(), a.nbytes())) << n;
    } else if (n == "model.embed_tokens.weight" || n == "lm_head.weight") {
      for (int64_t k = 0; k < a.numel(); ++k)
        ASSERT_EQ(b.f32()[k], fp16_to_f32(f32_to_fp16(a.f32()[k]))) << n << " element " << k;
    }
  }
  // The model the GGUF spec says the file holds, built here from the codes: linears q * fp16(s) +
  // fp16(-z * s) (ggml's dequantize_row_q4_1 formula), F16-rounded matrices, norms as they are. The reloaded
  // model must be exactly it.
  ModelWeights spec_w;
  for (TensorSlot& s : tensor_slots(m.config(), spec_w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    for (const TensorSlot& src : want)
      if (src.name == s.name) std::memcpy(s.tensor->f32(), src.tensor->f32(), src.tensor->nbytes());
    if (s.name == "model.embed_tokens.weight" || s.name == "lm_head.weight")
      for (int64_t k = 0; k < s.tensor->numel(); ++k)
        s.tensor->f32()[k] = fp16_to_f32(f32_to_fp16(s.tensor->f32()[k]));
  }
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < kLlamaLinears.size(); ++i) {
      const quant::QuantizedLinear& ql = q.layers[size_t(l)][i];
      Tensor& w = spec_w.layers[size_t(l)].*kLlamaLinears[i].weight;
      const int64_t n_groups = ql.scales.shape()[1];
      for (int64_t r = 0; r < ql.out; ++r)
        for (int64_t k = 0; k < ql.in; ++k) {
          const float sc = ql.scales.f32()[r * n_groups + k / 128],
                      z = ql.zeros.f32()[r * n_groups + k / 128];
          w.f32()[r * ql.in + k] =
              float(ql.qweight[size_t(r * ql.in + k)]) * sc + fp16_to_f32(f32_to_fp16(-z * sc));
        }
    }
  for (const TensorSlot& s : tensor_slots(m.config(), spec_w)) {
    const Tensor* b = nullptr;
    for (const TensorSlot& g : got)
      if (g.name == s.name) b = g.tensor;
    ASSERT_NE(b, nullptr) << s.name;
    EXPECT_EQ(0, std::memcmp(s.tensor->f32(), b->f32(), s.tensor->nbytes())) << s.name;
  }
  LlamaModel spec_model(m.config(), std::move(spec_w));
  const auto toks = some_tokens(m.config().vocab_size);
  const std::vector<float> got_logits = logits_of(*back->model, toks);
  // kLogitRelTol: the same weights, so only f32 summation order may differ (see the Q4_0 test).
  constexpr double kLogitRelTol = 1e-4;
  EXPECT_LE(rel_max_diff(got_logits, logits_of(spec_model, toks)), kLogitRelTol);
  // Against the in-memory quantized model the logits move by the rounding of m and of the F16 matrices,
  // both <= 2^-11 relative per weight; an untrained random model amplifies that through its layers (6e-3
  // measured). kQ4_1LogitSanity only catches gross errors (a wrong row, sign or permutation gives O(1)).
  constexpr double kQ4_1LogitSanity = 5e-2;
  const double rel = rel_max_diff(got_logits, logits_of(m, toks));
  std::printf("Q4_1 export: logits max |diff| / max |logit| vs the in-memory quantized model = %.3g\n", rel);
  EXPECT_LE(rel, kQ4_1LogitSanity);
  for (const char* s : kTexts) EXPECT_EQ(back->tokenizer.encode(s), tok->encode(s)) << s;
}

TEST(GgufExport, InputsGgufCannotHoldAreClearErrors) {
  auto tok = Tokenizer::from_tokenizer_json(tokenizer_data("llama2_bytefallback_tokenizer.json"));
  ASSERT_TRUE(tok) << tok.message();
  LlamaModel m = tiny_model(3, tok->vocab_size(), true);
  testing::TempDir d;
  const std::string path = d.file("bad.gguf");
  GgufExportOptions q40;
  q40.q4_type = GgmlType::kQ4_0;

  // Asymmetric zeros cannot be Q4_0 (but are fine as Q4_1).
  {
    LlamaModel mm = tiny_model(3, tok->vocab_size(), true);
    quant::QuantizedLinears q = rtn(mm, 64, false);
    Status s = save_gguf_checkpoint(path, mm.config(), mm.weights(), q, *tok, nullptr, q40);
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("zero point"), std::string::npos) << s.message();
    EXPECT_TRUE(save_gguf_checkpoint(path, mm.config(), mm.weights(), q, *tok, nullptr, GgufExportOptions{}));
    fs::remove(path);
  }
  quant::QuantizedLinears q = rtn(m, 32, true);
  // Act-order: a permuted g_idx has no block layout.
  {
    quant::QuantizedLinears perm = rtn(m, 32, true);
    auto& gi = perm.layers[1][6].g_idx;
    std::swap(gi[0], gi[40]);
    Status s = save_gguf_checkpoint(path, m.config(), m.weights(), perm, *tok, nullptr, q40);
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("model.layers.1.mlp.down_proj"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("act-order"), std::string::npos) << s.message();
  }
  // A group smaller than a block.
  {
    quant::QuantizedLinears small = rtn(m, 32, true);
    small.layers[0][4].cfg.group_size = 16;
    Status s = save_gguf_checkpoint(path, m.config(), m.weights(), small, *tok, nullptr, q40);
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("model.layers.0.mlp.gate_proj"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("group size 16"), std::string::npos) << s.message();
  }
  // Quantized linears of the wrong model.
  {
    quant::QuantizedLinears one;
    one.layers.resize(1);
    EXPECT_FALSE(save_gguf_checkpoint(path, m.config(), m.weights(), one, *tok, nullptr, q40));
  }
  // A tokenizer larger than the embedding.
  {
    LlamaModel small_vocab = tiny_model(4, 100, true);
    quant::QuantizedLinears qs = rtn(small_vocab, 32, true);
    Status s =
        save_gguf_checkpoint(path, small_vocab.config(), small_vocab.weights(), qs, *tok, nullptr, q40);
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("vocabulary of 100"), std::string::npos) << s.message();
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(d.path()));
}

// A byte-level (GPT-2 style) tokenizer read from tokenizer.json becomes tokenizer.ggml.model gpt2 with the
// pre-tokenizer named, and reloads encoding the same; the vocabulary is padded to the embedding.
TEST(GgufExport, ByteLevelTokenizerFromJsonReloads) {
  const std::string model = testing::default_model_path();
  QF_REQUIRE_MODEL(model);
  auto src = gguf::GgufFile::open(model);
  ASSERT_TRUE(src) << src.message();
  auto gguf_tok = Tokenizer::from_gguf(*src);
  ASSERT_TRUE(gguf_tok) << gguf_tok.message();
  // Through tokenizer.json, as a model loaded from a Hugging Face directory would have it.
  testing::TempDir d;
  {
    const std::string j = gguf_tok->to_tokenizer_json();
    ASSERT_TRUE(write_file_atomic(d.file("tokenizer.json"), j.data(), j.size()));
  }
  auto tok = Tokenizer::from_tokenizer_json(d.file("tokenizer.json"));
  ASSERT_TRUE(tok) << tok.message();
  const int64_t vocab = tok->vocab_size() + 8;  // padded like a model whose embedding is rounded up
  ModelConfig c = tiny_model(5, 64, true).config();
  c.vocab_size = vocab;
  c.num_hidden_layers = 1;
  ModelWeights w;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (TensorSlot& s : tensor_slots(c, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = nd(rng);
  }
  LlamaModel m(c, std::move(w));
  quant::QuantizedLinears q = rtn(m, 32, false);
  const std::string path = d.file("bytelevel.gguf");
  ASSERT_TRUE(save_gguf_checkpoint(path, m.config(), m.weights(), q, *tok, nullptr, GgufExportOptions{}));
  auto f = gguf::GgufFile::open(path);
  ASSERT_TRUE(f) << f.message();
  EXPECT_EQ(*f->get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*f->get_string("tokenizer.ggml.pre"), "smollm");
  auto toks = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(toks);
  ASSERT_EQ(int64_t(toks->size()), vocab);
  EXPECT_EQ(toks->back(), fmt::format("[PAD{}]", vocab - 1));
  EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type")->back(), 5);  // UNUSED
  auto back = load_model(path);
  ASSERT_TRUE(back) << back.message();
  for (const char* s : kTexts) EXPECT_EQ(back->tokenizer.encode(s), tok->encode(s)) << s;
  EXPECT_EQ(back->tokenizer.encode("<|im_start|>user\nhi<|im_end|>"),
            tok->encode("<|im_start|>user\nhi<|im_end|>"));
  EXPECT_EQ(back->tokenizer.eos_id(), tok->eos_id());
}

}  // namespace
}  // namespace qforge
