// Loads a Llama-family model (config, f32 weights, tokenizer) from a GGUF file or a Hugging Face
// directory (config.json + safetensors + tokenizer.json), validating every tensor's shape against the
// config. GGUF's llama-style q/k row permutation is undone, so weights are in Hugging Face order.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace qforge {
namespace gguf {
class GgufFile;
}

struct LoadedModel {
  std::string source;  // path it was loaded from
  std::unique_ptr<LlamaModel> model;
  Tokenizer tokenizer;
};

// `path` is a .gguf file or a directory with config.json.
Expected<LoadedModel> load_model(const std::string& path);

// Model config from GGUF metadata (llama architecture keys).
Expected<ModelConfig> config_from_gguf(const gguf::GgufFile& f);
// All weights from GGUF, dequantized to f32 and in Hugging Face layout.
Expected<ModelWeights> weights_from_gguf(const gguf::GgufFile& f, const ModelConfig& c);

// Inverse of llama.cpp's convert permutation of q/k rows for RoPE: GGUF stores, within each head,
// rows interleaved (0, hd/2, 1, hd/2+1, ...); Hugging Face keeps halves. w[rows, cols] in place.
void unpermute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);
// The forward permutation (Hugging Face -> GGUF), for tests and GGUF export.
void permute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);

}  // namespace qforge
