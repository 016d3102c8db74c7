// Streaming decoder layers (LoadOptions::stream_layers, quantize_model's LayerStream): only the non-layer
// tensors are read at load, load(l) gives the same tensors as an eager load, release(l) frees them, and a
// streamed quantization run equals the eager one bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "formats/safetensors.h"
#include "model/hf_export.h"
#include "model/layer_spec.h"
#include "model/loader.h"
#include "model/tokenizer.h"
#include "quant/pipeline.h"
#include "test_util.h"
#include "tiny_model.h"

namespace qforge {
namespace {

bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.numel() == b.numel() &&
         std::memcmp(a.data<void>(), b.data<void>(), size_t(a.numel()) * 4) == 0;
}

// A tiny model written as an f32 Hugging Face directory (so the streamed and eager loads see the same bytes).
std::string write_tiny(const testing::TempDir& d, const LlamaModel& m) {
  auto tok = Tokenizer::from_tokenizer_json(testing::source_dir() +
                                            "/tests/data/tokenizer/llama2_bytefallback_tokenizer.json");
  EXPECT_TRUE(tok.has_value()) << tok.message();
  const std::string dir = d.file("tiny");
  HfExportOptions eo;
  eo.dtype = DType::kF32;
  const Status s = save_hf_directory(dir, m.config(), m.weights(), *tok, eo);
  EXPECT_TRUE(s) << s.message();
  return dir;
}

testing::TinyLlamaShape shape() {
  testing::TinyLlamaShape s;
  s.layers = 3;
  s.vocab = 300;  // the byte-fallback tokenizer's ids fit
  return s;
}

TEST(LayerStream, LoaderReadsLayersOnDemand) {
  testing::TempDir d;
  const LlamaModel src = testing::tiny_llama(7, shape());
  const std::string dir = write_tiny(d, src);

  auto eager = load_model(dir);
  ASSERT_TRUE(eager.has_value()) << eager.message();
  LoadOptions lo;
  lo.stream_layers = true;
  auto lazy = load_model(dir, lo);
  ASSERT_TRUE(lazy.has_value()) << lazy.message();
  ASSERT_TRUE(lazy->layers.load && lazy->layers.release);
  EXPECT_FALSE(eager->layers.load);  // only with stream_layers

  ModelWeights& lw = lazy->model->mutable_weights();
  const ModelWeights& ew = eager->model->weights();
  EXPECT_TRUE(same_tensor(lw.embed, ew.embed));
  EXPECT_TRUE(same_tensor(lw.final_norm, ew.final_norm));
  for (const auto& layer : lw.layers) EXPECT_TRUE(layer.wq.empty() && layer.w_down.empty() && layer.attn_norm.empty());

  for (int l = 0; l < 3; ++l) {
    ASSERT_TRUE(lazy->layers.load(l));
    for (const LinearSpec& s : kLlamaLinears)
      EXPECT_TRUE(same_tensor(lw.layers[size_t(l)].*s.weight, ew.layers[size_t(l)].*s.weight)) << l << " " << s.name;
    EXPECT_TRUE(same_tensor(lw.layers[size_t(l)].attn_norm, ew.layers[size_t(l)].attn_norm));
    EXPECT_TRUE(same_tensor(lw.layers[size_t(l)].mlp_norm, ew.layers[size_t(l)].mlp_norm));
    lazy->layers.release(l);
    EXPECT_TRUE(lw.layers[size_t(l)].wq.empty() && lw.layers[size_t(l)].mlp_norm.empty()) << l;
  }
}

TEST(LayerStream, StreamedLoadStillChecksEveryTensorUpFront) {
  testing::TempDir d;
  LlamaModel m = testing::tiny_llama(8, shape());
  const std::string dir = write_tiny(d, m);
  LoadOptions lo;
  lo.stream_layers = true;
  ASSERT_TRUE(load_model(dir, lo).has_value());
  // The last layer's down_proj with the wrong shape: refused at load, not when the pipeline reaches it.
  Tensor bad(DType::kF32, {m.config().hidden_size, 8});
  std::memset(bad.data<void>(), 0, size_t(bad.numel()) * 4);
  safetensors::Writer w;
  for (TensorSlot& s : tensor_slots(m.config(), m.mutable_weights()))
    ASSERT_TRUE(w.add(s.name, s.name == "model.layers.2.mlp.down_proj.weight" ? bad.view() : s.tensor->view()));
  ASSERT_TRUE(w.write(dir + "/model.safetensors"));
  auto r = load_model(dir, lo);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.message().find("model.layers.2.mlp.down_proj.weight"), std::string::npos) << r.message();
}

// GPTQ through the pipeline: streaming the layers (load before, release after each is saved) gives the same
// weights, quantized linears and report as holding the whole model.
TEST(LayerStream, StreamedQuantizationEqualsEager) {
  testing::TempDir d;
  const std::string dir = write_tiny(d, testing::tiny_llama(9, shape()));
  const auto calib = testing::tiny_windows(4, 16, 300, 3);
  quant::PipelineOptions opt;
  opt.method = quant::Method::kAwqGptq;
  opt.quant.group_size = 32;
  opt.progress = false;

  auto eager = load_model(dir);
  ASSERT_TRUE(eager.has_value());
  quant::QuantizedLinears qe;
  auto rep_e = quant::quantize_model(*eager->model, calib, opt, &qe);
  ASSERT_TRUE(rep_e.has_value()) << rep_e.message();

  LoadOptions lo;
  lo.stream_layers = true;
  auto lazy = load_model(dir, lo);
  ASSERT_TRUE(lazy.has_value());
  quant::QuantizedLinears qs;
  int loaded = 0, max_loaded = 0;
  std::vector<LayerWeights> saved(3);
  std::vector<std::vector<quant::QuantizedLinear>> saved_q(3);
  LayerStream ls;
  ls.load = [&](int l) {
    max_loaded = std::max(max_loaded, ++loaded);
    return lazy->layers.load(l);
  };
  ls.release = [&](int l) {
    --loaded;
    lazy->layers.release(l);
    qs.layers[size_t(l)].clear();
  };
  auto on_done = [&](int l, const quant::PipelineReport&, const Tensor&) {
    saved[size_t(l)] = std::move(lazy->model->mutable_weights().layers[size_t(l)]);
    saved_q[size_t(l)] = std::move(qs.layers[size_t(l)]);
    return Status::ok();
  };
  auto rep_s = quant::quantize_model(*lazy->model, calib, opt, &qs, nullptr, on_done, &ls);
  ASSERT_TRUE(rep_s.has_value()) << rep_s.message();
  EXPECT_EQ(max_loaded, 1);
  EXPECT_EQ(loaded, 0);
  for (const auto& layer : lazy->model->weights().layers) EXPECT_TRUE(layer.wq.empty());

  ASSERT_EQ(rep_s->linears.size(), rep_e->linears.size());
  for (size_t i = 0; i < rep_e->linears.size(); ++i)
    EXPECT_EQ(rep_s->linears[i].output_error, rep_e->linears[i].output_error) << rep_e->linears[i].name;
  for (int l = 0; l < 3; ++l) {
    const LayerWeights& e = eager->model->weights().layers[size_t(l)];
    for (const LinearSpec& s : kLlamaLinears) EXPECT_TRUE(same_tensor(saved[size_t(l)].*s.weight, e.*s.weight)) << l;
    EXPECT_TRUE(same_tensor(saved[size_t(l)].attn_norm, e.attn_norm)) << l;  // AWQ folds
    EXPECT_TRUE(same_tensor(saved[size_t(l)].mlp_norm, e.mlp_norm)) << l;
    for (size_t i = 0; i < kLlamaLinears.size(); ++i) {
      EXPECT_EQ(saved_q[size_t(l)][i].qweight, qe.layers[size_t(l)][i].qweight) << l << " " << i;
      EXPECT_TRUE(same_tensor(saved_q[size_t(l)][i].scales, qe.layers[size_t(l)][i].scales)) << l << " " << i;
    }
  }
}

}  // namespace
}  // namespace qforge
