// Packed 4-bit checkpoints end to end: quantize -> export (AutoAWQ GEMM, GPTQ v1/v2) -> load -> run through the
// int4 kernels, against the in-memory quantized model; loading checkpoints made from the published layouts
// (tests/data/packed); and malformed checkpoints.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/hf_export.h"
#include "model/layer_spec.h"
#include "model/loader.h"
#include "quant/pipeline.h"
#include "test_util.h"
#include "tiny_model.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

Tokenizer test_tokenizer() {
  auto t = Tokenizer::from_tokenizer_json(testing::source_dir() + "/tests/data/tokenizer/llama2_bytefallback_tokenizer.json");
  EXPECT_TRUE(t) << t.message();
  return std::move(*t);
}

// The non-quantized tensors as the checkpoint stores them (fp16), so the only difference left between the
// in-memory model and the loaded one is the kernels' arithmetic.
void round_dense_to_fp16(const ModelConfig& c, ModelWeights& w) {
  for (TensorSlot& s : tensor_slots(c, w)) {
    if (s.packed) continue;
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = fp16_to_f32(f32_to_fp16(s.tensor->f32()[i]));
  }
}

std::vector<float> run_logits(const LlamaModel& m, const std::vector<int32_t>& ids) {
  KVCache kv = m.make_cache(int64_t(ids.size()));
  auto h = m.forward_hidden(ids.data(), int64_t(ids.size()), kv);
  EXPECT_TRUE(h) << h.message();
  std::vector<float> logits(ids.size() * size_t(m.config().vocab_size));
  m.logits(h->f32(), int64_t(ids.size()), logits.data());
  return logits;
}

// |a - b| <= 2 * L * K * eps * max|a|: each of the 2L linear stages of width <= K may reorder an f32 sum
// (int4 kernel: per-group partial sums; BLAS: its own blocking), each reordering worth K * eps relative.
void expect_logits_close(const std::vector<float>& a, const std::vector<float>& b, const ModelConfig& c) {
  ASSERT_EQ(a.size(), b.size());
  float amax = 0, dmax = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    amax = std::max(amax, std::fabs(a[i]));
    dmax = std::max(dmax, std::fabs(a[i] - b[i]));
  }
  const int64_t K = std::max({c.hidden_size, c.intermediate_size, c.q_dim()});
  const float bound = 2.0f * float(c.num_hidden_layers) * float(K) * 1.1920929e-7f * amax;
  EXPECT_LE(dmax, bound) << "max |logit| " << amax;
  EXPECT_GT(amax, 0.0f);
}

struct Exported {
  LlamaModel expected;  // in-memory quantized model, dense tensors rounded as stored
};

// Quantizes a tiny model (AWQ+GPTQ so scales are folded and codes GPTQ-optimised), exports it in `format`.
LlamaModel quantize_and_export(const std::string& dir, formats::PackedFormat format, bool act_order, bool sym,
                               int64_t group_size) {
  LlamaModel m = testing::tiny_llama(7);
  quant::PipelineOptions opt;
  opt.method = quant::Method::kAwqGptq;
  opt.quant.bits = 4;
  opt.quant.group_size = group_size;
  opt.quant.sym = sym;
  opt.gptq.act_order = act_order;
  opt.progress = false;
  quant::QuantizedLinears q;
  auto rep = quant::quantize_model(m, testing::tiny_windows(8, 32, 64, 1), opt, &q);
  EXPECT_TRUE(rep) << rep.message();
  HfExportOptions eo;
  eo.dtype = DType::kF16;
  eo.quantized = &q;
  eo.quantization.format = format;
  eo.quantization.group_size = group_size;
  eo.quantization.sym = sym;
  eo.quantization.desc_act = act_order;
  Status s = save_hf_directory(dir, m.config(), m.weights(), test_tokenizer(), eo);
  EXPECT_TRUE(s) << s.message();
  round_dense_to_fp16(m.config(), m.mutable_weights());
  return m;
}

TEST(PackedCheckpoint, RoundTripThroughEveryFormatRunsTheInt4Kernels) {
  struct Case {
    formats::PackedFormat f;
    bool act_order, sym;
    int64_t g;
  };
  const Case cases[] = {{formats::PackedFormat::kAwqGemm, false, false, 32},
                        {formats::PackedFormat::kGptqV1, true, true, 64},
                        {formats::PackedFormat::kGptqV2, true, false, 32},
                        {formats::PackedFormat::kGptqV2, false, false, 0}};
  const std::vector<int32_t> ids = testing::tiny_windows(1, 24, 64, 99)[0];
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << formats::packed_format_name(c.f) << " act_order " << c.act_order << " g" << c.g);
    testing::TempDir d;
    const std::string dir = d.file("ckpt");
    LlamaModel expected = quantize_and_export(dir, c.f, c.act_order, c.sym, c.g);
    ASSERT_TRUE(fs::exists(dir + "/config.json"));
    EXPECT_FALSE(fs::exists(dir + "/model.safetensors") && fs::exists(dir + ".tmp." + std::to_string(getpid())));

    // Loaded dequantized: every linear equals the in-memory quantized weight bit for bit.
    auto deq = load_model(dir, LoadOptions{.dequantize_packed = true});
    ASSERT_TRUE(deq) << deq.message();
    for (int l = 0; l < int(expected.config().num_hidden_layers); ++l)
      for (const LinearSpec& s : kLlamaLinears) {
        const Tensor& a = expected.weights().layers[size_t(l)].*s.weight;
        const Tensor& b = deq->model->weights().layers[size_t(l)].*s.weight;
        ASSERT_EQ(a.numel(), b.numel());
        for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.f32()[i], b.f32()[i]) << l << " " << s.name << " " << i;
      }
    // Loaded packed: the linears run through the int4 kernels, no f32 copy of them.
    auto packed = load_model(dir);
    ASSERT_TRUE(packed) << packed.message();
    ASSERT_TRUE(packed->model->weights().has_packed());
    EXPECT_TRUE(packed->model->weights().layers[0].w_down.empty());
    EXPECT_EQ(!packed->model->weights().layers[0].p_down->perm.empty(), c.act_order);  // in 128: several groups
    expect_logits_close(run_logits(expected, ids), run_logits(*packed->model, ids), expected.config());
  }
}

TEST(PackedCheckpoint, ConfigCarriesWhatVllmReads) {
  testing::TempDir d;
  quantize_and_export(d.file("g"), formats::PackedFormat::kGptqV1, true, true, 64);
  std::ifstream in(d.file("g/config.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  const auto& q = j["quantization_config"];
  EXPECT_EQ(q["quant_method"], "gptq");
  EXPECT_EQ(q["bits"], 4);
  EXPECT_EQ(q["group_size"], 64);
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["sym"], true);
  EXPECT_EQ(q["checkpoint_format"], "gptq");
  EXPECT_TRUE(fs::exists(d.file("g/quantize_config.json")));
  EXPECT_EQ(j["torch_dtype"], "float16");
  auto ckpt = safetensors::Checkpoint::open_dir(d.file("g"));
  ASSERT_TRUE(ckpt);
  const auto* qw = ckpt->find("model.layers.0.mlp.down_proj.qweight");
  ASSERT_NE(qw, nullptr);
  EXPECT_EQ(qw->view.dtype, DType::kI32);
  EXPECT_EQ(qw->view.shape, (Shape{128 / 8, 64}));  // [in/8, out]
  EXPECT_EQ(ckpt->find("model.layers.0.mlp.down_proj.scales")->view.dtype, DType::kF16);
  EXPECT_EQ(ckpt->find("model.layers.0.mlp.down_proj.g_idx")->view.shape, (Shape{128}));
  EXPECT_EQ(ckpt->find("model.embed_tokens.weight")->view.dtype, DType::kF16);
  EXPECT_EQ(ckpt->find("model.layers.0.mlp.down_proj.weight"), nullptr);
}

// Rewrites dir/model.safetensors with `edit` applied to the tensor list.
void rewrite(const std::string& dir, const std::function<void(const std::string&, TensorView&, std::vector<Tensor>&)>& edit) {
  std::vector<Tensor> keep;
  keep.reserve(512);
  safetensors::Writer w;
  {
    auto f = safetensors::File::open(dir + "/model.safetensors");
    ASSERT_TRUE(f) << f.message();
    for (const auto& e : f->tensors()) {
      Tensor copy(e.view.dtype, e.view.shape);
      std::memcpy(copy.data<void>(), e.view.data, size_t(e.view.shape.numel()) * dtype_size(e.view.dtype));
      keep.push_back(std::move(copy));
      TensorView v = keep.back().view();
      edit(e.name, v, keep);
      if (v.data) {
        ASSERT_TRUE(w.add(e.name, v));
      }
    }
  }
  ASSERT_TRUE(w.write(dir + "/model.safetensors"));
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j;
  {
    std::ifstream in(dir + "/config.json");
    j = nlohmann::json::parse(in);
  }
  edit(j);
  const std::string s = j.dump(2);
  ASSERT_TRUE(write_file_atomic(dir + "/config.json", s.data(), s.size()));
}

void expect_load_error(const std::string& dir, const std::vector<std::string>& says) {
  auto m = load_model(dir);
  ASSERT_FALSE(m);
  for (const auto& s : says) EXPECT_NE(m.message().find(s), std::string::npos) << m.message();
}

TEST(PackedCheckpoint, MalformedCheckpointsGiveErrorsNamingTheTensor) {
  testing::TempDir d;
  const std::string src = d.file("src");
  quantize_and_export(src, formats::PackedFormat::kGptqV2, true, false, 32);
  auto fresh = [&](const std::string& name) {
    const std::string dst = d.file(name);
    fs::copy(src, dst, fs::copy_options::recursive);
    return dst;
  };
  {  // qzeros with a wrong shape
    const std::string dir = fresh("qzeros");
    rewrite(dir, [](const std::string& n, TensorView& v, std::vector<Tensor>& keep) {
      if (n != "model.layers.1.self_attn.o_proj.qzeros") return;
      keep.emplace_back(DType::kI32, Shape{v.shape[0] + 1, v.shape[1]});
      v = keep.back().view();
    });
    expect_load_error(dir, {"model.layers.1.self_attn.o_proj.qzeros", "has shape [3, 8]", "expected [2, 8]"});
  }
  {  // scales stored as f32
    const std::string dir = fresh("scales");
    rewrite(dir, [](const std::string& n, TensorView& v, std::vector<Tensor>& keep) {
      if (n != "model.layers.0.mlp.gate_proj.scales") return;
      keep.emplace_back(DType::kF32, v.shape);
      v = keep.back().view();
    });
    expect_load_error(dir, {"model.layers.0.mlp.gate_proj.scales", "dtype F32", "expected F16"});
  }
  {  // qweight missing
    const std::string dir = fresh("missing");
    rewrite(dir, [](const std::string& n, TensorView& v, std::vector<Tensor>&) {
      if (n == "model.layers.0.self_attn.k_proj.qzeros") v.data = nullptr;
    });
    expect_load_error(dir, {"model.layers.0.self_attn.k_proj.qzeros", "missing"});
  }
  {  // g_idx out of range
    const std::string dir = fresh("gidx");
    rewrite(dir, [](const std::string& n, TensorView& v, std::vector<Tensor>&) {
      if (n == "model.layers.0.mlp.up_proj.g_idx") static_cast<int32_t*>(v.data)[7] = 1000;
    });
    expect_load_error(dir, {"model.layers.0.mlp.up_proj.g_idx[7] = 1000"});
  }
  {  // no quantization_config
    const std::string dir = fresh("noconfig");
    fs::remove(dir + "/quantize_config.json");
    edit_config(dir, [](nlohmann::json& j) { j.erase("quantization_config"); });
    expect_load_error(dir, {".qweight", "no quantization_config"});
  }
  {  // group size that does not divide the layer
    const std::string dir = fresh("group");
    edit_config(dir, [](nlohmann::json& j) { j["quantization_config"]["group_size"] = 48; });
    expect_load_error(dir, {"group_size 48 does not divide in_features 64", "model.layers.0.self_attn.q_proj"});
  }
  {  // bits other than 4
    const std::string dir = fresh("bits");
    edit_config(dir, [](nlohmann::json& j) { j["quantization_config"]["bits"] = 8; });
    expect_load_error(dir, {"config.json", "bits is 8"});
  }
}

TEST(PackedCheckpoint, ExportIsAtomicAndRefusesWhatTheFormatCannotHold) {
  testing::TempDir d;
  LlamaModel m = testing::tiny_llama(3);
  quant::PipelineOptions opt;
  opt.method = quant::Method::kGptq;
  opt.gptq.act_order = true;
  opt.quant.group_size = 32;
  opt.progress = false;
  quant::QuantizedLinears q;
  ASSERT_TRUE(quant::quantize_model(m, testing::tiny_windows(4, 32, 64, 2), opt, &q));
  HfExportOptions eo;
  eo.dtype = DType::kF16;
  eo.quantized = &q;
  eo.quantization.format = formats::PackedFormat::kAwqGemm;  // act-order needs g_idx: AWQ has none
  const std::string dir = d.file("awq");
  Status s = save_hf_directory(dir, m.config(), m.weights(), test_tokenizer(), eo);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("g_idx"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj"), std::string::npos) << s.message();
  // Nothing was left behind: no output, no temporary directory.
  for (const auto& e : fs::directory_iterator(d.path())) ADD_FAILURE() << "left behind: " << e.path();
}

// Fixtures written by python/make_packed_fixtures.py from the published AutoAWQ / GPTQModel layouts, each with
// reference.safetensors: the dequantized weight of every linear, computed by that script (not by qforge).
TEST(PackedCheckpoint, LoadsCheckpointsInTheAutoAwqAndGptqModelLayouts) {
  const std::string root = testing::source_dir() + "/tests/data/packed";
  int seen = 0;
  for (const char* name : {"awq_gemm", "gptq_v1_desc_act", "gptq_v2_asym"}) {
    SCOPED_TRACE(name);
    const std::string dir = root + "/" + name;
    ASSERT_TRUE(fs::exists(dir + "/config.json")) << dir;
    ++seen;
    auto ref = safetensors::File::open(dir + "/reference.safetensors");
    ASSERT_TRUE(ref) << ref.message();
    auto deq = load_model(dir, LoadOptions{.dequantize_packed = true});
    ASSERT_TRUE(deq) << deq.message();
    int checked = 0;
    for (const TensorSlot& s : tensor_slots(deq->model->config(), deq->model->weights())) {
      if (!s.packed) continue;
      const auto* e = ref->find(s.name);
      ASSERT_NE(e, nullptr) << s.name;
      ASSERT_EQ(e->view.shape, s.shape) << s.name;
      std::vector<float> want(size_t(s.shape.numel()));
      convert_to_f32(e->view, want.data());
      for (int64_t i = 0; i < s.shape.numel(); ++i) ASSERT_EQ(s.tensor->f32()[i], want[size_t(i)]) << s.name << " " << i;
      ++checked;
    }
    EXPECT_EQ(checked, 7 * deq->model->config().num_hidden_layers);
    auto packed = load_model(dir);
    ASSERT_TRUE(packed) << packed.message();
    ASSERT_TRUE(packed->model->weights().has_packed());
    const std::vector<int32_t> ids = testing::tiny_windows(1, 16, deq->model->config().vocab_size, 5)[0];
    expect_logits_close(run_logits(*deq->model, ids), run_logits(*packed->model, ids), deq->model->config());
  }
  EXPECT_EQ(seen, 3);
}

}  // namespace
}  // namespace qforge
