#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/parallel.h"
#include "ops/ops.h"
#include "quant/rtn.h"

namespace qforge::quant {
namespace {

// llm-awq / AutoAWQ clamp x_mean^alpha (and the duo-scaling ratio) to at least this before normalising,
// so a dead channel (x_mean = 0) gets a small but nonzero scale.
constexpr double kAwqMinScale = 1e-4;
// AutoAWQ duo_scaling: w_mean^(1-alpha) + this in the denominator, and |W| / (group amax + kDuoAmaxEps).
constexpr double kDuoDenomEps = 1e-4;
constexpr double kDuoAmaxEps = 1e-6;

// AutoAWQ's w_mean [C]: the mean over all rows of the group's weights of |W| / (amax of its quant group).
std::vector<double> duo_w_mean(std::span<const float* const> weights, std::span<const int64_t> outs,
                               int64_t C, const QuantConfig& cfg) {
  const int64_t gs = C / quant_n_groups(cfg, C);
  std::vector<double> sum(size_t(C), 0.0);
  int64_t rows = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    for (int64_t r = 0; r < outs[i]; ++r) {
      const float* w = weights[i] + r * C;
      for (int64_t g0 = 0; g0 < C; g0 += gs) {
        float amax = 0;
        for (int64_t c = g0; c < g0 + gs; ++c) amax = std::max(amax, std::fabs(w[c]));
        for (int64_t c = g0; c < g0 + gs; ++c)
          sum[size_t(c)] += std::fabs(w[c]) / (double(amax) + kDuoAmaxEps);
      }
    }
    rows += outs[i];
  }
  for (double& v : sum) v /= double(rows);
  return sum;
}

// Scales for one alpha, computed in double and rounded to float once.
std::vector<float> scales_for_alpha(const float* x_mean, int64_t C, double alpha,
                                    const std::vector<double>* w_mean) {
  std::vector<double> sd(static_cast<size_t>(C));
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (int64_t c = 0; c < C; ++c) {
    double v = std::pow(double(x_mean[c]), alpha);  // pow(0, 0) = 1: alpha 0 gives s = 1
    if (w_mean) v /= std::pow((*w_mean)[size_t(c)], 1.0 - alpha) + kDuoDenomEps;
    v = std::max(v, kAwqMinScale);
    sd[size_t(c)] = v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  // Normalising makes max * min = 1 (geometric centre at 1): only the relative sizes matter, which keeps
  // W * s in range. With x_mean finite, s lies in
  // [sqrt(1e-4 / 3.4e42), sqrt(3.4e42 / 1e-4)] (3.4e42: FLT_MAX / the duo floor 1e-4): normal floats.
  const double norm = std::sqrt(hi * lo);
  std::vector<float> s(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) s[size_t(c)] = float(sd[size_t(c)] / norm);
  return s;
}

}  // namespace

std::vector<float> awq_scales_for_alpha(const float* x_mean_abs, int64_t C, double alpha) {
  return scales_for_alpha(x_mean_abs, C, alpha, nullptr);
}

// dst = Q(W * s) / s for W [rows, C] with QuantConfig's groups; float arithmetic as the references
// (one multiply, the quantizer, one divide).
Status awq_fake_quantize_scaled(const float* W /*[rows, C]*/, int64_t rows, int64_t C, const float* s /*[C]*/,
                            const QuantConfig& cfg, float* dst /*[rows, C]*/, std::vector<float>& row) {
  const int64_t gs = C / quant_n_groups(cfg, C);
  const int maxq = quant_maxq(cfg.bits);
  row.resize(size_t(C));
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = W + r * C;
    for (int64_t c = 0; c < C; ++c) row[size_t(c)] = w[c] * s[c];
    for (int64_t g0 = 0; g0 < C; g0 += gs) {
      auto p = quant_group_params(row.data() + g0, gs, cfg);
      if (!p) return error("row {} group {}: {}", r, g0 / gs, p.message());
      for (int64_t c = g0; c < g0 + gs; ++c)
        dst[r * C + c] = quant_dequant(quant_code(row[size_t(c)], *p, maxq), *p) / s[c];
    }
  }
  return Status::ok();
}


std::vector<std::pair<int64_t, float>> ScaleResult::top_scales(size_t k) const {
  std::vector<std::pair<int64_t, float>> v;
  v.reserve(scales.size());
  for (size_t c = 0; c < scales.size(); ++c) v.emplace_back(int64_t(c), scales[c]);
  k = std::min(k, v.size());
  std::partial_sort(v.begin(), v.begin() + ptrdiff_t(k), v.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  v.resize(k);
  return v;
}

Expected<std::vector<float>> awq_mean_abs(const float* x, int64_t T, int64_t C, std::string_view name) {
  if (T <= 0 || C <= 0)
    return error("{}: calibration input is [{}, {}]; need at least one token and channel", name, T, C);
  std::vector<double> sum(size_t(C), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) {
      const float v = x[t * C + c];
      if (!std::isfinite(v)) return error("{}: calibration input[{}, {}] is {}", name, t, c, v);
      sum[size_t(c)] += std::fabs(double(v));
    }
  std::vector<float> mean(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) mean[size_t(c)] = float(sum[size_t(c)] / double(T));
  return mean;
}

namespace {

// The CPU scorer: fake quantization on the host, the caller's block forward, the error in double.
class BlockForwardSearchOps final : public AwqSearchOps {
 public:
  BlockForwardSearchOps(std::span<const float* const> weights, std::span<const int64_t> outs, int64_t C,
                        const QuantConfig& cfg, BlockForward forward, std::string_view name)
      : weights_(weights), outs_(outs), C_(C), cfg_(cfg), forward_(std::move(forward)), name_(name) {}

  // Called by the driver after it validated weights and outs.
  Status reference() override {
    wq_.resize(weights_.size());
    wq_ptr_.resize(weights_.size());
    for (size_t i = 0; i < weights_.size(); ++i) {
      wq_[i].resize(size_t(outs_[i] * C_));
      wq_ptr_[i] = wq_[i].data();
    }
    QF_RETURN_IF_ERROR(forward_(weights_, y0_).with_context(std::string(name_) + ": block forward"));
    QF_RETURN_IF_ERROR(check_finite(y0_.f32(), 1, y0_.numel(), name_, "block output"));
    if (y0_.numel() == 0) return error("{}: block forward returned an empty output", name_);
    return Status::ok();
  }

  Expected<double> candidate_error(std::span<const float> s, double alpha) override {
    for (size_t i = 0; i < weights_.size(); ++i) {
      Status st = awq_fake_quantize_scaled(weights_[i], outs_[i], C_, s.data(), cfg_, wq_[i].data(), row_);
      if (!st) return error("{}: linear {} at alpha {}: {}", name_, i, alpha, st.message());
    }
    QF_RETURN_IF_ERROR(
        forward_(wq_ptr_, y_).with_context(fmt::format("{}: block forward at alpha {}", name_, alpha)));
    if (y_.numel() != y0_.numel())
      return error("{}: block forward returned {} values at alpha {} but {} for the original weights", name_,
                   y_.numel(), alpha, y0_.numel());
    QF_RETURN_IF_ERROR(
        check_finite(y_.f32(), 1, y_.numel(), name_, fmt::format("block output at alpha {}", alpha)));
    double acc = 0;
    const float* a = y0_.f32();
    const float* b = y_.f32();
    for (int64_t k = 0; k < y_.numel(); ++k) {
      const double d = double(a[k]) - double(b[k]);
      acc += d * d;
    }
    return acc / double(y_.numel());
  }

 private:
  std::span<const float* const> weights_;
  std::span<const int64_t> outs_;
  int64_t C_;
  QuantConfig cfg_;
  BlockForward forward_;
  std::string name_;
  std::vector<std::vector<float>> wq_;  // the fake-quantized weights, one buffer per linear, reused
  std::vector<const float*> wq_ptr_;
  std::vector<float> row_;
  Tensor y0_, y_;
};

}  // namespace

Expected<ScaleResult> awq_search_scales(const float* x_mean, int64_t C, std::span<const float* const> weights,
                                        std::span<const int64_t> outs, const QuantConfig& cfg,
                                        const AwqOptions& opt, const BlockForward& forward,
                                        std::string_view name) {
  if (!forward) return error("{}: AWQ scale search needs a block forward", name);
  BlockForwardSearchOps ops(weights, outs, C, cfg, forward, name);
  return awq_search_scales(x_mean, C, weights, outs, cfg, opt, ops, name);
}

std::unique_ptr<AwqSearchOps> make_block_forward_search_ops(std::span<const float* const> weights,
                                                            std::span<const int64_t> outs, int64_t C,
                                                            const QuantConfig& cfg, BlockForward forward,
                                                            std::string_view name) {
  return std::make_unique<BlockForwardSearchOps>(weights, outs, C, cfg, std::move(forward), name);
}

Expected<ScaleResult> awq_search_scales(const float* x_mean, int64_t C, std::span<const float* const> weights,
                                        std::span<const int64_t> outs, const QuantConfig& cfg,
                                        const AwqOptions& opt, AwqSearchOps& ops, std::string_view name) {
  QF_RETURN_IF_ERROR(validate_quant_config(cfg, C, name));
  if (weights.empty()) return error("{}: AWQ scale search needs at least one linear", name);
  if (weights.size() != outs.size())
    return error("{}: {} weight matrices but {} output sizes", name, weights.size(), outs.size());
  if (opt.n_grid < 1) return error("{}: AWQ n_grid {} must be at least 1", name, opt.n_grid);
  for (int64_t c = 0; c < C; ++c)
    if (!std::isfinite(x_mean[c]) || x_mean[c] < 0)
      return error("{}: x_mean[{}] is {}; need a finite mean |x| >= 0", name, c, x_mean[c]);
  for (size_t i = 0; i < weights.size(); ++i) {
    if (outs[i] <= 0 || weights[i] == nullptr)
      return error("{}: linear {} of the group has {} output rows{}", name, i, outs[i],
                   weights[i] ? "" : " and no data");
    QF_RETURN_IF_ERROR(check_finite(weights[i], outs[i], C, name, fmt::format("weight {}", i)));
  }

  QF_RETURN_IF_ERROR(ops.reference());
  // A backend that checks less than the CPU's (a device reduction) still cannot hand back a NaN error.
  auto block_error = [&](const std::vector<float>& s, double alpha) -> Expected<double> {
    QF_ASSIGN_OR_RETURN(const double err, ops.candidate_error(s, alpha));
    if (!std::isfinite(err)) return error("{}: block error at alpha {} is {}", name, alpha, err);
    return err;
  };

  std::vector<double> w_mean;
  if (opt.duo_scaling) w_mean = duo_w_mean(weights, outs, C, cfg);

  ScaleResult res;
  res.err_curve.resize(size_t(opt.n_grid));
  res.err_best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < opt.n_grid; ++i) {
    const double alpha = double(i) / double(opt.n_grid);
    std::vector<float> s = scales_for_alpha(x_mean, C, alpha, opt.duo_scaling ? &w_mean : nullptr);
    QF_ASSIGN_OR_RETURN(const double err, block_error(s, alpha));
    res.err_curve[size_t(i)] = err;
    if (err < res.err_best) {  // strict: ties keep the smaller alpha, as the references
      res.err_best = err;
      res.best_alpha = alpha;
      res.scales = std::move(s);
    }
  }
  if (opt.duo_scaling) {
    QF_ASSIGN_OR_RETURN(res.err_before, block_error(std::vector<float>(size_t(C), 1.0f), 0.0));
  } else {
    res.err_before = res.err_curve[0];
  }
  return res;
}

Expected<Tensor> awq_search_clip(const float* W, int64_t out, int64_t C, const float* x, int64_t T,
                                 const QuantConfig& cfg, const AwqOptions& opt, std::string_view name) {
  QF_RETURN_IF_ERROR(validate_quant_config(cfg, C, name));
  if (out <= 0) return error("{}: out_features {} must be positive", name, out);
  if (T <= 0) return error("{}: clip search needs at least one calibration token, got {}", name, T);
  if (opt.n_grid < 1 || opt.clip_sample_tokens < 1 || opt.clip_batch_rows < 1 || !(opt.max_shrink >= 0) ||
      opt.max_shrink > 1)
    return error("{}: bad AWQ clip options (n_grid {}, max_shrink {}, sample tokens {}, batch rows {})", name,
                 opt.n_grid, opt.max_shrink, opt.clip_sample_tokens, opt.clip_batch_rows);
  QF_RETURN_IF_ERROR(check_finite(W, out, C, name, "weight"));
  QF_RETURN_IF_ERROR(check_finite(x, T, C, name, "calibration input"));

  const int64_t ng = quant_n_groups(cfg, C);
  const int64_t gs = C / ng;
  const int maxq = quant_maxq(cfg.bits);
  // int() truncates like Python's; at least i = 0 (no clipping) is always tried.
  const int n_shrink = std::max(1, int(opt.max_shrink * opt.n_grid));

  // Deterministic stride subsample of the tokens, copied contiguous.
  const int64_t step = awq_clip_token_step(T, opt.clip_sample_tokens);
  const int64_t ts = (T + step - 1) / step;
  std::vector<float> xs(static_cast<size_t>(ts * C));
  for (int64_t k = 0; k < ts; ++k) std::copy_n(x + k * step * C, C, xs.data() + k * C);

  Tensor max_val(DType::kF32, {out, ng});
  float* mv = max_val.f32();
  const int64_t nb_max = std::min(out, opt.clip_batch_rows);
  std::vector<float> diff(static_cast<size_t>(nb_max * gs));  // [nb, gs] W - Q(clamp(W)) of one group
  std::vector<float> e(
      static_cast<size_t>(ts * nb_max));  // [ts, nb] x_group . diff: the output error per token
  std::vector<float> wc(static_cast<size_t>(gs));
  std::vector<double> err(static_cast<size_t>(nb_max)), best(static_cast<size_t>(nb_max));
  std::vector<float> amax(static_cast<size_t>(nb_max));

  for (int64_t r0 = 0; r0 < out; r0 += nb_max) {
    const int64_t nb = std::min(nb_max, out - r0);
    for (int64_t g = 0; g < ng; ++g) {
      for (int64_t b = 0; b < nb; ++b) {
        const float* w = W + (r0 + b) * C + g * gs;
        float a = 0;
        for (int64_t k = 0; k < gs; ++k) a = std::max(a, std::fabs(w[k]));
        amax[size_t(b)] = a;
        best[size_t(b)] = std::numeric_limits<double>::infinity();
        mv[(r0 + b) * ng + g] = a;
      }
      for (int i = 0; i < n_shrink; ++i) {
        const double shrink = 1.0 - double(i) / double(opt.n_grid);
        for (int64_t b = 0; b < nb; ++b) {
          const float m = float(double(amax[size_t(b)]) * shrink);
          const float* w = W + (r0 + b) * C + g * gs;
          for (int64_t k = 0; k < gs; ++k) wc[size_t(k)] = std::clamp(w[k], -m, m);
          auto p = quant_group_params(wc.data(), gs, cfg);
          if (!p) return error("{}: row {} group {} shrink {}: {}", name, r0 + b, g, i, p.message());
          for (int64_t k = 0; k < gs; ++k)
            diff[size_t(b * gs + k)] = w[k] - quant_dequant(quant_code(wc[size_t(k)], *p, maxq), *p);
        }
        // The references subtract two outputs, x.W - x.Q(W); x.(W - Q(W)) is the same value with less
        // cancellation.
        ops::linear(xs.data() + g * gs, ts, gs, C, diff.data(), nb, nullptr, e.data(), nb);
        std::fill(err.begin(), err.end(), 0.0);
        for (int64_t t = 0; t < ts; ++t)
          for (int64_t b = 0; b < nb; ++b) {
            const double d = e[size_t(t * nb + b)];
            err[size_t(b)] += d * d;
          }
        for (int64_t b = 0; b < nb; ++b) {
          const double eb = err[size_t(b)] / double(ts);
          if (eb < best[size_t(b)]) {  // strict: ties keep the smaller shrink
            best[size_t(b)] = eb;
            mv[(r0 + b) * ng + g] = float(double(amax[size_t(b)]) * shrink);
          }
        }
      }
    }
  }
  return max_val;
}

Status awq_apply_clip(float* W, int64_t out, int64_t C, const Tensor& max_val, int64_t group_size,
                      std::string_view name) {
  if (C <= 0 || out <= 0 || group_size < 0 || (group_size > 0 && C % group_size != 0))
    return error("{}: cannot clip W [{}, {}] with group size {}", name, out, C, group_size);
  const int64_t ng = group_size == 0 ? 1 : C / group_size;
  const int64_t gs = C / ng;
  if (max_val.dtype() != DType::kF32 || !(max_val.shape() == Shape{out, ng}))
    return error("{}: clip values are {}, expected f32 [{}, {}] for W [{}, {}] with group size {}", name,
                 max_val.shape().str(), out, ng, out, C, group_size);
  const float* mv = max_val.f32();
  for (int64_t i = 0; i < out * ng; ++i)
    if (!(mv[i] >= 0) || !std::isfinite(mv[i]))
      return error("{}: clip value [{}, {}] is {}; need finite >= 0", name, i / ng, i % ng, mv[i]);
  parallel_rows(out, std::max<int64_t>(1, (int64_t(1) << 18) / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const float m = mv[r * ng + c / gs];
        W[r * C + c] = std::clamp(W[r * C + c], -m, m);
      }
  });
  return Status::ok();
}

void awq_apply_scales(float* W, int64_t out, std::span<const float> scales) {
  const int64_t C = int64_t(scales.size());
  parallel_rows(out, std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, C)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) W[r * C + c] *= scales[size_t(c)];
  });
}

void awq_fold_into_norm(float* gamma, std::span<const float> scales) {
  for (size_t c = 0; c < scales.size(); ++c) gamma[c] /= scales[c];
}

void awq_fold_into_linear_rows(float* W_prev, int64_t in_prev, float* bias_prev,
                               std::span<const float> scales) {
  parallel_rows(int64_t(scales.size()), std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, in_prev)),
                [&](int64_t c0, int64_t c1) {
                  for (int64_t c = c0; c < c1; ++c) {
                    float* row = W_prev + c * in_prev;
                    for (int64_t k = 0; k < in_prev; ++k) row[k] /= scales[size_t(c)];
                    if (bias_prev) bias_prev[c] /= scales[size_t(c)];
                  }
                });
}

Status awq_check_fold_into_linear_rows(int64_t prev_out, int64_t next_in, std::string_view prev_name,
                                       std::string_view next_name) {
  if (prev_out == next_in) return Status::ok();
  if (prev_out > 0 && next_in > prev_out && next_in % prev_out == 0)
    return error(
        "{} -> {}: cannot fold AWQ scales: {} has {} outputs but {} reads {} inputs; each output feeds {} "
        "inputs (grouped-query attention repeats v heads), whose scales differ, so no per-row division of {} "
        "matches",
        prev_name, next_name, prev_name, prev_out, next_name, next_in, next_in / prev_out, prev_name);
  return error("{} -> {}: cannot fold AWQ scales: {} has {} outputs but {} reads {} inputs", prev_name,
               next_name, prev_name, prev_out, next_name, next_in);
}

}  // namespace qforge::quant
