// Writes a quantized Llama-family model as a llama-architecture GGUF that llama.cpp (and qforge's own
// loader) reads: every quantized linear as Q4_0 or Q4_1 blocks built from its codes (GPTQ/AWQ codes kept
// exactly), the other tensors in F32 (norms, biases) or F16/F32 (embedding, output matrix), q/k rows in
// llama.cpp's RoPE order, the llama.* hyper-parameters and the tokenizer (tokenizer.ggml.*).
#pragma once

#include <string>

#include "core/status.h"
#include "formats/gguf.h"
#include "model/config.h"
#include "model/layer_stream.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "quant/pipeline.h"

namespace qforge {

struct GgufExportOptions {
  // kQ4_1 (any zero point; the fp16 rounding of m = -zero * scale is the only loss, see encode_q4_row)
  // or kQ4_0 (exact; needs the symmetric zero 8 in every group).
  gguf::GgmlType q4_type = gguf::GgmlType::kQ4_1;
  // token_embd.weight and output.weight: kF16 (llama.cpp's usual choice) or kF32 (lossless).
  gguf::GgmlType embed_type = gguf::GgmlType::kF16;
  std::string name;  // general.name; empty: "qforge"
  // Null: every tensor of `weights` and every linear of `linears` is in memory. Set: the decoder layers
  // stream through it and only the embedding, final norm and lm_head need be in memory. The tensor infos
  // are planned from the config alone (tensor_slots shapes; a linear [out, in] is a Q4 tensor of ne
  // {in, out}); while the data is written, load(l) is called before the first tensor of layer l (blk.l) and
  // release(l) after its last, each layer once, in increasing order, one layer loaded at a time; load(l)
  // must fill weights.layers[l] (f32) and linears.layers[l], which are checked then (an error names the
  // layer). Besides the loaded layer at most one tensor's encoded bytes are held. The file is the same bytes
  // as without a stream. An error from load aborts the export and leaves nothing at `path`.
  const LayerStream* layers = nullptr;
};

// llama.cpp's general.file_type (llama_ftype) for a Q4 type: MOSTLY_Q4_0 = 2, MOSTLY_Q4_1 = 3.
uint32_t gguf_file_type(gguf::GgmlType q4_type);

// Writes `path` atomically. `linears.layers[l][i]` is kLlamaLinears[i] of layer l; its group size must be
// a multiple of 32 (or per channel with in_features a multiple of 32) and its g_idx i / group_size (no
// act-order permutation), else an error names the layer. The linear weights of `weights` (their
// dequantized values) are not used; all its other tensors are. The tokenizer.* keys are copied from
// `source` when non-null (the model came from that GGUF), else built from `tokenizer`
// (tokenizer.ggml.model "llama" for byte-fallback BPE, "gpt2" for byte-level BPE), with the vocabulary
// padded to config.vocab_size by unused "[PAD<id>]" tokens as llama.cpp's converter does.
// Rope scaling: Llama-3's is written as llama.cpp's rope_freqs.weight tensor, linear as
// llama.rope.scaling.{type,factor}; qforge's loader (config_from_gguf) reads neither back yet.
Status save_gguf_checkpoint(const std::string& path, const ModelConfig& config, const ModelWeights& weights,
                            const quant::QuantizedLinears& linears, const Tokenizer& tokenizer,
                            const gguf::GgufFile* source, const GgufExportOptions& opt);

}  // namespace qforge
