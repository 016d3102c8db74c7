// Hugging Face config.json of Llama-family causal LMs (LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM): the fields the decoder needs, parsed and validated.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace qforge {

struct RopeScaling {
  std::string type;               // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2)
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Parses config.json text; `source` names the file in errors.
Expected<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source);
Expected<ModelConfig> load_model_config(const std::string& path);
inline constexpr int64_t kMaxLayers = 4096;  // num_hidden_layers accepted by validate_model_config

// Checks internal consistency (heads divide, positive sizes, ...); errors name the field.
Status validate_model_config(const ModelConfig& c, const std::string& source);
// config.json text that transformers loads.
std::string model_config_to_json(const ModelConfig& c);

}  // namespace qforge
