#include "checkpoint/resources.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace qforge::checkpoint {
namespace {

ModelConfig llama70b() {
  ModelConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 8192;
  c.intermediate_size = 28672;
  c.num_hidden_layers = 80;
  c.num_attention_heads = 64;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  return c;
}

TEST(Resources, EstimateCountsTheWeightsAndTheCalibration) {
  const ModelConfig c = llama70b();
  const ResourceEstimate e = estimate_quantize_resources(c, 128, 2048, true);
  // 70B parameters in f32 are about 280 GB; the estimate must cover them.
  EXPECT_GT(e.memory_bytes, uint64_t(260) << 30);
  EXPECT_GT(e.disk_bytes, uint64_t(30) << 30);  // at least the 4-bit output
  const ResourceEstimate more = estimate_quantize_resources(c, 256, 2048, true);
  EXPECT_GT(more.memory_bytes, e.memory_bytes);  // more calibration, more memory
  EXPECT_NE(e.breakdown.find("calibration activations"), std::string::npos);
  // One layer at a time: the weights term shrinks from 80 layers to about two.
  const ResourceEstimate streamed = estimate_quantize_resources(c, 0, 0, true, /*stream_layers=*/true);
  const ResourceEstimate whole = estimate_quantize_resources(c, 0, 0, true, /*stream_layers=*/false);
  EXPECT_LT(streamed.memory_bytes * 10, whole.memory_bytes);
  EXPECT_EQ(streamed.disk_bytes, whole.disk_bytes);
  EXPECT_NE(streamed.breakdown.find("one layer at a time"), std::string::npos);
}

TEST(Resources, RunsThisMachineCannotHoldAreRefusedWithWhatToLower) {
  testing::TempDir d;
  const ResourceEstimate e = estimate_quantize_resources(llama70b(), 128, 2048, true);
  Status s = check_resources(e, d.file("out"));
  ASSERT_FALSE(s);  // no CI machine has ~300 GiB available
  EXPECT_NE(s.message().find("GiB of memory"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("--calib-samples"), std::string::npos) << s.message();
  // A tiny model fits.
  ModelConfig tiny = llama70b();
  tiny.hidden_size = 64;
  tiny.intermediate_size = 128;
  tiny.num_hidden_layers = 2;
  tiny.num_attention_heads = 4;
  tiny.num_key_value_heads = 2;
  tiny.head_dim = 16;
  tiny.vocab_size = 100;
  EXPECT_TRUE(check_resources(estimate_quantize_resources(tiny, 4, 32, true), d.file("out")));
}

}  // namespace
}  // namespace qforge::checkpoint
