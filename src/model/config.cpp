#include "model/config.h"

#include <nlohmann/json.hpp>

#include "core/mapped_file.h"

namespace qforge {

using nlohmann::json;

namespace {

struct Arch {
  const char* architecture;
  const char* model_type;
  bool attention_bias;  // default for the family
};
constexpr Arch kArchs[] = {
    {"LlamaForCausalLM", "llama", false},
    {"MistralForCausalLM", "mistral", false},
    {"Qwen2ForCausalLM", "qwen2", true},
};

Expected<int64_t> get_int(const json& j, const char* key, const std::string& src, bool required,
                          int64_t def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return error("{}: field '{}' missing", src, key);
    return def;
  }
  if (!it->is_number_integer()) return error("{}: field '{}' must be an integer, got {}", src, key, it->dump());
  return it->get<int64_t>();
}

Expected<double> get_num(const json& j, const char* key, const std::string& src, double def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) return error("{}: field '{}' must be a number, got {}", src, key, it->dump());
  return it->get<double>();
}

}  // namespace

Expected<ModelConfig> parse_model_config(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return error("{}: invalid JSON: {}", src, e.what());
  }
  if (!j.is_object()) return error("{}: top level must be a JSON object", src);
  ModelConfig c;
  auto archs = j.find("architectures");
  if (archs == j.end() || !archs->is_array() || archs->empty() || !(*archs)[0].is_string())
    return error("{}: field 'architectures' missing or not a list of strings", src);
  c.architecture = (*archs)[0].get<std::string>();
  const Arch* arch = nullptr;
  for (const auto& a : kArchs)
    if (c.architecture == a.architecture) arch = &a;
  if (!arch) {
    std::string known;
    for (const auto& a : kArchs) known += std::string(known.empty() ? "" : ", ") + a.architecture;
    return error("{}: unsupported architecture '{}' (supported: {})", src, c.architecture, known);
  }
  c.model_type = arch->model_type;
  c.attention_bias = arch->attention_bias;
  if (auto it = j.find("attention_bias"); it != j.end() && it->is_boolean()) c.attention_bias = it->get<bool>();

  QF_ASSIGN_OR_RETURN(c.vocab_size, get_int(j, "vocab_size", src, true, 0));
  QF_ASSIGN_OR_RETURN(c.hidden_size, get_int(j, "hidden_size", src, true, 0));
  QF_ASSIGN_OR_RETURN(c.intermediate_size, get_int(j, "intermediate_size", src, true, 0));
  QF_ASSIGN_OR_RETURN(c.num_hidden_layers, get_int(j, "num_hidden_layers", src, true, 0));
  QF_ASSIGN_OR_RETURN(c.num_attention_heads, get_int(j, "num_attention_heads", src, true, 0));
  QF_ASSIGN_OR_RETURN(c.num_key_value_heads,
                      get_int(j, "num_key_value_heads", src, false, c.num_attention_heads));
  if (c.num_attention_heads <= 0) return error("{}: field 'num_attention_heads' must be positive", src);
  QF_ASSIGN_OR_RETURN(c.head_dim, get_int(j, "head_dim", src, false, c.hidden_size / c.num_attention_heads));
  QF_ASSIGN_OR_RETURN(c.max_position_embeddings, get_int(j, "max_position_embeddings", src, false, 2048));
  QF_ASSIGN_OR_RETURN(c.rms_norm_eps, get_num(j, "rms_norm_eps", src, 1e-6));
  // transformers 5 writes rope_theta and the scaling inside "rope_parameters"; older versions at the top level
  // and in "rope_scaling".
  const json* rope_params = nullptr;
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return error("{}: field 'rope_parameters' must be an object or null", src);
    rope_params = &*it;
  }
  if (j.contains("rope_theta") || !rope_params) {
    QF_ASSIGN_OR_RETURN(c.rope_theta, get_num(j, "rope_theta", src, 10000.0));
  } else {
    QF_ASSIGN_OR_RETURN(c.rope_theta, get_num(*rope_params, "rope_theta", src, 10000.0));
  }
  if (auto it = j.find("tie_word_embeddings"); it != j.end()) {
    if (!it->is_boolean()) return error("{}: field 'tie_word_embeddings' must be a boolean", src);
    c.tie_word_embeddings = it->get<bool>();
  }
  const json* rope_scaling = rope_params;
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return error("{}: field 'rope_scaling' must be an object or null", src);
    rope_scaling = &*it;
  }
  if (rope_scaling) {
    const json& rs = *rope_scaling;
    std::string type;
    if (auto t = rs.find("rope_type"); t != rs.end() && t->is_string()) type = t->get<std::string>();
    else if (auto t2 = rs.find("type"); t2 != rs.end() && t2->is_string()) type = t2->get<std::string>();
    if (type == "default") type = "";
    if (type != "" && type != "llama3" && type != "linear")
      return error("{}: rope_scaling type '{}' is not supported (supported: llama3, linear)", src, type);
    c.rope_scaling.type = type;
    QF_ASSIGN_OR_RETURN(c.rope_scaling.factor, get_num(rs, "factor", src, 1.0));
    QF_ASSIGN_OR_RETURN(c.rope_scaling.low_freq_factor, get_num(rs, "low_freq_factor", src, 1.0));
    QF_ASSIGN_OR_RETURN(c.rope_scaling.high_freq_factor, get_num(rs, "high_freq_factor", src, 4.0));
    QF_ASSIGN_OR_RETURN(c.rope_scaling.original_max_position_embeddings,
                        get_int(rs, "original_max_position_embeddings", src, false, 8192));
  }
  if (auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer())
    c.bos_token_id = it->get<int64_t>();
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    if (it->is_number_integer()) c.eos_token_ids.push_back(it->get<int64_t>());
    else if (it->is_array())
      for (const auto& e : *it)
        if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int64_t>());
  }
  if (auto it = j.find("torch_dtype"); it != j.end() && it->is_string()) c.torch_dtype = it->get<std::string>();
  else if (auto it2 = j.find("dtype"); it2 != j.end() && it2->is_string()) c.torch_dtype = it2->get<std::string>();
  QF_RETURN_IF_ERROR(validate_model_config(c, src));
  return c;
}

Status validate_model_config(const ModelConfig& c, const std::string& src) {
  struct F {
    const char* name;
    int64_t v;
  };
  for (F f : {F{"vocab_size", c.vocab_size}, F{"hidden_size", c.hidden_size},
              F{"intermediate_size", c.intermediate_size}, F{"num_hidden_layers", c.num_hidden_layers},
              F{"num_attention_heads", c.num_attention_heads},
              F{"num_key_value_heads", c.num_key_value_heads}, F{"head_dim", c.head_dim}}) {
    if (f.v <= 0) return error("{}: field '{}' must be positive, got {}", src, f.name, f.v);
    if (f.v > (int64_t(1) << 24)) return error("{}: field '{}' = {} is implausibly large", src, f.name, f.v);
  }
  // Each layer is 9+ tensors and a slot in every per-layer table: no real model has more than a few hundred.
  if (c.num_hidden_layers > kMaxLayers)
    return error("{}: field 'num_hidden_layers' = {} is implausibly large (at most {})", src, c.num_hidden_layers,
                 kMaxLayers);
  if (c.bos_token_id < -1 || c.bos_token_id >= c.vocab_size)
    return error("{}: bos_token_id {} is outside the vocabulary [0, {})", src, c.bos_token_id, c.vocab_size);
  for (int64_t e : c.eos_token_ids)
    if (e < 0 || e >= c.vocab_size)
      return error("{}: eos_token_id {} is outside the vocabulary [0, {})", src, e, c.vocab_size);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    return error("{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", src,
                 c.num_attention_heads, c.num_key_value_heads);
  if (c.head_dim % 2 != 0) return error("{}: head_dim ({}) must be even for RoPE", src, c.head_dim);
  if (!(c.rms_norm_eps > 0)) return error("{}: field 'rms_norm_eps' must be positive", src);
  if (!(c.rope_theta > 0)) return error("{}: field 'rope_theta' must be positive", src);
  if (c.rope_scaling.type != "" && !(c.rope_scaling.factor > 0))
    return error("{}: rope_scaling.factor must be positive", src);
  return Status::ok();
}

Expected<ModelConfig> load_model_config(const std::string& path) {
  QF_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_model_config(text, path);
}

std::string model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = false;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  if (c.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    json rs;
    rs["rope_type"] = c.rope_scaling.type;
    rs["factor"] = c.rope_scaling.factor;
    if (c.rope_scaling.type == "llama3") {
      rs["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      rs["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      rs["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = rs;
  }
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace qforge
