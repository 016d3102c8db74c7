// The packed int4 layouts of the checkpoints the ecosystem reads (AutoAWQ "GEMM", GPTQ v1/v2), defined here
// once with their bit order, converting to and from quant::QuantizedLinear (codes [out, in] one per byte,
// fp16-exact scales and integer zeros [out, groups], g_idx [in]), and the quantization_config they carry.
//
// AutoAWQ GEMM (AutoAWQ awq/modules/linear/gemm.py, WQLinear_GEMM.from_linear; read by vLLM's awq.py):
//   qweight int32 [in, out/8]: packed along OUT. Nibble i (bits 4i..4i+3) of qweight[r][j] holds the code of
//                              weight (out = 8j + kAwqOrder[i], in = r).
//   qzeros  int32 [in/g, out/8]: the zero points, packed along OUT in the same order.
//   scales  fp16  [in/g, out].
//   w[o][i] = (code - zero) * scale, with the zero stored as is.
// GPTQ (IST-DASLab gptq / AutoGPTQ / GPTQModel QuantLinear.pack; read by vLLM's gptq.py, transformers):
//   qweight int32 [in/8, out]: packed along IN. Nibble i of qweight[r][o] holds the code of (o, in = 8r + i).
//   qzeros  int32 [groups, out/8]: packed along OUT, nibble i of qzeros[g][j] is the zero of column 8j + i;
//                              checkpoint_format "gptq" (v1) stores zero - 1 (as GPTQModel computes it: the
//                              word of zeros minus 0x11111111), "gptq_v2" stores the zero.
//   scales  fp16  [groups, out];  g_idx int32 [in]: the group of each input column (act-order permutes it).
//   w[o][i] = (code - zero[g_idx[i]][o]) * scale[g_idx[i]][o].
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/w4a16.h"
#include "quant/quant_config.h"

namespace qforge::formats {

// Output column held by nibble i of an AutoAWQ GEMM word (the order of AutoAWQ's pack loop).
inline constexpr std::array<int, 8> kAwqOrder = {0, 2, 4, 6, 1, 3, 5, 7};
inline constexpr int kPackBits = 4;
inline constexpr int kPerWord = 32 / kPackBits;  // 8 codes per int32
static_assert(kPerWord * kPackBits == 32);
inline constexpr uint32_t kGptqV1ZeroOffset = 0x11111111u;  // v1 zeros = v2 zeros - this, modulo 2^32

enum class PackedFormat { kAwqGemm, kGptqV1, kGptqV2 };
const char* packed_format_name(PackedFormat f);

// The packed tensors of one linear. Shapes per format in the comment at the top of this file.
struct PackedLinear {
  int64_t out = 0, in = 0, group_size = 0;  // group_size == in for per-channel
  std::vector<int32_t> qweight;
  std::vector<int32_t> qzeros;
  std::vector<uint16_t> scales;             // fp16 bits
  std::vector<int32_t> g_idx;               // GPTQ only: [in]
  int64_t groups() const { return in / group_size; }
};

// Packs a 4-bit quantized linear. Errors name the layer: bits != 4, out not a multiple of 8 (both formats pack 8
// columns per word along OUT somewhere), AWQ with act-order g_idx (the format has no g_idx).
Expected<PackedLinear> pack_linear(const quant::QuantizedLinear& q, PackedFormat f, std::string_view name);
// Unpacks into codes/scales/zeros/g_idx; every shape is checked against (out, in, group_size) first and an
// error names the tensor ("model.layers.0.mlp.up_proj.qzeros has 3 rows, expected 4 = in/group_size").
Expected<quant::QuantizedLinear> unpack_linear(const PackedLinear& p, PackedFormat f, std::string_view name);

// The `quantization_config` of config.json (and GPTQ's quantize_config.json).
struct QuantizationConfig {
  PackedFormat format = PackedFormat::kAwqGemm;
  int bits = 4;
  int64_t group_size = 128;  // -1 in the file means per-channel
  bool sym = false;          // GPTQ
  bool desc_act = false;     // GPTQ
  bool zero_point = true;    // AWQ
  std::vector<std::string> modules_to_not_convert;  // AWQ
};
// Reads config.json's "quantization_config" object (its text); `source` names the file in errors.
// Accepts quant_method awq (version gemm) and gptq (checkpoint_format gptq / gptq_v2).
Expected<QuantizationConfig> parse_quantization_config(const std::string& json_object_text, const std::string& source);
// The JSON object text written into config.json (and quantize_config.json for GPTQ).
std::string quantization_config_json(const QuantizationConfig& c, bool true_sequential, double damp_percent);

// Repacks a quantized linear (any source) into the CPU runtime layout: groups made contiguous through a column
// permutation when g_idx is not i / group_size (act-order), which must give every group exactly group_size
// columns. Errors name the layer.
Expected<kernels::W4Weight> to_w4_weight(const quant::QuantizedLinear& q, std::string_view name);

}  // namespace qforge::formats
