// GPTQ (Frantar et al. 2022): quantize W column by column, feeding each column's rounding error back into
// the not-yet-quantized columns through the inverse Hessian, with lazy block updates. The algorithm is
// IST-DASLab/gptq GPTQ.fasterquant, with AutoGPTQ's act-order + static_groups and g_idx conventions.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "quant/quant_config.h"
#include "quant/rtn.h"

namespace qforge::quant {

struct GptqOptions {
  double damp_percent = 0.01;  // H += damp_percent * mean(diag H) * I; in (0, 1]
  int64_t block_size = 128;    // columns per lazy block (results do not depend on it except via rounding,
                               // and via the group quirk below)
  bool act_order = false;      // quantize columns in order of decreasing H[i, i]
  bool static_groups = false;  // group grids fixed up front from the original weights
  // Nonzero: the caller promises that every call with this id passes the same H (q/k/v share one Hessian, as do
  // gate/up), so a backend may keep the inverse-Hessian factor of the last such call instead of factoring the
  // same matrix again (the CUDA backend does; the CPU reference always factors). 0: no promise.
  uint64_t hessian_id = 0;
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

// ---- The ops seam: the driver (gptq_quantize) decides; a backend (CPU, CUDA) does the heavy steps.
//
// The driver owns everything that is bookkeeping: checks, dead columns, per-channel and static grids,
// the act-order permutation, which grid each column uses and when a fresh one is taken, damping and its
// retries, the loop over lazy blocks, g_idx, the loss sum and the result in original column order.
// A backend owns the O(in^3) and O(out * in^2) work, on the layer in PROCESSING order (column k of
// the working matrix is original column perm[k]):
//   load                    Wp = W[:, perm] with dead columns zeroed; Hp = H[perm, perm] with diag as given
//   inverse_hessian_factor  U upper with U^T U = (Hp + damp I)^-1
//   quantize_block          the column sweep of one lazy block (below)
//   trailing_update         Wp[:, end:] -= Err[:, begin:end] @ U[begin:end, end:]
//   fetch                   codes, grids and the per-(block, row) losses
// Calls come in this order: load, inverse_hessian_factor until it succeeds (at most
// kGptqMaxDampRetries + 1 times), then for each block quantize_block and (except after the last)
// trailing_update, then fetch once.

// The layer as the driver hands it to a backend. Spans are the driver's and outlive the backend's use.
struct GptqPlan {
  const float* W = nullptr;  // [out, in] row-major f32, ORIGINAL column order (host)
  const float* H = nullptr;  // [in, in] f32 symmetric, original order (host)
  int64_t out = 0, in = 0;
  QuantConfig cfg;
  int64_t n_groups = 0;               // stored groups per row: quant_n_groups(cfg, in)
  std::span<const int64_t> perm;      // [in] processing position k quantizes original column perm[k]
  std::span<const double> diag;       // [in] H[i, i] by ORIGINAL column, dead inputs set to 1
  std::span<const char> dead;         // [in] by original column: input never seen, weight column zeroed
  std::span<const int32_t> group_of;  // [in] by position: the stored group whose grid column k uses
  // [in] by position: column k takes a fresh grid, stored at group_of[k], from Wp[r, k : k + group_size)
  // as it stands at the START of k's block (before the in-block feedback of that block).
  std::span<const char> grid_start;
  std::span<const GroupParams> grids;  // [out, n_groups] initial grids (per channel, static groups)
  uint64_t hessian_id = 0;             // GptqOptions::hessian_id
};

// What a backend gives back after the last block.
struct GptqSweep {
  std::vector<uint8_t> codes;      // [out, in] codes in processing order
  std::vector<GroupParams> grids;  // [out, n_groups]
  // [n_blocks, out] sum over the block's columns of (w - q)^2 / U[c, c]^2 / 2, each row summed in column
  // order in double: the driver adds them block by block, row by row (the order the loss is defined in).
  std::vector<double> block_row_loss;
};

class GptqOps {
 public:
  virtual ~GptqOps() = default;
  // Which backend, for logs and errors ("cpu", "cuda:0 NVIDIA H100 80GB HBM3").
  virtual const char* name() const = 0;
  virtual Status load(const GptqPlan& plan) = 0;
  // U [in, in] upper, U^T U = (Hp + damp I)^-1. false (not an error) when Hp + damp I, or its
  // inverse, is not numerically positive definite: the driver retries with more damping.
  virtual Expected<bool> inverse_hessian_factor(double damp) = 0;
  // Columns [begin, end) of the working matrix, every row independently, from the block-start state:
  //   for k in [begin, end): if grid_start[k], grid[r, group_of[k]] = quant_group_params(Wp[r, k:k+gs]);
  //   then for each k in order: q = quant_code(w1[k]) on grid[r, group_of[k]], d = U[k, k],
  //   err = (w1[k] - dequant(q)) / d, w1[j] -= err * U[k, j] for j in (k, end), Err[r, k] = err,
  //   where w1 is the row's block as updated so far. Errors (a grid that overflows fp16) name the
  //   row and group, without the layer (the driver adds it).
  virtual Status quantize_block(int64_t begin, int64_t end) = 0;
  virtual Status trailing_update(int64_t begin, int64_t end) = 0;
  virtual Status fetch(GptqSweep* dst) = 0;
};

// The reference backend: f64 LAPACK factorization, f32 sweep and OpenBLAS sgemm, single-threaded
// except inside BLAS. gptq_quantize without ops uses it.
std::unique_ptr<GptqOps> make_cpu_gptq_ops();

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

// The same driver on a given backend (e.g. make_cuda_gptq_ops, quant/cuda/gptq_cuda_ops.h). Backend
// errors come back prefixed with the layer name.
Expected<GptqResult> gptq_quantize(const float* W /*[out, in]*/, int64_t out, int64_t in,
                                   const Tensor& H /*[in, in]*/, const QuantConfig& cfg,
                                   const GptqOptions& opts, std::string_view name, GptqOps& ops);

}  // namespace qforge::quant
