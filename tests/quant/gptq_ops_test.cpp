// The GPTQ driver / backend seam (quant/gptq.h GptqOps): host-only, runs in CI without a GPU.
//  - the driver on the CPU backend is bit-identical to the monolithic implementation it replaced (kept
//    below, verbatim but for its name, as the reference twin): same codes, grids, g_idx, damping and loss
//    to the last bit, over every option the driver has;
//  - the driver calls a backend in the documented order and adds the layer name to a backend's errors.
#include <cblas.h>
#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "quant/gptq.h"
#include "quant/hessian.h"
#include "quant/rtn.h"

namespace qforge::quant {
namespace {

// ---------------------------------------------------------------- the pre-seam implementation

// From src/quant/gptq.cpp before the driver / backend split (git 996d8a9), renamed.
bool monolithic_inverse_cholesky_upper(std::vector<double> A /*[n, n]*/, int64_t n,
                                       std::vector<float>* U /*[n, n]*/) {
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

Expected<GptqResult> gptq_quantize_monolithic(const float* W, int64_t out, int64_t in, const Tensor& H,
                                              const QuantConfig& cfg, const GptqOptions& opts,
                                              std::string_view name) {
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
    factored = monolithic_inverse_cholesky_upper(std::move(A), in, &U);
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

// ---------------------------------------------------------------- inputs

std::vector<float> random_normal(int64_t n, uint64_t seed, float sd) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// H from correlated inputs X = Z + 0.9 Z G / sqrt(in), channels scaled unevenly (so act-order reorders),
// optionally with dead inputs (all-zero columns of X) and a duplicated column (singular H).
Tensor correlated_hessian(int64_t n, int64_t in, uint64_t seed, const std::vector<int64_t>& dead_cols) {
  const auto z = random_normal(n * in, seed, 1.0f);
  const auto g = random_normal(in * in, seed + 1, 1.0f);
  const auto ls = random_normal(in, seed + 2, 0.7f);
  std::vector<float> x(z);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(in), int(in),
              float(0.9 / std::sqrt(double(in))), z.data(), int(in), g.data(), int(in), 1.0f, x.data(),
              int(in));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < in; ++j) x[size_t(t * in + j)] *= std::exp(ls[size_t(j)]);
    for (int64_t j : dead_cols) x[size_t(t * in + j)] = 0.0f;
  }
  HessianAccumulator acc(in);
  EXPECT_TRUE(acc.add(x.data(), n).is_ok());
  Tensor H(DType::kF32, {in, in});
  std::copy_n(acc.H().f32(), in * in, H.f32());
  return H;
}

bool same_bits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

void expect_identical(const GptqResult& a, const GptqResult& b, const std::string& what) {
  EXPECT_EQ(a.q.out, b.q.out) << what;
  EXPECT_EQ(a.q.in, b.q.in) << what;
  EXPECT_EQ(a.q.qweight, b.q.qweight) << what;
  EXPECT_EQ(a.q.g_idx, b.q.g_idx) << what;
  ASSERT_EQ(a.q.scales.numel(), b.q.scales.numel()) << what;
  int64_t grid_diff = 0;
  for (int64_t i = 0; i < a.q.scales.numel(); ++i)
    grid_diff += !same_bits(a.q.scales.f32()[i], b.q.scales.f32()[i]) ||
                 !same_bits(a.q.zeros.f32()[i], b.q.zeros.f32()[i]);
  EXPECT_EQ(grid_diff, 0) << what;
  // Bitwise, not near: the loss is summed in the same order from the same terms.
  EXPECT_EQ(std::memcmp(&a.loss, &b.loss, sizeof(double)), 0) << what << ": " << a.loss << " vs " << b.loss;
  EXPECT_EQ(a.dead_columns, b.dead_columns) << what;
  EXPECT_EQ(a.damp_percent, b.damp_percent) << what;
  EXPECT_EQ(a.damp, b.damp) << what;
}

// ---------------------------------------------------------------- CPU backend == monolithic

TEST(GptqOps, CpuBackendIsBitIdenticalToTheMonolithicImplementation) {
  const int64_t out = 24, in = 256, n = 384;
  const Tensor H = correlated_hessian(n, in, 71, {7, 130});
  auto W = random_normal(out * in, 72, 0.02f);
  W[5] = 0.3f;  // an outlier, so some groups have a wide range
  int cases = 0;
  for (QuantGrid grid : {QuantGrid::kGptq, QuantGrid::kAwq})
    for (bool sym : {false, true})
      for (int64_t gs : {int64_t(32), int64_t(128), int64_t(0)})
        for (int64_t bs :
             {int64_t(16), int64_t(128), int64_t(100)})  // smaller than, equal to, unaligned with groups
          for (int mode = 0; mode < 3; ++mode) {         // plain, act-order, act-order + static groups
            if (gs == 0 && mode == 2) continue;
            const QuantConfig cfg{.bits = (gs == 32 ? 3 : 4), .group_size = gs, .sym = sym, .grid = grid};
            const GptqOptions opts{
                .damp_percent = 0.01, .block_size = bs, .act_order = mode >= 1, .static_groups = mode == 2};
            const std::string what = "grid " + std::to_string(int(grid)) + " sym " + std::to_string(sym) +
                                     " gs " + std::to_string(gs) + " bs " + std::to_string(bs) + " mode " +
                                     std::to_string(mode);
            auto a = gptq_quantize(W.data(), out, in, H, cfg, opts, "l");
            auto b = gptq_quantize_monolithic(W.data(), out, in, H, cfg, opts, "l");
            ASSERT_TRUE(a && b) << what << a.message() << b.message();
            expect_identical(*a, *b, what);
            ++cases;
          }
  EXPECT_EQ(cases, 2 * 2 * (2 * 3 * 3 + 3 * 2));
}

// Damping retries take the same path: an H made indefinite by one 2x2 block (eigenvalue -0.05) fails
// at 1% and succeeds at 10%, in both; an error from the driver reads the same.
TEST(GptqOps, CpuBackendMatchesOnRetriesAndErrors) {
  const int64_t out = 8, in = 64;
  const auto W = random_normal(out * in, 81, 0.02f);
  Tensor H(DType::kF32, {in, in});
  for (int64_t i = 0; i < in; ++i) H.f32()[i * in + i] = 1.0f + 0.01f * float(i % 5);
  H.f32()[10 * in + 11] = H.f32()[11 * in + 10] = 1.07f;
  const QuantConfig cfg{.bits = 4, .group_size = 32};
  auto a = gptq_quantize(W.data(), out, in, H, cfg, GptqOptions{.act_order = true}, "l");
  auto b = gptq_quantize_monolithic(W.data(), out, in, H, cfg, GptqOptions{.act_order = true}, "l");
  ASSERT_TRUE(a && b) << a.message() << b.message();
  EXPECT_DOUBLE_EQ(a->damp_percent, 0.1);
  expect_identical(*a, *b, "retry");
  H.f32()[10 * in + 11] = H.f32()[11 * in + 10] = 3.0f;
  auto c = gptq_quantize(W.data(), out, in, H, cfg, GptqOptions{}, "model.layers.1.mlp.up_proj");
  auto d = gptq_quantize_monolithic(W.data(), out, in, H, cfg, GptqOptions{}, "model.layers.1.mlp.up_proj");
  ASSERT_FALSE(c);
  ASSERT_FALSE(d);
  EXPECT_EQ(c.message(), d.message());
}

// A grid that overflows fp16 inside the sweep (a weight of 1e8 in a group taken at a block start) is an
// error naming the layer, row and group, the same text as before the split.
TEST(GptqOps, GridOverflowInTheSweepNamesLayerRowAndGroup) {
  const int64_t out = 4, in = 64;
  auto W = random_normal(out * in, 91, 0.02f);
  W[size_t(2 * in + 40)] = 1e8f;
  Tensor H(DType::kF32, {in, in});
  for (int64_t i = 0; i < in; ++i) H.f32()[i * in + i] = 1.0f;
  const QuantConfig cfg{.bits = 4, .group_size = 32};
  auto a = gptq_quantize(W.data(), out, in, H, cfg, GptqOptions{.block_size = 32},
                         "model.layers.3.self_attn.v_proj");
  auto b = gptq_quantize_monolithic(W.data(), out, in, H, cfg, GptqOptions{.block_size = 32},
                                    "model.layers.3.self_attn.v_proj");
  ASSERT_FALSE(a);
  ASSERT_FALSE(b);
  EXPECT_EQ(a.message(), b.message());
  EXPECT_EQ(a.message().rfind("model.layers.3.self_attn.v_proj: row 2 group 1: scale ", 0), 0u)
      << a.message();
}

// ---------------------------------------------------------------- the driver's side of the contract

// Wraps the CPU backend, records the calls, and can fail one of them.
class RecordingOps final : public GptqOps {
 public:
  explicit RecordingOps(std::string fail_at = {})
      : inner_(make_cpu_gptq_ops()), fail_at_(std::move(fail_at)) {}
  const char* name() const override { return "recording"; }
  Status load(const GptqPlan& plan) override {
    log.push_back("load");
    return fail("load") ? Status::error("out of memory") : inner_->load(plan);
  }
  Expected<bool> inverse_hessian_factor(double damp) override {
    log.push_back("factor");
    damps.push_back(damp);
    if (fail("factor")) return Status::error("cusolver failed");
    return inner_->inverse_hessian_factor(damp);
  }
  Status quantize_block(int64_t b, int64_t e) override {
    log.push_back("block " + std::to_string(b) + ":" + std::to_string(e));
    return fail("block") ? Status::error("kernel failed") : inner_->quantize_block(b, e);
  }
  Status trailing_update(int64_t b, int64_t e) override {
    log.push_back("update " + std::to_string(b) + ":" + std::to_string(e));
    return inner_->trailing_update(b, e);
  }
  Status fetch(GptqSweep* dst) override {
    log.push_back("fetch");
    Status s = inner_->fetch(dst);
    if (fail("fetch")) dst->codes.pop_back();  // a backend that lost a code
    return s;
  }
  std::vector<std::string> log;
  std::vector<double> damps;

 private:
  bool fail(const std::string& at) const { return at == fail_at_; }
  std::unique_ptr<GptqOps> inner_;
  std::string fail_at_;
};

TEST(GptqOps, DriverCallsTheBackendInOrder) {
  const int64_t out = 6, in = 96;
  const auto W = random_normal(out * in, 101, 0.02f);
  const Tensor H = correlated_hessian(128, in, 102, {});
  const QuantConfig cfg{.bits = 4, .group_size = 32};
  const GptqOptions opts{.block_size = 40, .act_order = true};
  RecordingOps ops;
  auto a = gptq_quantize(W.data(), out, in, H, cfg, opts, "l", ops);
  ASSERT_TRUE(a) << a.message();
  EXPECT_EQ(ops.log, (std::vector<std::string>{"load", "factor", "block 0:40", "update 0:40", "block 40:80",
                                               "update 40:80", "block 80:96", "fetch"}));
  ASSERT_EQ(ops.damps.size(), 1u);
  EXPECT_EQ(ops.damps[0], a->damp);
  auto b = gptq_quantize(W.data(), out, in, H, cfg, opts, "l");
  ASSERT_TRUE(b);
  expect_identical(*a, *b, "through the recording backend");
}

TEST(GptqOps, BackendErrorsAreNamedByTheLayer) {
  const int64_t out = 4, in = 64;
  const auto W = random_normal(out * in, 111, 0.02f);
  const Tensor H = correlated_hessian(96, in, 112, {});
  const QuantConfig cfg{.bits = 4, .group_size = 32};
  const std::string L = "model.layers.5.mlp.down_proj";
  for (auto [at, want] :
       {std::pair{"load", L + ": out of memory"}, std::pair{"factor", L + ": cusolver failed"},
        std::pair{"block", L + ": kernel failed"},
        std::pair{"fetch", L + ": GPTQ backend recording returned 255 codes, 8 grids, 4 losses; "
                               "expected 256, 8, 4"}}) {
    RecordingOps ops(at);
    auto r = gptq_quantize(W.data(), out, in, H, cfg, GptqOptions{}, L, ops);
    ASSERT_FALSE(r) << at;
    EXPECT_EQ(r.message(), want) << at;
  }
}

}  // namespace
}  // namespace qforge::quant
