// Round-to-nearest (RTN) quantization on the min/max grid, and the per-group helpers GPTQ reuses.
// The grid conventions (QuantGrid::kGptq vs kAwq) are written down in quant/quant_config.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "core/status.h"
#include "quant/quant_config.h"

namespace qforge::quant {

// One group's grid: w ~ (code - zero) * scale.
struct GroupParams {
  float scale = 1.0f;  // > 0 and exactly representable in fp16
  float zero = 0.0f;   // integer in [0, maxq]
};

// (scale, zero) for the n finite weights w[n] of one group, per cfg.grid / cfg.sym.
// The scale is rounded to fp16 (round to nearest even) BEFORE the zero point and the codes are derived
// from it, because checkpoints store fp16 scales: the codes are then exactly right for the stored scale.
// A scale that underflows fp16 becomes the smallest fp16 subnormal (2^-24), so it is never 0; one that
// overflows fp16 (a group range beyond ~65504 * maxq) is an error.
// Deviation from the reference, on purpose: for kGptq sym, IST-DASLab's find_params only sets
// xmin = -xmax when xmin < 0, so an all-nonnegative group gets scale = xmax / maxq and, with the zero at
// 2^(b-1), clips everything above ~xmax/2. Here sym always means the symmetric range [-amax, amax].
Expected<GroupParams> quant_group_params(const float* w /*[n]*/, int64_t n, const QuantConfig& cfg);

// code = clamp(round(w / scale) + zero, 0, maxq), round half to even (as torch.round / np.round).
inline uint8_t quant_code(float w, const GroupParams& p, int maxq) {
  const float t = std::nearbyint(w / p.scale) + p.zero;
  return uint8_t(std::clamp(t, 0.0f, float(maxq)));  // NaN cannot reach here: inputs are checked finite
}

// The value a code stands for: (code - zero) * scale (exact integer difference, one rounding).
inline float quant_dequant(uint8_t code, const GroupParams& p) {
  return (float(code) - p.zero) * p.scale;
}

// RTN of a whole weight W[out, in] (row-major): each (row, group) gets its own grid; g_idx = i / group_size.
// Errors name the layer: an invalid config, or a NaN/Inf weight with its row and column.
Expected<QuantizedLinear> rtn_quantize(const float* W /*[out, in]*/, int64_t out, int64_t in,
                                       const QuantConfig& cfg, std::string_view name);

// First non-finite value of M[rows, cols] (row-major) as an error "{what}[r, c] is nan", else OK.
Status check_finite(const float* M /*[rows, cols]*/, int64_t rows, int64_t cols, std::string_view name,
                    std::string_view what);

}  // namespace qforge::quant
