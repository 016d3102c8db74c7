#include <gtest/gtest.h>

#include "model/config.h"

namespace qforge {
namespace {

const char* kSmolLM2 = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
  "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
  "rms_norm_eps": 1e-05, "rope_theta": 100000, "tie_word_embeddings": true, "max_position_embeddings": 8192})";

TEST(ModelConfig, ParsesLlamaAndDerivesHeadDim) {
  auto c = parse_model_config(kSmolLM2, "config.json");
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->kv_dim(), 192);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_DOUBLE_EQ(c->rope_theta, 100000);
}

TEST(ModelConfig, Qwen2HasQkvBiasAndLlama3RopeScalingParses) {
  auto q = parse_model_config(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":896,"intermediate_size":4864,
    "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936})", "q.json");
  ASSERT_TRUE(q) << q.message();
  EXPECT_TRUE(q->attention_bias);
  auto l3 = parse_model_config(R"({"architectures":["LlamaForCausalLM"],"hidden_size":2048,"intermediate_size":8192,
    "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"head_dim":64,
    "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192},"eos_token_id":[128001,128008]})", "l3.json");
  ASSERT_TRUE(l3) << l3.message();
  EXPECT_EQ(l3->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(l3->rope_scaling.factor, 32.0);
  EXPECT_EQ(l3->eos_token_ids.size(), 2u);
  // Round trip through the writer.
  auto again = parse_model_config(model_config_to_json(*l3), "again.json");
  ASSERT_TRUE(again) << again.message();
  EXPECT_EQ(again->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(again->head_dim, 64);
}

struct BadCase {
  const char* json;
  const char* expect;  // substring of the error
};

TEST(ModelConfig, MalformedConfigsGiveErrorsNamingTheField) {
  const BadCase cases[] = {
      {"{not json", "invalid JSON"},
      {"[1,2]", "JSON object"},
      {R"({"hidden_size": 8})", "architectures"},
      {R"({"architectures":["GPTNeoXForCausalLM"],"hidden_size":8})", "unsupported architecture 'GPTNeoXForCausalLM'"},
      {R"({"architectures":["LlamaForCausalLM"],"intermediate_size":8,"num_hidden_layers":1,
          "num_attention_heads":2,"vocab_size":10})", "'hidden_size' missing"},
      {R"({"architectures":["LlamaForCausalLM"],"hidden_size":"big","intermediate_size":8,"num_hidden_layers":1,
          "num_attention_heads":2,"vocab_size":10})", "'hidden_size' must be an integer"},
      {R"({"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
          "num_attention_heads":3,"num_key_value_heads":2,"vocab_size":10,"head_dim":2})", "not a multiple"},
      {R"({"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":-8,"num_hidden_layers":1,
          "num_attention_heads":2,"vocab_size":10})", "'intermediate_size' must be positive"},
      {R"({"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
          "num_attention_heads":0,"vocab_size":10})", "'num_attention_heads' must be positive"},
      {R"({"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
          "num_attention_heads":2,"vocab_size":10,"rope_scaling":{"rope_type":"yarn","factor":4}})", "'yarn'"},
  };
  for (const auto& bc : cases) {
    auto c = parse_model_config(bc.json, "bad/config.json");
    ASSERT_FALSE(c) << bc.json;
    EXPECT_NE(c.message().find("bad/config.json"), std::string::npos) << c.message();
    EXPECT_NE(c.message().find(bc.expect), std::string::npos) << c.message();
  }
}

}  // namespace
}  // namespace qforge
