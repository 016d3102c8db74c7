// Writes a model (f32/f16/bf16, or with packed 4-bit linears in the AutoAWQ GEMM or GPTQ layout) as a Hugging
// Face directory (config.json, safetensors, tokenizer.json, tokenizer_config.json, generation_config.json)
// atomically: everything goes into DIR.tmp.<pid>, which replaces DIR only once complete. With a LayerStream
// the decoder layers are read one at a time, so memory is bounded by one layer, not by the model.
#pragma once

#include <string>

#include "core/status.h"
#include "formats/quant_pack.h"
#include "model/config.h"
#include "model/layer_stream.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace qforge {

struct HfExportOptions {
  DType dtype = DType::kF32;          // F32, F16 or BF16
  uint64_t max_shard_bytes = 4ull << 30;
  std::string extra_file_name;        // optional extra file (e.g. a quantization report)
  std::string extra_file_text;
  // With `quantized`, every linear is written packed (qweight/qzeros/scales[/g_idx]) in quantization.format,
  // config.json carries quantization_config (and GPTQ gets quantize_config.json); the other tensors use dtype.
  const quant::QuantizedLinears* quantized = nullptr;
  formats::QuantizationConfig quantization;
  bool true_sequential = true;  // GPTQ metadata
  double damp_percent = 0.01;   // GPTQ metadata
  // Null: every tensor of `weights` (and every linear of `quantized`) is in memory, as the writer reads them
  // all before writing. Set: the decoder layers stream through it, and only the embedding, final norm and
  // lm_head need be in memory. The header is then planned from the config alone (tensor_slots shapes; the
  // packed tensors' shapes from out, in and quantization.group_size), and while the data is written
  // load(l) is called before the first tensor of layer l and release(l) after its last, each layer once, in
  // increasing order, one layer loaded at a time; load(l) must fill weights.layers[l] (f32) and, with
  // `quantized`, quantized->layers[l]. At most one tensor's converted bytes (or one linear's packed form) is
  // held besides. The files are the same bytes as without a stream. An error from load aborts the export
  // and leaves nothing at `dir`.
  const LayerStream* layers = nullptr;
};

Status save_hf_directory(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                         const Tokenizer& tokenizer, const HfExportOptions& opt);

}  // namespace qforge
