// A small random Llama for tests that need a whole model (pipeline, export, runtime).
#pragma once

#include <random>
#include <string>

#include "model/llama.h"

namespace qforge::testing {

struct TinyLlamaShape {
  int64_t vocab = 64, hidden = 64, intermediate = 128, layers = 2, heads = 4, kv_heads = 2, head_dim = 16;
  bool tied = true;
  float outlier_scale = 8.0f;  // a few large embedding channels, so activations are uneven as in real models
};

inline ModelConfig tiny_llama_config(const TinyLlamaShape& s = {}) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.max_position_embeddings = 256;
  c.tie_word_embeddings = s.tied;
  return c;
}

// Weights ~ N(0, 0.3), norms 1 + N(0, 0.1) (so folding AWQ scales into them is visible), seeded.
inline LlamaModel tiny_llama(uint64_t seed, const TinyLlamaShape& shape = {}) {
  const ModelConfig c = tiny_llama_config(shape);
  ModelWeights w;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.3f), dn(0.0f, 0.1f);
  for (TensorSlot& s : tensor_slots(c, w)) {
    *s.tensor = Tensor(DType::kF32, s.shape);
    const bool norm = s.name.find("norm") != std::string::npos;
    for (int64_t i = 0; i < s.tensor->numel(); ++i) s.tensor->f32()[i] = norm ? 1.0f + dn(rng) : d(rng);
  }
  for (int64_t v = 0; v < c.vocab_size; ++v)
    for (int64_t ch : {3, 17, 40})
      if (ch < c.hidden_size) w.embed.f32()[v * c.hidden_size + ch] *= shape.outlier_scale;
  return LlamaModel(c, std::move(w));
}

inline std::vector<std::vector<int32_t>> tiny_windows(int64_t n, int64_t L, int64_t vocab, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  for (auto& w : out) {
    w.resize(static_cast<size_t>(L));
    for (auto& t : w) t = int32_t(rng() % uint32_t(vocab));
  }
  return out;
}

}  // namespace qforge::testing
