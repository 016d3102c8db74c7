// GPTQ (Frantar et al. 2022): quantize W column by column, feeding each column's rounding error back into
// the not-yet-quantized columns through the inverse Hessian, with lazy block updates. The algorithm is
// IST-DASLab/gptq GPTQ.fasterquant, with AutoGPTQ's act-order + static_groups and g_idx conventions.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/status.h"
#include "core/tensor.h"
#include "quant/quant_config.h"

namespace qforge::quant {

struct GptqOptions {
  double damp_percent = 0.01;  // H += damp_percent * mean(diag H) * I; in (0, 1]
  int64_t block_size = 128;    // columns per lazy block (results do not depend on it except via rounding,
                               // and via the group quirk below)
  bool act_order = false;      // quantize columns in order of decreasing H[i, i]
  bool static_groups = false;  // group grids fixed up front from the original weights
};

// Damping retries when H + damp is not positive definite (numerically): damp_percent * 10^k for
// k = 1..kGptqMaxDampRetries. Beyond 100x the requested damping the result is closer to RTN than to
// GPTQ and the Hessian is more likely garbage (NaN-free but indefinite), so it is reported as an error.
inline constexpr int kGptqMaxDampRetries = 2;

struct GptqResult {
  QuantizedLinear q;  // codes, scales, zeros in the ORIGINAL column order; g_idx per original column
  double loss = 0;    // sum over all weights of (w - q)^2 / Hinv[c, c]^2 / 2 (the reference's Losses sum)
  int64_t dead_columns = 0;  // inputs with H[i, i] == 0: weight column zeroed, H[i, i] set to 1
  double damp_percent = 0;   // the damping fraction actually used (after any retries)
  double damp = 0;           // the absolute value added to the diagonal: damp_percent * mean(diag H)
};

// W[out, in] row-major f32, H[in, in] f32 (symmetric; e.g. HessianAccumulator::H()).
// Steps, as the reference:
//  1. dead inputs (H[i,i] == 0): H[i,i] = 1, W[:, i] = 0.
//  2. static_groups: each natural group's grid from the (dead-zeroed) W, before any update.
//  3. act_order: permute columns by decreasing diag(H) (stable: ties keep index order).
//  4. damping, then Hinv = U with U^T U = H^-1 (U upper): Cholesky, inverse, Cholesky again, in double.
//  5. per block of block_size columns: quantize each column, err = (w - q) / U[c, c], update the rest of
//     the block by err * U[c, :]; then W[:, block end:] -= Err @ U[block, block end:] (sgemm).
// Group grids (not static) are taken when a group's first column comes up (in permuted order under
// act_order), from W as it stood at the START of the current block: like the reference, which reads the
// group from W while the in-block updates go to a copy. With block_size a multiple of group_size, groups
// after the first in a block therefore miss the in-block feedback of earlier columns of that block.
// Per-channel (group_size 0) grids come from the original W, before dead columns are zeroed (reference).
// Errors name the layer: bad config/options, shape mismatch, NaN/Inf in W (row, col) or H (i, j), a
// negative H[i, i], and an H that stays indefinite after kGptqMaxDampRetries retries.
Expected<GptqResult> gptq_quantize(const float* W /*[out, in]*/, int64_t out, int64_t in,
                                   const Tensor& H /*[in, in]*/, const QuantConfig& cfg,
                                   const GptqOptions& opts, std::string_view name);

}  // namespace qforge::quant
