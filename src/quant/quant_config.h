// Weight-quantization settings shared by RTN, GPTQ and AWQ, and the quantized form of one linear layer.
// A weight is [out, in] row-major; groups run along `in` (the reduction dimension), one set of
// (scale, zero) per (output row, group).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace qforge::quant {

// Which min/max grid a group's (scale, zero) comes from. The two references differ:
//  kGptq (IST-DASLab/gptq quant.py Quantizer.find_params, copied by AutoGPTQ/GPTQModel):
//    the range is forced to include 0: xmin = min(w_min, 0), xmax = max(w_max, 0); both 0 -> [-1, +1].
//    asym: scale = (xmax - xmin) / maxq, zero = round(-xmin / scale).
//    sym:  scale = 2 * max(|xmin|, xmax) / maxq, zero = 2^(b-1)  (so the top code is 2^(b-1)-1 and the
//          largest positive weight sits half a step above it).
//  kAwq (mit-han-lab/llm-awq and AutoAWQ pseudo_quantize_tensor): the range is [w_min, w_max], NOT
//    widened to include 0; the zero point is clamped into [0, maxq] instead.
//    asym: scale = max(w_max - w_min, 1e-5) / maxq, zero = clamp(-round(w_min / scale), 0, maxq).
//    sym:  scale = max(max|w|, 1e-5) / (2^(b-1) - 1), zero = 2^(b-1).
// In both, code = clamp(round(w / scale) + zero, 0, maxq) with round half to even.
enum class QuantGrid : uint8_t { kGptq, kAwq };

struct QuantConfig {
  int bits = 4;              // 2..8
  int64_t group_size = 128;  // 32, 64, 128, or 0 = per output channel (one group spanning all inputs)
  bool sym = false;
  QuantGrid grid = QuantGrid::kGptq;
};

// Group sizes the packers and kernels support (besides 0 = per channel).
inline constexpr int64_t kValidGroupSizes[] = {32, 64, 128};

// bits in 2..8, group_size one of kValidGroupSizes or 0, and dividing in_features. Errors name the layer:
// "model.layers.0.mlp.down_proj: group size 128 does not divide in_features 576; valid: 32, 64,
// per-channel (0)".
Status validate_quant_config(const QuantConfig& cfg, int64_t in_features, std::string_view layer_name);

// Largest code, 2^bits - 1.
inline int quant_maxq(int bits) {
  return (1 << bits) - 1;
}
// Groups per row: in / group_size, or 1 for per-channel.
inline int64_t quant_n_groups(const QuantConfig& cfg, int64_t in) {
  return cfg.group_size == 0 ? 1 : in / cfg.group_size;
}

// One quantized linear layer, columns in the original (checkpoint) order.
struct QuantizedLinear {
  int64_t out = 0, in = 0;
  QuantConfig cfg;
  std::vector<uint8_t> qweight;  // [out, in] codes 0..2^bits-1, unpacked, one per byte
  // [out, n_groups] f32. Every value is exactly representable in fp16: scales are rounded to fp16 before
  // the codes are chosen, because checkpoints store fp16 scales and the codes must match what is stored.
  Tensor scales;
  Tensor zeros;                // [out, n_groups] f32, integer zero points in [0, maxq]
  std::vector<int32_t> g_idx;  // [in] group of each input column: i / group_size unless act-order permuted it

  // [out, in] f32: (q - zero[g_idx]) * scale[g_idx].
  Tensor dequantize() const;
};

// The quantized form of every linear of a model: layers[l][i] is kLlamaLinears[i] (model/layer_spec.h) of
// decoder layer l. Filled by quantize_model when asked; the checkpoint exporters read it.
struct QuantizedLinears {
  std::vector<std::vector<QuantizedLinear>> layers;
};

}  // namespace qforge::quant
