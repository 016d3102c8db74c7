// Writes a model (f32/f16/bf16, or with packed 4-bit linears in the AutoAWQ GEMM or GPTQ layout) as a Hugging Face directory (config.json, safetensors, tokenizer.json,
// tokenizer_config.json, generation_config.json) atomically: everything goes into DIR.tmp.<pid>,
// which replaces DIR only once complete.
#pragma once

#include <string>

#include "core/status.h"
#include "formats/quant_pack.h"
#include "model/config.h"
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
};

Status save_hf_directory(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                         const Tokenizer& tokenizer, const HfExportOptions& opt);

}  // namespace qforge
