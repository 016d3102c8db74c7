// AWQ (activation-aware weight quantization, Lin et al. 2023) as pure functions: a search that returns
// per-input-channel scales (or per-group clip values) and separate functions that apply them.
// Written from mit-han-lab/llm-awq (awq/quantize/auto_scale.py, auto_clip.py) and casper-hansen/AutoAWQ
// (awq/quantize/quantizer.py). The search knows nothing of layers: the caller hands it the group's weights
// and a callback that runs whatever module consumes their outputs.
//
// How a pipeline uses it for one decoder layer (the order of llm-awq / AutoAWQ):
//   1. For each group of linears sharing one input X (q/k/v; o; gate/up; down): x_mean = awq_mean_abs(X),
//      ScaleResult r = awq_search_scales(...), then apply: awq_apply_scales on every linear of the group and
//      fold 1/s into what produced X (awq_fold_into_norm, or awq_fold_into_linear_rows after
//      awq_check_fold_into_linear_rows). The cached X of that group must then be divided by s
//      (AutoAWQ apply_scale(..., input_feat_dict)) before clipping.
//   2. Clip search on every linear EXCEPT q and k: their outputs meet in the q.k^T product, where a
//      per-output error measure says little (llm-awq skips names containing "q_"/"k_"). Excluding them is
//      the caller's decision; awq_search_clip clips whatever it is given.
//   3. Quantize (rtn_quantize with grid kAwq, or GPTQ) the scaled, clipped weights.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "quant/quant_config.h"

namespace qforge::quant {

struct AwqOptions {
  int n_grid = 20;          // scale search: alpha = i / n_grid, i = 0..n_grid-1 (alpha 1 is not tried)
  double max_shrink = 0.5;  // clip search: shrink i / n_grid for i < int(max_shrink * n_grid)
  int64_t clip_sample_tokens = 512;  // clip search: token subsample (stride max(1, T / this), see below)
  int64_t clip_batch_rows = 64;      // clip search: output rows processed together (bounds scratch memory)
  // AutoAWQ's duo_scaling (its default; llm-awq has no such option): s = x_mean^a / (w_mean^(1-a) + 1e-4),
  // w_mean[c] = mean over all rows of the group of |W[r, c]| / (max |W| in (r, c)'s quant group + 1e-6).
  // Off: s = x_mean^a (llm-awq, the paper).
  bool duo_scaling = false;
};

struct ScaleResult {
  std::vector<float> scales;  // [C] > 0, for the best alpha: multiply W's columns, divide X (or what made it)
  double best_alpha = 0;      // i / n_grid of the lowest error (ties -> the smallest alpha)
  double err_before = 0;      // block error of plain RTN (s = 1): mean((y - y_q)^2)
  double err_best = 0;        // block error at best_alpha (<= err_curve[i] for all i)
  std::vector<double> err_curve;  // [n_grid] block error at alpha = i / n_grid. Without duo_scaling
                                  // err_curve[0] == err_before: alpha 0 gives s = 1 exactly.

  // The k largest scales with their channel indices, largest first (ties: lower channel first).
  std::vector<std::pair<int64_t, float>> top_scales(size_t k) const;
};

// Runs the module that consumes the group's outputs (attention, MLP, or the single linear itself) on the
// cached calibration input, with `weights` in place of the group's weights: one [out_i, C] row-major matrix
// per linear, in group order. Writes the module output into `out` (the callee assigns a new Tensor; any
// shape, the same on every call). Errors propagate out of the search.
// The scales the search would use at one alpha (without duo scaling): s = max(x_mean^alpha, 1e-4),
// normalised so that max(s) * min(s) = 1. For ablations that fix alpha instead of searching it.
std::vector<float> awq_scales_for_alpha(const float* x_mean_abs /*[C]*/, int64_t C, double alpha);

// dst = Q(W * s) / s for W [rows, C] with QuantConfig's groups (the weights a scale candidate is scored
// with); float arithmetic as the references: one multiply, the quantizer, one divide. `row` is scratch.
// A grid that overflows is an error naming the row and group.
Status awq_fake_quantize_scaled(const float* W /*[rows, C]*/, int64_t rows, int64_t C, const float* s /*[C]*/,
                                const QuantConfig& cfg, float* dst /*[rows, C]*/, std::vector<float>& row);

using BlockForward = std::function<Status(std::span<const float* const> weights, Tensor& out)>;

// x_mean[c] = mean over the T tokens of |x[t, c]|, accumulated in double. T >= 1. A NaN/Inf in x is an
// error naming the layer, the token and the channel.
Expected<std::vector<float>> awq_mean_abs(const float* x /*[T, C]*/, int64_t T, int64_t C,
                                          std::string_view name);

// The AWQ scale search for a group of linears that share one input with per-channel statistic x_mean_abs.
// For alpha = i / n_grid: s = max(x_mean^alpha, 1e-4) (duo_scaling: see AwqOptions), s /= sqrt(max s * min
// s), every W of the group becomes Q(W * s) / s (fake quantization, QuantConfig's grid: AWQ's own is kAwq),
// and err = mean((forward(W) - forward(W'))^2) over all outputs; the lowest err wins, the first on ties. s is
// computed in double and rounded to float once. Cost: n_grid + 1 forwards (+1 with duo_scaling). Errors name
// the layer: invalid config (group size vs C), empty or mismatched weights/outs, negative or non-finite
// x_mean, non-finite weights, a forward error or a non-finite / reshaped forward output.
Expected<ScaleResult> awq_search_scales(const float* x_mean_abs /*[C]*/, int64_t C,
                                        std::span<const float* const> weights /*each [outs[i], C]*/,
                                        std::span<const int64_t> outs, const QuantConfig& cfg,
                                        const AwqOptions& opt, const BlockForward& forward,
                                        std::string_view name);

// The heavy half of the scale search, so that it can run where the calibration activations live (the CPU
// scorer behind the BlockForward overload above; the CUDA one in quant/cuda/): awq_search_scales decides the
// candidates and keeps the result; the ops score them.
class AwqSearchOps {
 public:
  virtual ~AwqSearchOps() = default;
  // Runs the block with the group's own weights and keeps its output as the reference. Called once, first.
  virtual Status reference() = 0;
  // The block error of one candidate: mean over all outputs of (reference - block(W'))^2 in double, where
  // every linear of the group becomes W' = awq_fake_quantize_scaled(W, s). Errors name the group and alpha.
  virtual Expected<double> candidate_error(std::span<const float> s /*[C]*/, double alpha) = 0;
};

// The CPU scorer the BlockForward overload uses: host fake quantization, `forward`, the error in double.
// `weights` and `outs` must outlive it.
std::unique_ptr<AwqSearchOps> make_block_forward_search_ops(std::span<const float* const> weights,
                                                            std::span<const int64_t> outs, int64_t C,
                                                            const QuantConfig& cfg, BlockForward forward,
                                                            std::string_view name);

// The same search with the scoring done by `ops` (the weights are still read, for the checks and for
// duo_scaling's w_mean). A non-finite error from the ops is an error naming the group and alpha.
Expected<ScaleResult> awq_search_scales(const float* x_mean_abs /*[C]*/, int64_t C,
                                        std::span<const float* const> weights /*each [outs[i], C]*/,
                                        std::span<const int64_t> outs, const QuantConfig& cfg,
                                        const AwqOptions& opt, AwqSearchOps& ops, std::string_view name);

// The clip search's token stride (awq_search_clip below takes tokens 0, step, 2 step, ... < T; clip_sample_tokens
// >= 1). The multi-GPU backend gathers the same tokens with it.
inline int64_t awq_clip_token_step(int64_t T, int64_t clip_sample_tokens) {
  return std::max<int64_t>(1, T / clip_sample_tokens);
}

// The AWQ clip search for one linear W [out, C] fed by x [T, C] (the input AFTER the scales were applied,
// i.e. divided by s). Per (row, quant group): amax = max |W_group|; for i in 0..int(max_shrink * n_grid)-1,
// m = amax * (1 - i / n_grid) (double, rounded to float), W_group clamped to [-m, m] and fake-quantized;
// err = mean over the sampled tokens of (x_group . (W_group - Q(clamp(W_group))))^2; the lowest err wins,
// the first (i = 0, no clipping) on ties, so clipping never raises this error.
// Tokens: t = 0, step, 2 step, ... < T with step = max(1, T / clip_sample_tokens) (AutoAWQ; llm-awq's
// T // 512 is 0 for T < 512 and fails), so between clip_sample_tokens and 2 * clip_sample_tokens - 1 of
// them when T >= clip_sample_tokens, all of them otherwise.
// Returns max_val [out, n_groups] f32 (n_groups = 1 for per-channel). Errors name the layer: invalid
// config, non-finite W or x, bad sizes.
Expected<Tensor> awq_search_clip(const float* W /*[out, C]*/, int64_t out, int64_t C,
                                 const float* x /*[T, C]*/, int64_t T, const QuantConfig& cfg,
                                 const AwqOptions& opt, std::string_view name);

// Clamps each (row, group) of W to [-max_val, max_val] in place. max_val must be [out, C / group_size]
// (or [out, 1] for group_size 0); anything else is an error naming the layer.
Status awq_apply_clip(float* W /*[out, C]*/, int64_t out, int64_t C,
                      const Tensor& max_val /*[out, n_groups]*/, int64_t group_size, std::string_view name);

// W[r, c] *= s[c] for the out rows of W [out, C = scales.size()] (every linear of the searched group).
void awq_apply_scales(float* W /*[out, C]*/, int64_t out, std::span<const float> scales /*[C]*/);

// gamma[c] /= s[c]: folds 1/s into the RMSNorm/LayerNorm that produced the group's input (norm(x) * gamma
// feeds only this group). A LayerNorm bias must be divided too: call it again on the bias.
void awq_fold_into_norm(float* gamma /*[C]*/, std::span<const float> scales /*[C]*/);

// Divides the C output rows of the previous linear (and its bias, if any) by s: v_proj feeding o_proj,
// up_proj feeding down_proj (silu(g) * (u / s) = h / s). For a fused producer (qkv feeding o) pass the
// pointer to the rows that feed the scaled linear, as llm-awq's scale_fc_fc does with weight[-C:].
void awq_fold_into_linear_rows(float* W_prev /*[C, in_prev]*/, int64_t in_prev,
                               float* bias_prev /*[C] or null*/, std::span<const float> scales /*[C]*/);

// Whether a per-channel scale on next's input can be folded into prev's output rows: only when prev's
// output channel c is next's input channel c, i.e. prev_out == next_in. Under grouped-query attention
// v_proj has n_kv_heads * head_dim outputs that are repeated for n_heads * head_dim o_proj inputs, so one
// v row feeds several o columns whose scales differ; the error says so. (llm-awq demands equal weight
// shapes, which is stricter than necessary.)
Status awq_check_fold_into_linear_rows(int64_t prev_out, int64_t next_in, std::string_view prev_name,
                                       std::string_view next_name);

}  // namespace qforge::quant
