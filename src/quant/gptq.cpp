#include "quant/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "quant/rtn.h"

namespace qforge::quant {
namespace {

// U[n, n] row-major upper with U^T U = A^-1, for the damped Hessian A[n, n] (row-major, symmetric; its upper
// triangle is read). In double: the reference runs in f32, but double makes "is it positive definite"
// a property of H rather than of rounding, and costs ~0.1 s at n = 1536. Returns false if A (or its
// inverse, numerically) is not positive definite.
// Row-major upper == column-major lower, so LAPACK's column-major 'L' routines work in place:
// dpotrf gives A = R^T R, dpotri overwrites R with A^-1, dpotrf again gives A^-1 = U^T U.
bool inverse_cholesky_upper(std::vector<double> A /*[n, n]*/, int64_t n, std::vector<float>* U /*[n, n]*/) {
  const lapack_int ln = lapack_int(n);
  if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', ln, A.data(), ln) != 0) return false;
  if (LAPACKE_dpotri(LAPACK_COL_MAJOR, 'L', ln, A.data(), ln) != 0) return false;
  if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', ln, A.data(), ln) != 0) return false;
  U->assign(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) {
      const double v = A[size_t(i * n + j)];
      if (!std::isfinite(v)) return false;
      (*U)[size_t(i * n + j)] = float(v);
    }
  return true;
}

}  // namespace

Expected<GptqResult> gptq_quantize(const float* W, int64_t out, int64_t in, const Tensor& H,
                                   const QuantConfig& cfg, const GptqOptions& opts, std::string_view name) {
  QF_RETURN_IF_ERROR(validate_quant_config(cfg, in, name));
  if (out <= 0) return error("{}: out_features {} must be positive", name, out);
  if (!(opts.damp_percent > 0.0 && opts.damp_percent <= 1.0))
    return error("{}: damp_percent {} must be in (0, 1]", name, opts.damp_percent);
  if (opts.block_size < 1) return error("{}: block_size {} must be positive", name, opts.block_size);
  if (H.dtype() != DType::kF32 || !(H.shape() == Shape{in, in}))
    return error("{}: Hessian is {} (dtype {}), expected f32 [{}, {}]", name, H.shape().str(),
                 dtype_name(H.dtype()), in, in);
  QF_RETURN_IF_ERROR(check_finite(W, out, in, name, "weight"));
  QF_RETURN_IF_ERROR(check_finite(H.f32(), in, in, name, "H"));
  const float* Hf = H.f32();
  for (int64_t i = 0; i < in; ++i)
    if (Hf[i * in + i] < 0.0f)
      return error("{}: H[{}, {}] = {} is negative: not a Hessian of the form X^T X", name, i, i,
                   Hf[i * in + i]);

  const int maxq = quant_maxq(cfg.bits);
  const int64_t ng = quant_n_groups(cfg, in);
  const int64_t gs = cfg.group_size;  // 0 = per channel
  const bool grouped = gs != 0;
  const bool static_groups = grouped && opts.static_groups;
  std::vector<GroupParams> params(size_t(out * ng));  // [out, ng], indexed by stored group
  auto group_error = [&](int64_t r, int64_t g, const Status& s) {
    return error("{}: row {} group {}: {}", name, r, g, s.message());
  };

  // Per-channel grids: from the original W, before dead columns are zeroed (as the reference's
  // quantizer.find_params(W) at the top of fasterquant).
  if (!grouped)
    for (int64_t r = 0; r < out; ++r) {
      auto p = quant_group_params(W + r * in, in, cfg);
      if (!p) return group_error(r, 0, p.status());
      params[size_t(r)] = *p;
    }

  // 1. Dead inputs.
  std::vector<double> diag(static_cast<size_t>(in));
  std::vector<char> dead(static_cast<size_t>(in), 0);
  GptqResult res;
  for (int64_t i = 0; i < in; ++i) {
    diag[size_t(i)] = Hf[i * in + i];
    if (diag[size_t(i)] == 0.0) {
      dead[size_t(i)] = 1;
      diag[size_t(i)] = 1.0;
      ++res.dead_columns;
    }
  }
  std::vector<float> W0(W, W + out * in);  // [out, in] original order, dead columns zeroed
  if (res.dead_columns > 0)
    for (int64_t r = 0; r < out; ++r)
      for (int64_t i = 0; i < in; ++i)
        if (dead[size_t(i)]) W0[size_t(r * in + i)] = 0.0f;

  // 2. Static groups: natural groups of the dead-zeroed W, before any error feedback.
  if (static_groups)
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < ng; ++g) {
        auto p = quant_group_params(W0.data() + r * in + g * gs, gs, cfg);
        if (!p) return group_error(r, g, p.status());
        params[size_t(r * ng + g)] = *p;
      }

  // 3. Processing order: position k quantizes original column perm[k].
  std::vector<int64_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (opts.act_order)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
  // The stored group each position uses: its own group in processing order, or (static) the natural
  // group of its original column, or 0 (per channel). g_idx[perm[k]] = group_of[k].
  std::vector<int32_t> group_of(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k)
    group_of[size_t(k)] = !grouped ? 0 : int32_t((static_groups ? perm[size_t(k)] : k) / gs);

  std::vector<float> Wp(size_t(out * in));  // [out, in] in processing order
  for (int64_t r = 0; r < out; ++r)
    for (int64_t k = 0; k < in; ++k) Wp[size_t(r * in + k)] = W0[size_t(r * in + perm[size_t(k)])];
  std::vector<double> Hp(size_t(in * in));  // [in, in] permuted, dead diagonal = 1
  for (int64_t a = 0; a < in; ++a)
    for (int64_t b = 0; b < in; ++b)
      Hp[size_t(a * in + b)] =
          a == b ? diag[size_t(perm[size_t(a)])] : Hf[perm[size_t(a)] * in + perm[size_t(b)]];

  // 4. Damping (retried x10 while the factorization fails), then the upper Cholesky factor of H^-1.
  const double mean_diag = std::accumulate(diag.begin(), diag.end(), 0.0) / double(in);
  std::vector<float> U;  // [in, in] upper, processing order
  bool factored = false;
  for (int k = 0; k <= kGptqMaxDampRetries && !factored; ++k) {
    res.damp_percent = opts.damp_percent * std::pow(10.0, k);
    res.damp = res.damp_percent * mean_diag;
    std::vector<double> A = Hp;
    for (int64_t i = 0; i < in; ++i) A[size_t(i * in + i)] += res.damp;
    factored = inverse_cholesky_upper(std::move(A), in, &U);
  }
  if (!factored)
    return error(
        "{}: Hessian is not positive definite even with damping {} x mean diag ({}): check the "
        "calibration inputs",
        name, res.damp_percent, res.damp);

  // 5. Lazy blocks.
  const int64_t bs = std::min(opts.block_size, in);
  std::vector<uint8_t> codes(size_t(out * in));  // [out, in] processing order
  std::vector<float> W1(size_t(out * bs));       // [out, count] the block being quantized
  std::vector<float> E1(size_t(out * bs));       // [out, count] its scaled errors (w - q) / U[c, c]
  for (int64_t i1 = 0; i1 < in; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, in), count = i2 - i1;
    for (int64_t r = 0; r < out; ++r) std::copy_n(Wp.data() + r * in + i1, count, W1.data() + r * count);
    for (int64_t r = 0; r < out; ++r) {  // rows are independent given U
      float* w1 = W1.data() + r * count;
      float* e1 = E1.data() + r * count;
      double row_loss = 0;
      for (int64_t i = 0; i < count; ++i) {
        const int64_t c = i1 + i;
        if (grouped && !static_groups && c % gs == 0) {
          // From Wp (block-start state), not w1: the reference reads W, the in-block updates go to W1.
          auto p = quant_group_params(Wp.data() + r * in + c, gs, cfg);
          if (!p) return group_error(r, c / gs, p.status());
          params[size_t(r * ng + c / gs)] = *p;
        }
        const GroupParams& p = params[size_t(r * ng + group_of[size_t(c)])];
        const float w = w1[i];
        const uint8_t code = quant_code(w, p, maxq);
        codes[size_t(r * in + c)] = code;
        const float d = U[size_t(c * in + c)];
        const float diff = w - quant_dequant(code, p);
        row_loss += double(diff) * double(diff) / (double(d) * double(d)) / 2.0;
        const float err = diff / d;
        const float* u = U.data() + c * in + i1;  // row c of U, block columns
        for (int64_t j = i + 1; j < count; ++j) w1[j] -= err * u[j];
        e1[i] = err;
      }
      res.loss += row_loss;
    }
    if (i2 < in)  // Wp[:, i2:] -= E1[out, count] @ U[i1:i2, i2:]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(out), int(in - i2), int(count), -1.0f,
                  E1.data(), int(count), U.data() + i1 * in + i2, int(in), 1.0f, Wp.data() + i2, int(in));
  }

  // Back to the original column order.
  QuantizedLinear& q = res.q;
  q.out = out;
  q.in = in;
  q.cfg = cfg;
  q.qweight.resize(size_t(out * in));
  q.g_idx.resize(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) q.g_idx[size_t(perm[size_t(k)])] = group_of[size_t(k)];
  for (int64_t r = 0; r < out; ++r)
    for (int64_t k = 0; k < in; ++k) q.qweight[size_t(r * in + perm[size_t(k)])] = codes[size_t(r * in + k)];
  q.scales = Tensor(DType::kF32, {out, ng});
  q.zeros = Tensor(DType::kF32, {out, ng});
  for (int64_t i = 0; i < out * ng; ++i) {
    q.scales.f32()[i] = params[size_t(i)].scale;
    q.zeros.f32()[i] = params[size_t(i)].zero;
  }
  return res;
}

}  // namespace qforge::quant
