// The inputs libFuzzer found (tests/data/fuzz_regressions/, docs/fuzzing.md), replayed through the parsers in the
// normal build: each must now give a clear error, never a crash, an abort or a giant allocation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "formats/gguf.h"
#include "formats/quant_pack.h"
#include "model/config.h"
#include "model/loader.h"
#include "test_util.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

std::string regression(const std::string& rel) { return testing::source_dir() + "/tests/data/fuzz_regressions/" + rel; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(FuzzRegressions, G1GgufBlockCountFarBeyondItsTensorsIsRefused) {
  auto f = gguf::GgufFile::open(regression("gguf/g1_block_count_2e24_oom.gguf"));
  ASSERT_TRUE(f) << f.message();
  auto c = config_from_gguf(*f);
  if (!c) {  // refused by the config check (num_hidden_layers bound)
    EXPECT_NE(c.message().find("implausibly large"), std::string::npos) << c.message();
    return;
  }
  auto w = weights_from_gguf(*f, *c);
  ASSERT_FALSE(w);
  EXPECT_NE(w.message().find("block_count"), std::string::npos) << w.message();
}

TEST(FuzzRegressions, L1HfConfigWithMillionsOfLayersIsRefused) {
  testing::TempDir d;
  const std::string cfg = R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":16,
    "hidden_size":8,"intermediate_size":8,"num_hidden_layers":16777216,"num_attention_heads":2,
    "num_key_value_heads":1})";
  std::ofstream(d.file("config.json")) << cfg;
  auto m = load_model(d.path());
  ASSERT_FALSE(m);
  EXPECT_NE(m.message().find("num_hidden_layers"), std::string::npos) << m.message();
}

TEST(FuzzRegressions, U1UnpackOfHugeShapesIsAnErrorNotAnOverflow) {
  formats::PackedLinear p;
  p.out = int64_t(1) << 35;
  p.in = int64_t(1) << 32;
  p.group_size = 1;
  auto q = formats::unpack_linear(p, formats::PackedFormat::kAwqGemm, "fuzz.linear");
  ASSERT_FALSE(q);
  EXPECT_NE(q.message().find("implausibly large"), std::string::npos) << q.message();
  // bits that only look like 4 after narrowing to int.
  auto qc = formats::parse_quantization_config(R"({"quant_method":"awq","bits":4294967300,"group_size":128})", "c");
  ASSERT_FALSE(qc);
  EXPECT_NE(qc.message().find("bits is 4294967300"), std::string::npos) << qc.message();
}

TEST(FuzzRegressions, C1TokenIdsOutsideTheVocabularyAreRefused) {
  int files = 0;
  for (const auto& e : fs::directory_iterator(regression("config"))) {
    ++files;
    auto c = parse_model_config(slurp(e.path().string()), e.path().filename().string());
    ASSERT_FALSE(c) << e.path();
    EXPECT_NE(c.message().find("bos_token_id"), std::string::npos) << c.message();
  }
  EXPECT_EQ(files, 2);
  auto eos = parse_model_config(R"({"architectures":["LlamaForCausalLM"],"vocab_size":16,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
    "num_attention_heads":2,"num_key_value_heads":1,"eos_token_id":[3,16]})", "cfg.json");
  ASSERT_FALSE(eos);
  EXPECT_NE(eos.message().find("eos_token_id 16"), std::string::npos) << eos.message();
}

}  // namespace
}  // namespace qforge
