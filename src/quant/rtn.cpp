#include "quant/rtn.h"

#include <atomic>
#include <limits>

#include "core/dtype.h"
#include "core/parallel.h"

namespace qforge::quant {
namespace {

// AutoAWQ / llm-awq clamp the range (asym) or max|w| (sym) to at least 1e-5 so a constant group has a
// nonzero scale.
constexpr float kAwqMinRange = 1e-5f;
// Smallest positive fp16 (subnormal), the floor for a scale that would round to 0.
const float kFp16MinSubnormal = std::ldexp(1.0f, -24);

// The fp16 value nearest x (ties to even), as checkpoints store it.
float round_to_fp16(float x) {
  return fp16_to_f32(f32_to_fp16(x));
}

}  // namespace

Status check_finite(const float* M, int64_t rows, int64_t cols, std::string_view name,
                    std::string_view what) {
  // The first non-finite entry in row-major order: each chunk finds its own first, the lowest wins.
  std::atomic<int64_t> first{rows * cols};
  parallel_rows(rows, std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0 * cols; i < r1 * cols; ++i)
      if (!std::isfinite(M[i])) {
        int64_t cur = first.load();
        while (i < cur && !first.compare_exchange_weak(cur, i)) {
        }
        return;
      }
  });
  const int64_t i = first.load();
  if (i < rows * cols) return error("{}: {}[{}, {}] is {}", name, what, i / cols, i % cols, M[i]);
  return Status::ok();
}

Expected<GroupParams> quant_group_params(const float* w, int64_t n, const QuantConfig& cfg) {
  float wmin = std::numeric_limits<float>::infinity(), wmax = -wmin;
  for (int64_t i = 0; i < n; ++i) {
    wmin = std::min(wmin, w[i]);
    wmax = std::max(wmax, w[i]);
  }
  const int maxq = quant_maxq(cfg.bits);
  const float half = float(1 << (cfg.bits - 1));  // 2^(b-1), the symmetric zero point
  float raw = 0;                                  // the scale before fp16 rounding
  float xmin = 0;                                 // kGptq: bottom of the grid's range
  if (cfg.grid == QuantGrid::kGptq) {
    float xmax = std::max(wmax, 0.0f);
    xmin = std::min(wmin, 0.0f);
    if (cfg.sym) {
      xmax = std::max(-xmin, xmax);
      xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;  // all-zero group: any valid grid
    raw = (xmax - xmin) / float(maxq);
  } else if (cfg.sym) {
    raw = std::max(std::max(-wmin, wmax), kAwqMinRange) / (half - 1.0f);
  } else {
    raw = std::max(wmax - wmin, kAwqMinRange) / float(maxq);
  }
  GroupParams p;
  p.scale = round_to_fp16(raw);
  if (!std::isfinite(p.scale))
    return error("scale {} overflows fp16 (group range [{}, {}])", raw, wmin, wmax);
  if (p.scale == 0.0f) p.scale = kFp16MinSubnormal;
  if (cfg.sym) {
    p.zero = half;
  } else if (cfg.grid == QuantGrid::kGptq) {
    // -xmin / scale lies in [0, maxq] up to the fp16 rounding of the scale; the clamp only matters for
    // subnormal scales.
    p.zero = std::clamp(std::nearbyint(-xmin / p.scale), 0.0f, float(maxq)) + 0.0f;  // +0: no -0 zeros
  } else {
    p.zero = std::clamp(-std::nearbyint(wmin / p.scale), 0.0f, float(maxq)) + 0.0f;
  }
  return p;
}

Expected<QuantizedLinear> rtn_quantize(const float* W, int64_t out, int64_t in, const QuantConfig& cfg,
                                       std::string_view name) {
  QF_RETURN_IF_ERROR(validate_quant_config(cfg, in, name));
  if (out <= 0) return error("{}: out_features {} must be positive", name, out);
  QF_RETURN_IF_ERROR(check_finite(W, out, in, name, "weight"));
  const int64_t ng = quant_n_groups(cfg, in);
  const int64_t gs = in / ng;
  const int maxq = quant_maxq(cfg.bits);
  QuantizedLinear q;
  q.out = out;
  q.in = in;
  q.cfg = cfg;
  q.qweight.resize(size_t(out * in));
  q.scales = Tensor(DType::kF32, {out, ng});
  q.zeros = Tensor(DType::kF32, {out, ng});
  q.g_idx.resize(size_t(in));
  for (int64_t c = 0; c < in; ++c) q.g_idx[size_t(c)] = int32_t(c / gs);
  // Rows on all host threads; the error reported is the first failing (row, group) in row-major order, as a
  // serial loop would find it: each chunk stops at its first failing row, the lowest such row is re-run.
  std::atomic<int64_t> first_bad{out};
  auto quantize_row = [&](int64_t r) -> Status {
    for (int64_t g = 0; g < ng; ++g) {
      const float* w = W + r * in + g * gs;
      auto p = quant_group_params(w, gs, cfg);
      if (!p) return error("{}: row {} group {}: {}", name, r, g, p.message());
      q.scales.f32()[r * ng + g] = p->scale;
      q.zeros.f32()[r * ng + g] = p->zero;
      uint8_t* codes = q.qweight.data() + r * in + g * gs;
      for (int64_t i = 0; i < gs; ++i) codes[i] = quant_code(w[i], *p, maxq);
    }
    return Status::ok();
  };
  parallel_rows(out, std::max<int64_t>(1, (int64_t(1) << 16) / in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      if (!quantize_row(r).is_ok()) {
        int64_t cur = first_bad.load();
        while (r < cur && !first_bad.compare_exchange_weak(cur, r)) {
        }
        return;
      }
  });
  if (first_bad.load() < out) QF_RETURN_IF_ERROR(quantize_row(first_bad.load()));
  return q;
}

}  // namespace qforge::quant
