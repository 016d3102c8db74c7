#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/loader.h"
#include "test_util.h"

namespace qforge {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.tie_word_embeddings = true;
  return c;
}

// Writes a tiny HF directory; `mutate` may change the config written after the weights.
void write_tiny_dir(const std::string& dir, const ModelConfig& weights_cfg, const ModelConfig& written_cfg,
                    const std::string& skip_tensor = "") {
  ModelWeights w;
  safetensors::Writer wr;
  for (TensorSlot& s : tensor_slots(weights_cfg, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    if (s.name != skip_tensor) {
      ASSERT_TRUE(wr.add(s.name, s.tensor->view()));
    }
  }
  ASSERT_TRUE(wr.write(dir + "/model.safetensors"));
  const std::string cfg = model_config_to_json(written_cfg);
  ASSERT_TRUE(write_file_atomic(dir + "/config.json", cfg.data(), cfg.size()));
}

TEST(Loader, ShapeThatDisagreesWithConfigIsNamed) {
  testing::TempDir d;
  ModelConfig c = tiny_config(), wider = tiny_config();
  wider.intermediate_size = 32;
  write_tiny_dir(d.path(), c, wider);
  auto m = load_model(d.path());
  ASSERT_FALSE(m);
  EXPECT_NE(m.message().find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << m.message();
  EXPECT_NE(m.message().find("[24, 16]"), std::string::npos) << m.message();
  EXPECT_NE(m.message().find("[32, 16]"), std::string::npos) << m.message();
}

TEST(Loader, MissingTensorIsNamed) {
  testing::TempDir d;
  write_tiny_dir(d.path(), tiny_config(), tiny_config(), "model.layers.1.self_attn.v_proj.weight");
  auto m = load_model(d.path());
  ASSERT_FALSE(m);
  EXPECT_NE(m.message().find("'model.layers.1.self_attn.v_proj.weight' missing"), std::string::npos) << m.message();
}

TEST(Loader, UnknownArchitectureAndMissingFilesAreClearErrors) {
  testing::TempDir d;
  std::ofstream(d.file("config.json")) << R"({"architectures":["FalconForCausalLM"],"hidden_size":8})";
  auto m = load_model(d.path());
  ASSERT_FALSE(m);
  EXPECT_NE(m.message().find("unsupported architecture 'FalconForCausalLM'"), std::string::npos) << m.message();
  auto n = load_model(d.file("nope.gguf"));
  ASSERT_FALSE(n);
  EXPECT_NE(n.message().find("nope.gguf"), std::string::npos);
  testing::TempDir empty;
  auto e = load_model(empty.path());
  ASSERT_FALSE(e);
  EXPECT_NE(e.message().find("config.json"), std::string::npos) << e.message();
}

// `qforge convert` of the default model gives a directory whose weights equal the GGUF's (f32 exact)
// and which loads back with the same config.
TEST(Loader, ConvertedDirectoryEqualsGguf) {
  const std::string gguf = testing::default_model_path();
  QF_REQUIRE_MODEL(gguf);
  testing::TempDir d;
  const std::string out = d.file("fp32");
  const std::string cmd = std::string(QFORGE_BINARY) + " convert " + gguf + " --out " + out + " --dtype f32 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json"})
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  auto a = load_model(gguf);
  auto b = load_model(out);
  ASSERT_TRUE(a) << a.message();
  ASSERT_TRUE(b) << b.message();
  const ModelConfig& ca = a->model->config();
  const ModelConfig& cb = b->model->config();
  EXPECT_EQ(ca.num_hidden_layers, cb.num_hidden_layers);
  EXPECT_EQ(ca.num_key_value_heads, cb.num_key_value_heads);
  EXPECT_EQ(ca.tie_word_embeddings, cb.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(ca.rope_theta, cb.rope_theta);
  auto sa = tensor_slots(ca, a->model->weights());
  auto sb = tensor_slots(cb, b->model->weights());
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    ASSERT_EQ(sa[i].name, sb[i].name);
    ASSERT_EQ(0, std::memcmp(sa[i].tensor->f32(), sb[i].tensor->f32(), sa[i].tensor->nbytes())) << sa[i].name;
  }
  // The written tokenizer encodes like the GGUF one.
  const std::string s = "Hello world! 12345 <|im_start|>user\nünïcödé\t  spaces";
  EXPECT_EQ(a->tokenizer.encode(s), b->tokenizer.encode(s));
  // No temporary directory left behind.
  for (const auto& e : std::filesystem::directory_iterator(d.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

}  // namespace
}  // namespace qforge
