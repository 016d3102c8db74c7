// Loads a Llama-family model (config, f32 weights, tokenizer) from a GGUF file or a Hugging Face
// directory (config.json + safetensors + tokenizer.json), validating every tensor's shape against the
// config. GGUF's llama-style q/k row permutation is undone, so weights are in Hugging Face order.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "model/config.h"
#include "model/layer_stream.h"
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
  // With LoadOptions::stream_layers: loads decoder layer l of *model from the mapped checkpoint / frees it.
  // It keeps the checkpoint open and points into *model, so it must not outlive them.
  LayerStream layers;
};

struct LoadOptions {
  // GGUF: run the Q4_0/Q4_1 linears through the int4 kernels (packed) instead of dequantizing them to f32.
  bool pack_q4 = false;
  // AWQ/GPTQ checkpoints: dequantize the packed linears to f32 (for tests and further processing) instead of
  // keeping them packed for the int4 runtime.
  bool dequantize_packed = false;
  // Read only the embedding, final norm and lm_head now; LoadedModel::layers reads decoder layer l on load(l)
  // (converting it to f32, then dropping the mapped input pages from the resident set) and frees it on
  // release(l), so quantization holds one layer at a time. Every tensor's presence, shape and dtype is still
  // checked here, before anything runs.
  bool stream_layers = false;
};

// `path` is a .gguf file or a directory with config.json. A directory whose config.json carries an AWQ (gemm)
// or GPTQ quantization_config (or a quantize_config.json) loads its linears packed for the W4A16 runtime.
Expected<LoadedModel> load_model(const std::string& path, const LoadOptions& opt = {});

// Model config from GGUF metadata (llama architecture keys).
Expected<ModelConfig> config_from_gguf(const gguf::GgufFile& f);
// All weights from GGUF in Hugging Face layout: dequantized to f32, or with pack_q4 the Q4_0/Q4_1 linears packed.
Expected<ModelWeights> weights_from_gguf(const gguf::GgufFile& f, const ModelConfig& c, bool pack_q4 = false);
// With layers = false, the decoder layers' tensors are only checked (present, shape), not read.
Expected<ModelWeights> weights_from_gguf(const gguf::GgufFile& f, const ModelConfig& c, bool pack_q4, bool layers);

// llama.cpp's name of a Hugging Face tensor ("model.layers.3.mlp.up_proj.weight" -> "blk.3.ffn_up.weight",
// "model.embed_tokens.weight" -> "token_embd.weight"); "" when it has none. Shared by the loader and GGUF export.
std::string gguf_tensor_name(const std::string& hf);

// Inverse of llama.cpp's convert permutation of q/k rows for RoPE: GGUF stores, within each head,
// rows interleaved (0, hd/2, 1, hd/2+1, ...); Hugging Face keeps halves. w[rows, cols] in place.
void unpermute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);
// The forward permutation (Hugging Face -> GGUF), for tests and GGUF export.
void permute_rope_rows(float* w, int64_t rows, int64_t cols, int64_t n_heads);

}  // namespace qforge
