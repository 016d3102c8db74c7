#include "quant/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/trace.h"

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

// The reference backend. Holds the working matrix Wp, the permuted Hessian Hp (double, kept for the
// damping retries), U, the current block's copy W1 and its errors E1.
class CpuGptqOps final : public GptqOps {
 public:
  const char* name() const override { return "cpu"; }

  Status load(const GptqPlan& plan) override {
    plan_ = plan;
    const int64_t out = plan.out, in = plan.in;
    const float* Hf = plan.H;
    Wp_.resize(size_t(out * in));
    for (int64_t r = 0; r < out; ++r)
      for (int64_t k = 0; k < in; ++k) {
        const int64_t c = plan.perm[size_t(k)];
        Wp_[size_t(r * in + k)] = plan.dead[size_t(c)] ? 0.0f : plan.W[r * in + c];
      }
    Hp_.resize(size_t(in * in));
    for (int64_t a = 0; a < in; ++a)
      for (int64_t b = 0; b < in; ++b)
        Hp_[size_t(a * in + b)] = a == b ? plan.diag[size_t(plan.perm[size_t(a)])]
                                         : Hf[plan.perm[size_t(a)] * in + plan.perm[size_t(b)]];
    grids_.assign(plan.grids.begin(), plan.grids.end());
    codes_.assign(size_t(out * in), 0);
    block_row_loss_.clear();
    return Status::ok();
  }

  Expected<bool> inverse_hessian_factor(double damp) override {
    const int64_t in = plan_.in;
    std::vector<double> A = Hp_;
    for (int64_t i = 0; i < in; ++i) A[size_t(i * in + i)] += damp;
    return inverse_cholesky_upper(std::move(A), in, &U_);
  }

  Status quantize_block(int64_t i1, int64_t i2) override {
    const int64_t out = plan_.out, in = plan_.in, count = i2 - i1, ng = plan_.n_groups;
    const int64_t gs = plan_.cfg.group_size;
    const int maxq = quant_maxq(plan_.cfg.bits);
    W1_.resize(size_t(out * count));
    E1_.resize(size_t(out * count));
    const size_t loss0 = block_row_loss_.size();
    block_row_loss_.resize(loss0 + size_t(out));
    for (int64_t r = 0; r < out; ++r) std::copy_n(Wp_.data() + r * in + i1, count, W1_.data() + r * count);
    for (int64_t r = 0; r < out; ++r) {  // rows are independent given U
      float* w1 = W1_.data() + r * count;
      float* e1 = E1_.data() + r * count;
      double row_loss = 0;
      for (int64_t i = 0; i < count; ++i) {
        const int64_t c = i1 + i;
        const int32_t g = plan_.group_of[size_t(c)];
        if (plan_.grid_start[size_t(c)]) {
          // From Wp (block-start state), not w1: the reference reads W, the in-block updates go to W1.
          auto p = quant_group_params(Wp_.data() + r * in + c, gs, plan_.cfg);
          if (!p) return error("row {} group {}: {}", r, g, p.message());
          grids_[size_t(r * ng + g)] = *p;
        }
        const GroupParams& p = grids_[size_t(r * ng + g)];
        const float w = w1[i];
        const uint8_t code = quant_code(w, p, maxq);
        codes_[size_t(r * in + c)] = code;
        const float d = U_[size_t(c * in + c)];
        const float diff = w - quant_dequant(code, p);
        row_loss += double(diff) * double(diff) / (double(d) * double(d)) / 2.0;
        const float err = diff / d;
        const float* u = U_.data() + c * in + i1;  // row c of U, block columns
        for (int64_t j = i + 1; j < count; ++j) w1[j] -= err * u[j];
        e1[i] = err;
      }
      block_row_loss_[loss0 + size_t(r)] = row_loss;
    }
    return Status::ok();
  }

  Status trailing_update(int64_t i1, int64_t i2) override {
    const int64_t out = plan_.out, in = plan_.in, count = i2 - i1;
    // Wp[:, i2:] -= E1[out, count] @ U[i1:i2, i2:]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(out), int(in - i2), int(count), -1.0f,
                E1_.data(), int(count), U_.data() + i1 * in + i2, int(in), 1.0f, Wp_.data() + i2, int(in));
    return Status::ok();
  }

  Status fetch(GptqSweep* dst) override {
    dst->codes = std::move(codes_);
    dst->grids = std::move(grids_);
    dst->block_row_loss = std::move(block_row_loss_);
    return Status::ok();
  }

 private:
  GptqPlan plan_;
  std::vector<float> Wp_;               // [out, in] processing order, updated by the trailing updates
  std::vector<double> Hp_;              // [in, in] permuted, dead diagonal = 1, undamped
  std::vector<float> U_;                // [in, in] upper, processing order
  std::vector<float> W1_, E1_;          // [out, count] the block being quantized, its scaled errors
  std::vector<GroupParams> grids_;      // [out, n_groups]
  std::vector<uint8_t> codes_;          // [out, in] processing order
  std::vector<double> block_row_loss_;  // [n_blocks, out]
};

}  // namespace

std::unique_ptr<GptqOps> make_cpu_gptq_ops() {
  return std::make_unique<CpuGptqOps>();
}

Expected<GptqResult> gptq_quantize(const float* W, int64_t out, int64_t in, const Tensor& H,
                                   const QuantConfig& cfg, const GptqOptions& opts, std::string_view name) {
  CpuGptqOps ops;
  return gptq_quantize(W, out, in, H, cfg, opts, name, ops);
}

Expected<GptqResult> gptq_quantize(const float* W, int64_t out, int64_t in, const Tensor& H,
                                   const QuantConfig& cfg, const GptqOptions& opts, std::string_view name,
                                   GptqOps& ops) {
  QF_RETURN_IF_ERROR(validate_quant_config(cfg, in, name));
  if (out <= 0) return error("{}: out_features {} must be positive", name, out);
  if (!(opts.damp_percent > 0.0 && opts.damp_percent <= 1.0))
    return error("{}: damp_percent {} must be in (0, 1]", name, opts.damp_percent);
  if (opts.block_size < 1) return error("{}: block_size {} must be positive", name, opts.block_size);
  if (H.dtype() != DType::kF32 || !(H.shape() == Shape{in, in}))
    return error("{}: Hessian is {} (dtype {}), expected f32 [{}, {}]", name, H.shape().str(),
                 dtype_name(H.dtype()), in, in);
  {
    TraceScope tr("gptq checks");
    QF_RETURN_IF_ERROR(check_finite(W, out, in, name, "weight"));
    QF_RETURN_IF_ERROR(check_finite(H.f32(), in, in, name, "H"));
  }
  const float* Hf = H.f32();
  for (int64_t i = 0; i < in; ++i)
    if (Hf[i * in + i] < 0.0f)
      return error("{}: H[{}, {}] = {} is negative: not a Hessian of the form X^T X", name, i, i,
                   Hf[i * in + i]);
  const std::string layer(name);

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

  // 2. Static groups: natural groups of the dead-zeroed W, before any error feedback.
  if (static_groups) {
    std::vector<float> w0(static_cast<size_t>(gs));  // [gs] one group, dead columns zeroed
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < ng; ++g) {
        for (int64_t i = 0; i < gs; ++i)
          w0[size_t(i)] = dead[size_t(g * gs + i)] ? 0.0f : W[r * in + g * gs + i];
        auto p = quant_group_params(w0.data(), gs, cfg);
        if (!p) return group_error(r, g, p.status());
        params[size_t(r * ng + g)] = *p;
      }
  }

  // 3. Processing order: position k quantizes original column perm[k].
  std::vector<int64_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (opts.act_order)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
  // The stored group each position uses: its own group in processing order, or (static) the natural
  // group of its original column, or 0 (per channel). g_idx[perm[k]] = group_of[k]. Without static
  // groups a grid is taken when a group's first position comes up.
  std::vector<int32_t> group_of(static_cast<size_t>(in));
  std::vector<char> grid_start(static_cast<size_t>(in), 0);
  for (int64_t k = 0; k < in; ++k) {
    group_of[size_t(k)] = !grouped ? 0 : int32_t((static_groups ? perm[size_t(k)] : k) / gs);
    grid_start[size_t(k)] = grouped && !static_groups && k % gs == 0;
  }

  GptqPlan plan;
  plan.W = W;
  plan.H = Hf;
  plan.out = out;
  plan.in = in;
  plan.cfg = cfg;
  plan.hessian_id = opts.hessian_id;
  plan.n_groups = ng;
  plan.perm = perm;
  plan.diag = diag;
  plan.dead = dead;
  plan.group_of = group_of;
  plan.grid_start = grid_start;
  plan.grids = params;
  QF_RETURN_IF_ERROR(ops.load(plan).with_context(layer));

  // 4. Damping (retried x10 while the factorization fails), then the upper Cholesky factor of H^-1.
  const double mean_diag = std::accumulate(diag.begin(), diag.end(), 0.0) / double(in);
  bool factored = false;
  for (int k = 0; k <= kGptqMaxDampRetries && !factored; ++k) {
    res.damp_percent = opts.damp_percent * std::pow(10.0, k);
    res.damp = res.damp_percent * mean_diag;
    Expected<bool> f = ops.inverse_hessian_factor(res.damp);
    if (!f) return f.status().with_context(layer);
    factored = *f;
  }
  if (!factored)
    return error(
        "{}: Hessian is not positive definite even with damping {} x mean diag ({}): check the "
        "calibration inputs",
        name, res.damp_percent, res.damp);

  // 5. Lazy blocks.
  const int64_t bs = std::min(opts.block_size, in);
  int64_t n_blocks = 0;
  for (int64_t i1 = 0; i1 < in; i1 += bs, ++n_blocks) {
    const int64_t i2 = std::min(i1 + bs, in);
    QF_RETURN_IF_ERROR(ops.quantize_block(i1, i2).with_context(layer));
    if (i2 < in) QF_RETURN_IF_ERROR(ops.trailing_update(i1, i2).with_context(layer));
  }
  GptqSweep sweep;
  QF_RETURN_IF_ERROR(ops.fetch(&sweep).with_context(layer));
  if (sweep.codes.size() != size_t(out * in) || sweep.grids.size() != size_t(out * ng) ||
      sweep.block_row_loss.size() != size_t(n_blocks * out))
    return error("{}: GPTQ backend {} returned {} codes, {} grids, {} losses; expected {}, {}, {}", name,
                 ops.name(), sweep.codes.size(), sweep.grids.size(), sweep.block_row_loss.size(), out * in,
                 out * ng, n_blocks * out);
  for (double l : sweep.block_row_loss) res.loss += l;  // block by block, row by row

  // Back to the original column order.
  TraceScope tr("gptq codes to original order");
  QuantizedLinear& q = res.q;
  q.out = out;
  q.in = in;
  q.cfg = cfg;
  q.g_idx.resize(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) q.g_idx[size_t(perm[size_t(k)])] = group_of[size_t(k)];
  bool identity = true;
  for (int64_t k = 0; k < in && identity; ++k) identity = perm[size_t(k)] == k;
  if (identity) {
    q.qweight = std::move(sweep.codes);  // processing order is the original order
  } else {
    q.qweight.resize(size_t(out * in));
    parallel_rows(out, std::max<int64_t>(1, (int64_t(1) << 18) / in), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t k = 0; k < in; ++k)
          q.qweight[size_t(r * in + perm[size_t(k)])] = sweep.codes[size_t(r * in + k)];
    });
  }
  q.scales = Tensor(DType::kF32, {out, ng});
  q.zeros = Tensor(DType::kF32, {out, ng});
  for (int64_t i = 0; i < out * ng; ++i) {
    q.scales.f32()[i] = sweep.grids[size_t(i)].scale;
    q.zeros.f32()[i] = sweep.grids[size_t(i)].zero;
  }
  return res;
}

}  // namespace qforge::quant
