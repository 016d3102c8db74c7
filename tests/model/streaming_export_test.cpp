// Streamed checkpoint export: a LayerStream brings one decoder layer at a time into otherwise empty weights
// (as the loader and the quantize run's state directory will), and the writers must give the same bytes as
// the in-memory export for every format, call load/release as the stream's contract says (each layer once, in
// increasing order, one loaded at a time), and leave nothing behind when a load fails.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "model/gguf_export.h"
#include "model/hf_export.h"
#include "model/layer_stream.h"
#include "quant/pipeline.h"
#include "test_util.h"
#include "tiny_model.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using gguf::GgmlType;

Tokenizer test_tokenizer() {
  auto t = Tokenizer::from_tokenizer_json(testing::source_dir() +
                                          "/tests/data/tokenizer/llama2_bytefallback_tokenizer.json");
  EXPECT_TRUE(t) << t.message();
  return std::move(*t);
}

// 11 layers, so "model.layers.10" sorts before "model.layers.2" in the safetensors layout and the files'
// data order differs from the layer order the stream must keep; untied lm_head and q/k/v biases so every
// kind of tensor is streamed. Hidden 64 and MLP 128: group sizes 32 and 64 divide every linear.
LlamaModel streaming_model(uint64_t seed, int64_t vocab) {
  testing::TinyLlamaShape shape;
  shape.layers = 11;
  shape.tied = false;
  shape.vocab = vocab;
  ModelConfig c = testing::tiny_llama_config(shape);
  c.attention_bias = true;
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

Tensor clone(const Tensor& t) {
  if (t.empty()) return Tensor();
  Tensor c(t.dtype(), t.shape());
  std::memcpy(c.data<void>(), t.data<void>(), t.nbytes());
  return c;
}

LayerWeights clone(const LayerWeights& l) {
  LayerWeights c;
  for (Tensor LayerWeights::*m :
       {&LayerWeights::attn_norm, &LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo,
        &LayerWeights::bq, &LayerWeights::bk, &LayerWeights::bv, &LayerWeights::mlp_norm,
        &LayerWeights::w_gate, &LayerWeights::w_up, &LayerWeights::w_down})
    c.*m = clone(l.*m);
  return c;
}

std::vector<quant::QuantizedLinear> clone(const std::vector<quant::QuantizedLinear>& layer) {
  std::vector<quant::QuantizedLinear> out;
  for (const quant::QuantizedLinear& q : layer) {
    quant::QuantizedLinear c;
    c.out = q.out;
    c.in = q.in;
    c.cfg = q.cfg;
    c.qweight = q.qweight;
    c.scales = clone(q.scales);
    c.zeros = clone(q.zeros);
    c.g_idx = q.g_idx;
    out.push_back(std::move(c));
  }
  return out;
}

bool layer_loaded(const LayerWeights& l) {
  return !l.attn_norm.empty() || !l.wq.empty() || !l.w_down.empty();
}

// A model whose decoder layers live in a saved copy ("on disk"): `weights` / `linears` hold the embedding,
// final norm and lm_head always, and layer l only between load(l) and release(l). The callbacks check the
// stream's contract as they are called; `events` records them.
class StreamedModel {
 public:
  StreamedModel(const LlamaModel& m, const quant::QuantizedLinears* q, int fail_at = -1) : fail_at_(fail_at) {
    const ModelWeights& src = m.weights();
    weights.embed = clone(src.embed);
    weights.final_norm = clone(src.final_norm);
    weights.lm_head = clone(src.lm_head);
    weights.layers.resize(src.layers.size());
    for (const LayerWeights& l : src.layers) saved_.push_back(clone(l));
    if (q) {
      for (const auto& layer : q->layers) saved_q_.push_back(clone(layer));
      linears.layers.resize(q->layers.size());
    }
    stream.load = [this](int l) { return load(l); };
    stream.release = [this](int l) { release(l); };
  }
  StreamedModel(const StreamedModel&) = delete;
  StreamedModel& operator=(const StreamedModel&) = delete;

  ModelWeights weights;
  quant::QuantizedLinears linears;
  LayerStream stream;
  std::vector<std::string> events;
  int loaded = -1;

  // load 0, release 0, ..., load n-1, release n-1.
  static std::vector<std::string> in_order(int n) {
    std::vector<std::string> e;
    for (int l = 0; l < n; ++l) {
      e.push_back(fmt::format("load {}", l));
      e.push_back(fmt::format("release {}", l));
    }
    return e;
  }

 private:
  Status load(int l) {
    events.push_back(fmt::format("load {}", l));
    EXPECT_EQ(loaded, -1) << "load(" << l << ") while layer " << loaded << " is still loaded";
    EXPECT_EQ(l, next_) << "layers must be loaded in increasing order, each once";
    for (size_t k = 0; k < weights.layers.size(); ++k)
      EXPECT_FALSE(layer_loaded(weights.layers[k])) << "layer " << k << " holds data at load(" << l << ")";
    next_ = l + 1;
    if (l == fail_at_) return error("layer file {} is unreadable", l);
    EXPECT_GE(l, 0);
    EXPECT_LT(size_t(l), saved_.size());
    weights.layers[size_t(l)] = clone(saved_[size_t(l)]);
    if (!saved_q_.empty()) linears.layers[size_t(l)] = clone(saved_q_[size_t(l)]);
    loaded = l;
    return Status::ok();
  }
  void release(int l) {
    events.push_back(fmt::format("release {}", l));
    EXPECT_EQ(l, loaded) << "release(" << l << ") of a layer that is not the one loaded";
    weights.layers[size_t(l)] = LayerWeights{};
    if (!linears.layers.empty()) linears.layers[size_t(l)].clear();
    loaded = -1;
  }

  std::vector<LayerWeights> saved_;
  std::vector<std::vector<quant::QuantizedLinear>> saved_q_;
  int fail_at_;
  int next_ = 0;
};

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> list_dir(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Same file names, same bytes.
void expect_same_directory(const fs::path& a, const fs::path& b) {
  const auto names = list_dir(a);
  ASSERT_EQ(names, list_dir(b));
  for (const std::string& n : names) {
    const std::string x = read_bytes(a / n), y = read_bytes(b / n);
    EXPECT_EQ(x.size(), y.size()) << n;
    EXPECT_TRUE(x == y) << n << " differs";
  }
}

struct HfCase {
  const char* label;
  DType dtype;
  bool packed;
  formats::PackedFormat format;
  uint64_t max_shard_bytes;
};

TEST(StreamingExport, HfDirectoryIsByteIdenticalToTheInMemoryExport) {
  const Tokenizer tok = test_tokenizer();
  LlamaModel m = streaming_model(11, tok.vocab_size());
  quant::QuantizedLinears q = rtn(m, 32, /*sym=*/false);
  const uint64_t kBig = 4ull << 30, kSmall = 40'000;  // kSmall: a dozen shards, layers split across them
  const std::vector<HfCase> cases = {
      {"f32", DType::kF32, false, {}, kBig},
      {"f16", DType::kF16, false, {}, kSmall},
      {"bf16", DType::kBF16, false, {}, kBig},
      {"awq", DType::kF16, true, formats::PackedFormat::kAwqGemm, kBig},
      {"gptq", DType::kF16, true, formats::PackedFormat::kGptqV1, kSmall},
      {"gptq_v2", DType::kBF16, true, formats::PackedFormat::kGptqV2, kBig},
  };
  for (const HfCase& c : cases) {
    SCOPED_TRACE(c.label);
    testing::TempDir d;
    HfExportOptions opt;
    opt.dtype = c.dtype;
    opt.max_shard_bytes = c.max_shard_bytes;
    opt.extra_file_name = "quantization_report.json";
    opt.extra_file_text = "{}\n";
    if (c.packed) {
      opt.quantized = &q;
      opt.quantization.format = c.format;
      opt.quantization.group_size = 32;
    }
    const std::string eager = d.file("eager"), streamed = d.file("streamed");
    Status s = save_hf_directory(eager, m.config(), m.weights(), tok, opt);
    ASSERT_TRUE(s) << s.message();

    StreamedModel sm(m, c.packed ? &q : nullptr);
    HfExportOptions sopt = opt;
    sopt.layers = &sm.stream;
    if (c.packed) sopt.quantized = &sm.linears;
    s = save_hf_directory(streamed, m.config(), sm.weights, tok, sopt);
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(sm.events, StreamedModel::in_order(int(m.config().num_hidden_layers)));
    EXPECT_EQ(sm.loaded, -1);
    EXPECT_EQ(fs::exists(fs::path(streamed) / "model.safetensors.index.json"), c.max_shard_bytes == kSmall);
    expect_same_directory(eager, streamed);
    EXPECT_EQ(list_dir(d.path()), (std::vector<std::string>{"eager", "streamed"}));  // no temporaries
  }
}

TEST(StreamingExport, GgufIsByteIdenticalToTheInMemoryExport) {
  const Tokenizer tok = test_tokenizer();
  LlamaModel m = streaming_model(12, tok.vocab_size());
  struct Case {
    const char* label;
    GgmlType type;
    int64_t group;
    bool sym;
  };
  for (const Case& c : {Case{"q4_0", GgmlType::kQ4_0, 32, true}, Case{"q4_1", GgmlType::kQ4_1, 64, false}}) {
    SCOPED_TRACE(c.label);
    quant::QuantizedLinears q = rtn(m, c.group, c.sym);
    testing::TempDir d;
    GgufExportOptions opt;
    opt.q4_type = c.type;
    const std::string eager = d.file("eager.gguf"), streamed = d.file("streamed.gguf");
    Status s = save_gguf_checkpoint(eager, m.config(), m.weights(), q, tok, nullptr, opt);
    ASSERT_TRUE(s) << s.message();

    StreamedModel sm(m, &q);
    GgufExportOptions sopt = opt;
    sopt.layers = &sm.stream;
    s = save_gguf_checkpoint(streamed, m.config(), sm.weights, sm.linears, tok, nullptr, sopt);
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(sm.events, StreamedModel::in_order(int(m.config().num_hidden_layers)));
    EXPECT_EQ(sm.loaded, -1);
    const std::string x = read_bytes(eager), y = read_bytes(streamed);
    EXPECT_GT(x.size(), 0u);
    EXPECT_TRUE(x == y) << "streamed GGUF differs (" << y.size() << " bytes vs " << x.size() << ")";
    EXPECT_EQ(list_dir(d.path()), (std::vector<std::string>{"eager.gguf", "streamed.gguf"}));
  }
}

// load(2) fails: the export fails with load's message, layers 0 and 1 went through load and release, nothing
// after layer 2 was asked for, and neither the output nor a temporary is left.
TEST(StreamingExport, AFailedLoadLeavesNothingBehind) {
  const Tokenizer tok = test_tokenizer();
  LlamaModel m = streaming_model(13, tok.vocab_size());
  quant::QuantizedLinears q = rtn(m, 32, /*sym=*/true);
  const std::vector<std::string> expect_events = {"load 0", "release 0", "load 1", "release 1", "load 2"};
  auto expect_failed = [&](const Status& s, const StreamedModel& sm, const testing::TempDir& d) {
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("layer file 2 is unreadable"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("model.layers.2"), std::string::npos) << s.message();
    EXPECT_EQ(sm.events, expect_events);
    EXPECT_EQ(sm.loaded, -1);
    for (const auto& e : fs::directory_iterator(d.path())) ADD_FAILURE() << "left behind: " << e.path();
  };
  for (const bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "hf gptq" : "hf f16");
    testing::TempDir d;
    StreamedModel sm(m, &q, /*fail_at=*/2);
    HfExportOptions opt;
    opt.dtype = DType::kF16;
    opt.max_shard_bytes = 40'000;
    opt.layers = &sm.stream;
    if (packed) {
      opt.quantized = &sm.linears;
      opt.quantization.format = formats::PackedFormat::kGptqV1;
      opt.quantization.group_size = 32;
    }
    expect_failed(save_hf_directory(d.file("out"), m.config(), sm.weights, tok, opt), sm, d);
  }
  {
    SCOPED_TRACE("gguf");
    testing::TempDir d;
    StreamedModel sm(m, &q, /*fail_at=*/2);
    GgufExportOptions opt;
    opt.q4_type = GgmlType::kQ4_0;
    opt.layers = &sm.stream;
    expect_failed(
        save_gguf_checkpoint(d.file("out.gguf"), m.config(), sm.weights, sm.linears, tok, nullptr, opt), sm,
        d);
  }
}

// What the header is planned from must agree with what the stream then delivers: a linear quantized with
// another group size than the checkpoint's quantization_config is an error naming it, not a wrong file.
TEST(StreamingExport, LayerDataThatContradictsThePlanIsAnError) {
  const Tokenizer tok = test_tokenizer();
  LlamaModel m = streaming_model(14, tok.vocab_size());
  quant::QuantizedLinears q = rtn(m, 64, /*sym=*/false);
  testing::TempDir d;
  StreamedModel sm(m, &q);
  HfExportOptions opt;
  opt.dtype = DType::kF16;
  opt.layers = &sm.stream;
  opt.quantized = &sm.linears;
  opt.quantization.format = formats::PackedFormat::kAwqGemm;
  opt.quantization.group_size = 32;  // the codes have groups of 64
  Status s = save_hf_directory(d.file("out"), m.config(), sm.weights, tok, opt);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("group size"), std::string::npos) << s.message();
  EXPECT_EQ(sm.loaded, -1);
  for (const auto& e : fs::directory_iterator(d.path())) ADD_FAILURE() << "left behind: " << e.path();
}

}  // namespace
}  // namespace qforge
