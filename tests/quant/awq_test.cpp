// AWQ scale and clip search: against python/make_awq_golden.py, plus properties (the search helps on
// outlier channels, scale equivalence, exact folds, clipping never hurts) and error paths.
#include "quant/awq.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "quant/quant_config.h"
#include "quant/rtn.h"

namespace qforge::quant {
namespace {

// Unit roundoff of f32 (half an ulp of 1); an ulp of a normal float y is at most 2 u |y|.
constexpr double kF32Unit = 0x1p-24;
// Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term f32 dot product, any order.
double gamma_f32(int64_t n) {
  return double(n) * kF32Unit / (1.0 - double(n) * kF32Unit);
}

nlohmann::json load_golden(const std::string& file) {
  std::ifstream f(std::string(QFORGE_SOURCE_DIR) + "/tests/golden/" + file);
  EXPECT_TRUE(f.good()) << "missing golden " << file << ": run python/make_awq_golden.py";
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// Little-endian float32 hex (the golden's encoding; this host is little-endian).
std::vector<float> f32_from_hex(const std::string& h) {
  std::vector<float> out(h.size() / 8);
  for (size_t i = 0; i < out.size(); ++i) {
    uint32_t bits = 0;
    for (int b = 0; b < 4; ++b)
      bits |= uint32_t(std::stoul(h.substr(8 * i + 2 * size_t(b), 2), nullptr, 16)) << (8 * b);
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

std::vector<float> random_normal(int64_t n, std::mt19937_64& rng, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// Calibration input [T, C] with per-channel magnitudes in [0.5, 1.5] and a few channels 20-60x larger:
// the activation outliers AWQ exists for.
std::vector<float> outlier_activations(int64_t T, int64_t C, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> base(0.5f, 1.5f), big(20.0f, 60.0f);
  std::vector<float> mag(static_cast<size_t>(C));
  for (auto& m : mag) m = base(rng);
  for (int64_t c = 3; c < C; c += 29) mag[size_t(c)] = big(rng);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(T * C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) x[size_t(t * C + c)] = n(rng) * mag[size_t(c)];
  return x;
}

// Block = the group's linears side by side: y[T, sum outs] = [x W_0^T, x W_1^T, ...] in f32 (BLAS).
BlockForward concat_forward_f32(const std::vector<float>& x, int64_t T, int64_t C,
                                std::vector<int64_t> outs) {
  return [&x, T, C, outs](std::span<const float* const> ws, Tensor& y) -> Status {
    int64_t n = 0;
    for (int64_t o : outs) n += o;
    y = Tensor(DType::kF32, {T, n});
    int64_t col = 0;
    for (size_t i = 0; i < ws.size(); ++i) {
      ops::linear(x.data(), T, C, C, ws[i], outs[i], nullptr, y.f32() + col, n);
      col += outs[i];
    }
    return Status::ok();
  };
}

// ------------------------------------------------------------------------------------------------ golden

struct Golden {
  nlohmann::json j;
  int64_t T, C, H, D;
  std::vector<float> x, wg, wu, wd, x_mean;
};

Golden load_awq_golden() {
  Golden g;
  g.j = load_golden("quant_awq.json");
  g.T = g.j["T"];
  g.C = g.j["C"];
  g.H = g.j["H"];
  g.D = g.j["D"];
  g.x = f32_from_hex(g.j["x"]);
  g.wg = f32_from_hex(g.j["w_gate"]);
  g.wu = f32_from_hex(g.j["w_up"]);
  g.wd = f32_from_hex(g.j["w_down"]);
  g.x_mean = f32_from_hex(g.j["x_mean"]);
  return g;
}

// The golden's forwards, computed in double from the f32 weights and rounded to f32 once, as the generator
// does: both sides then agree to one f32 ulp per output (the double results differ by a few double ulps,
// which can only straddle an f32 rounding midpoint, never move the value further).
BlockForward golden_forward(const Golden& g, const std::string& block) {
  return [&g, block](std::span<const float* const> ws, Tensor& y) -> Status {
    const int64_t T = g.T, C = g.C, H = g.H;
    auto dot = [&](const float* a, const float* b, int64_t n) {
      double s = 0;
      for (int64_t k = 0; k < n; ++k) s += double(a[k]) * double(b[k]);
      return s;
    };
    if (block == "mlp") {
      y = Tensor(DType::kF32, {T, g.D});
      std::vector<double> h(static_cast<size_t>(H));
      for (int64_t t = 0; t < T; ++t) {
        const float* xt = g.x.data() + t * C;
        for (int64_t o = 0; o < H; ++o) {
          const double gv = dot(xt, ws[0] + o * C, C), uv = dot(xt, ws[1] + o * C, C);
          h[size_t(o)] = gv / (1.0 + std::exp(-gv)) * uv;
        }
        for (int64_t d = 0; d < g.D; ++d) {
          double s = 0;
          for (int64_t o = 0; o < H; ++o) s += h[size_t(o)] * double(g.wd[size_t(d * H + o)]);
          y.f32()[t * g.D + d] = float(s);
        }
      }
    } else {
      y = Tensor(DType::kF32, {T, 2 * H});
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < 2; ++i)
          for (int64_t o = 0; o < H; ++o)
            y.f32()[t * 2 * H + i * H + o] = float(dot(g.x.data() + t * C, ws[size_t(i)] + o * C, C));
    }
    return Status::ok();
  };
}

// x_mean is a double sum of |x| rounded to f32 once on both sides. A sum of 256 nonnegative terms in any
// order is within gamma_256 ~ 2.9e-14 (relative, double) of exact, and the generator checked that every mean
// lies more than 1e-13 (relative) from an f32 rounding midpoint, so the floats are identical.
TEST(AwqGolden, MeanAbsMatchesExactly) {
  const Golden g = load_awq_golden();
  auto m = awq_mean_abs(g.x.data(), g.T, g.C, "golden");
  ASSERT_TRUE(m) << m.message();
  ASSERT_EQ(m->size(), g.x_mean.size());
  for (size_t c = 0; c < m->size(); ++c) EXPECT_EQ((*m)[c], g.x_mean[c]) << "channel " << c;
}

// Scales: computed in double and rounded to f32 once on both sides; the generator checked every scale of
// every alpha lies more than 1e-13 (relative) from an f32 rounding midpoint, while the two sides' doubles
// differ by a few double ulps (pow, sqrt, division) plus, with duo_scaling, the order of the 128-row w_mean
// sums (gamma_128 ~ 1.4e-14): the f32 scales, hence W * s, the quantizer's codes and / s, are identical, so
// alpha and the scales must match exactly.
// Errors: each output differs by at most one f32 ulp (<= 2u|y|) between the two forwards, so the per-output
// difference d = y - y_q moves by |delta| <= 2u(|y| + |y_q|), and by Cauchy-Schwarz
//   |err_c - err_g| <= 2 sqrt(err) rms(delta) + mean(delta^2),  rms(delta) <= 2u (2 rms(y) + sqrt(err))
// (rms(y_q) <= rms(y) + sqrt(err)). The double parts of both sides add ~1e-15 relative: a factor 1.01.
TEST(AwqGolden, ScaleSearchMatchesReference) {
  const Golden g = load_awq_golden();
  const int n_grid = g.j["n_grid"];
  int cases = 0;
  for (const auto& c : g.j["scale_cases"]) {
    QuantConfig cfg{
        .bits = c["bits"], .group_size = c["group_size"], .sym = c["sym"], .grid = QuantGrid::kAwq};
    AwqOptions opt;
    opt.n_grid = n_grid;
    opt.duo_scaling = c["duo_scaling"];
    const std::string block = c["block"];
    const std::string what = fmt::format("{} bits {} group {} sym {} duo {}", block, cfg.bits, cfg.group_size,
                                         cfg.sym, opt.duo_scaling);
    const float* ws[] = {g.wg.data(), g.wu.data()};
    const int64_t outs[] = {g.H, g.H};
    auto r = awq_search_scales(g.x_mean.data(), g.C, ws, outs, cfg, opt, golden_forward(g, block), "golden");
    ASSERT_TRUE(r) << what << ": " << r.message();
    const int best = c["best_index"];
    EXPECT_EQ(r->best_alpha, double(best) / n_grid) << what;
    const auto scales = f32_from_hex(c["scales"]);
    ASSERT_EQ(r->scales.size(), scales.size()) << what;
    for (size_t k = 0; k < scales.size(); ++k) EXPECT_EQ(r->scales[k], scales[k]) << what << " channel " << k;

    const double rms_y = c["rms_y"];
    auto tol = [&](double err) {
      const double rms_delta = 2 * kF32Unit * (2 * rms_y + std::sqrt(err));
      return 1.01 * (2 * std::sqrt(err) * rms_delta + rms_delta * rms_delta);
    };
    const std::vector<double> curve = c["err_curve"];
    ASSERT_EQ(r->err_curve.size(), curve.size()) << what;
    for (size_t i = 0; i < curve.size(); ++i) {
      EXPECT_NEAR(r->err_curve[i], curve[i], tol(curve[i])) << what << " alpha " << double(i) / n_grid;
      // On this data the derived tolerance is far below the brief's 1e-4 relative.
      EXPECT_LT(tol(curve[i]), 1e-4 * curve[i]) << what;
    }
    const double err_rtn = c["err_rtn"];
    EXPECT_NEAR(r->err_before, err_rtn, tol(err_rtn)) << what;
    EXPECT_EQ(r->err_best, r->err_curve[size_t(best)]) << what;
    if (!opt.duo_scaling) {
      EXPECT_EQ(r->err_before, r->err_curve[0]) << what;
    }
    ++cases;
  }
  EXPECT_EQ(cases, 4);
}

// Per (row, group) the golden lists the shrink levels that can win given the f32 BLAS error bound
// (gamma_gs * sum |x||d| per dot product); the C++ choice must be one of them and, where only one can win,
// the golden's max_val exactly (both compute amax * (1 - i/20) in double and round once).
TEST(AwqGolden, ClipSearchMatchesReference) {
  const Golden g = load_awq_golden();
  int cases = 0;
  for (const auto& c : g.j["clip_cases"]) {
    QuantConfig cfg{
        .bits = c["bits"], .group_size = c["group_size"], .sym = c["sym"], .grid = QuantGrid::kAwq};
    AwqOptions opt;
    opt.clip_sample_tokens = c["sample_tokens"];
    const std::string what = fmt::format("bits {} group {} sym {}", cfg.bits, cfg.group_size, cfg.sym);
    auto mv = awq_search_clip(g.wu.data(), g.H, g.C, g.x.data(), g.T, cfg, opt, "golden");
    ASSERT_TRUE(mv) << what << ": " << mv.message();
    const int64_t ng = quant_n_groups(cfg, g.C), gs = g.C / ng;
    ASSERT_EQ(mv->shape(), (Shape{g.H, ng})) << what;
    const auto want = f32_from_hex(c["max_val"]);
    const std::vector<int64_t> masks = c["masks"];
    int unique = 0, clipped = 0;
    for (int64_t r = 0; r < g.H; ++r)
      for (int64_t j = 0; j < ng; ++j) {
        const size_t k = size_t(r * ng + j);
        const float got = mv->f32()[k];
        float amax = 0;
        for (int64_t i = 0; i < gs; ++i) amax = std::max(amax, std::fabs(g.wu[size_t(r * g.C + j * gs + i)]));
        bool allowed = false;
        for (int i = 0; i < 10; ++i)
          allowed |= ((masks[k] >> i) & 1) && got == float(double(amax) * (1.0 - i / 20.0));
        EXPECT_TRUE(allowed) << what << " row " << r << " group " << j << ": " << got;
        if (std::popcount(uint64_t(masks[k])) == 1) {
          EXPECT_EQ(got, want[k]) << what << " row " << r << " group " << j;
          ++unique;
        }
        clipped += got < amax;
      }
    EXPECT_GT(unique, 0.9 * double(g.H * ng)) << what;  // the comparison is not vacuous
    EXPECT_GT(clipped, 0) << what;
    ++cases;
  }
  EXPECT_EQ(cases, 2);
}

// ------------------------------------------------------------------------------------------------ properties

struct Problem {
  int64_t T = 192, C = 128, H = 48;
  std::vector<float> x, w0, w1, x_mean;
};

Problem make_problem(uint64_t seed) {
  Problem p;
  std::mt19937_64 rng(seed);
  p.x = outlier_activations(p.T, p.C, rng);
  p.w0 = random_normal(p.H * p.C, rng, 0.05f);
  p.w1 = random_normal(p.H * p.C, rng, 0.05f);
  auto m = awq_mean_abs(p.x.data(), p.T, p.C, "problem");
  EXPECT_TRUE(m) << m.message();
  p.x_mean = *m;
  return p;
}

constexpr QuantConfig kAwq4{.bits = 4, .group_size = 32, .sym = false, .grid = QuantGrid::kAwq};

// On activations with outlier channels, protecting those channels is what AWQ is for: the searched scales
// must cut the block error well below plain RTN (on this data 6x; we ask for 2x), and alpha 0 is RTN.
TEST(Awq, SearchLowersBlockErrorOnOutlierChannels) {
  const Problem p = make_problem(1);
  const float* ws[] = {p.w0.data(), p.w1.data()};
  const int64_t outs[] = {p.H, p.H};
  auto r = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {},
                             concat_forward_f32(p.x, p.T, p.C, {p.H, p.H}), "model.layers.0.mlp.gate_up");
  ASSERT_TRUE(r) << r.message();
  EXPECT_GT(r->best_alpha, 0.0);
  EXPECT_LT(r->err_best, 0.5 * r->err_before);
  EXPECT_EQ(r->err_before, r->err_curve[0]);
  EXPECT_EQ(r->err_best, *std::min_element(r->err_curve.begin(), r->err_curve.end()));
  ASSERT_EQ(r->err_curve.size(), 20u);
  // The largest scales are the outlier channels (3, 32, 61, 90, 119).
  const auto top = r->top_scales(5);
  ASSERT_EQ(top.size(), 5u);
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_EQ(top[i].first % 29, 3) << "rank " << i << " channel " << top[i].first;
    if (i > 0) {
      EXPECT_GE(top[i - 1].second, top[i].second);
    }
  }

  // RTN of the unscaled weights, through rtn_quantize, reproduces err_before: alpha 0 really is s = 1.
  std::vector<float> d0, d1;
  for (auto [w, d] : {std::pair{&p.w0, &d0}, std::pair{&p.w1, &d1}}) {
    auto q = rtn_quantize(w->data(), p.H, p.C, kAwq4, "rtn");
    ASSERT_TRUE(q) << q.message();
    const Tensor t = q->dequantize();
    d->assign(t.f32(), t.f32() + t.numel());
  }
  Tensor y0, yq;
  const float* wq[] = {d0.data(), d1.data()};
  auto fwd = concat_forward_f32(p.x, p.T, p.C, {p.H, p.H});
  ASSERT_TRUE(fwd(ws, y0).is_ok());
  ASSERT_TRUE(fwd(wq, yq).is_ok());
  double e = 0;
  for (int64_t i = 0; i < y0.numel(); ++i) e += std::pow(double(y0.f32()[i]) - double(yq.f32()[i]), 2);
  EXPECT_EQ(r->err_before, e / double(y0.numel()));
}

// s = x_mean^a / sqrt(max * min) is homogeneous of degree 0 in x_mean: multiplying every channel's
// statistic by k multiplies x^a, max and min by k^a. So a uniform rescale of the activations (k = 1024
// keeps x_mean * k exact) changes neither the scales nor, with the same block, the error curve; the double
// computations differ by a few double ulps, which cannot change the once-rounded f32 scales unless one
// lies within ~1e-15 of a rounding midpoint. Also max(s) * min(s) = 1 up to the two f32 roundings.
TEST(Awq, ScalesAreInvariantToUniformActivationRescaling) {
  const Problem p = make_problem(2);
  const float* ws[] = {p.w0.data(), p.w1.data()};
  const int64_t outs[] = {p.H, p.H};
  auto fwd = concat_forward_f32(p.x, p.T, p.C, {p.H, p.H});
  std::vector<float> big = p.x_mean;
  for (auto& v : big) v *= 1024.0f;
  auto a = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {}, fwd, "a");
  auto b = awq_search_scales(big.data(), p.C, ws, outs, kAwq4, {}, fwd, "b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->best_alpha, b->best_alpha);
  EXPECT_EQ(a->scales, b->scales);
  EXPECT_EQ(a->err_curve, b->err_curve);
  const auto [lo, hi] = std::minmax_element(a->scales.begin(), a->scales.end());
  EXPECT_NEAR(double(*lo) * double(*hi), 1.0, 2.01 * kF32Unit);
  EXPECT_LT(*lo, 1.0f);
  EXPECT_GT(*hi, 1.0f);
}

// A dead channel (x_mean = 0) gets the floor 1e-4 before normalisation (0^a = 0 for a > 0), so it holds the
// smallest scale, finite and positive; at alpha 0 it is 0^0 = 1 like every other channel.
TEST(Awq, DeadChannelGetsTheClampedScale) {
  Problem p = make_problem(3);
  p.x_mean[7] = 0.0f;
  const float* ws[] = {p.w0.data()};
  const int64_t outs[] = {p.H};
  auto r = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {},
                             concat_forward_f32(p.x, p.T, p.C, {p.H}), "dead");
  ASSERT_TRUE(r) << r.message();
  ASSERT_GT(r->best_alpha, 0.0);
  const float smin = *std::min_element(r->scales.begin(), r->scales.end());
  EXPECT_EQ(r->scales[7], smin);
  EXPECT_GT(smin, 0.0f);
  // s_7 = 1e-4 / sqrt(max_raw * 1e-4) = sqrt(1e-4 / max_raw), max_raw = max x_mean^alpha.
  const double max_raw = std::pow(double(*std::max_element(p.x_mean.begin(), p.x_mean.end())), r->best_alpha);
  EXPECT_NEAR(r->scales[7], std::sqrt(1e-4 / max_raw), 2 * kF32Unit * std::sqrt(1e-4 / max_raw));
}

// Scale equivalence (W diag s)(diag(1/s) x) = W x, with the searched (non-trivial) scales, in f32 via BLAS.
// The scaled product's terms are fl(W s) fl(x / s) = W x (1 + d1)(1 + d2), |d| <= u; each C-term dot product
// is within gamma_C of its own exact value in any order; so per output
//   |y_scaled - y| <= (gamma_C (1 + (1 + u)^2) + 2u + u^2) A <= (2 gamma_C + 3u) A,  A = sum_c |W||x|.
TEST(Awq, ScaleEquivalenceWithinRoundingBound) {
  const Problem p = make_problem(4);
  const float* ws[] = {p.w0.data()};
  const int64_t outs[] = {p.H};
  auto r = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {},
                             concat_forward_f32(p.x, p.T, p.C, {p.H}), "eq");
  ASSERT_TRUE(r) << r.message();
  const auto [lo, hi] = std::minmax_element(r->scales.begin(), r->scales.end());
  ASSERT_GT(*hi / *lo, 4.0f) << "scales too uniform to test anything";
  std::vector<float> ws_scaled = p.w0, xs = p.x;
  awq_apply_scales(ws_scaled.data(), p.H, r->scales);
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t c = 0; c < p.C; ++c) xs[size_t(t * p.C + c)] /= r->scales[size_t(c)];
  std::vector<float> y(static_cast<size_t>(p.T * p.H)), ys(y.size());
  ops::linear(p.x.data(), p.T, p.C, p.C, p.w0.data(), p.H, nullptr, y.data(), p.H);
  ops::linear(xs.data(), p.T, p.C, p.C, ws_scaled.data(), p.H, nullptr, ys.data(), p.H);
  const double factor = 2 * gamma_f32(p.C) + 3 * kF32Unit;
  double worst = 0;
  for (int64_t t = 0; t < p.T; ++t)
    for (int64_t o = 0; o < p.H; ++o) {
      double A = 0;
      for (int64_t c = 0; c < p.C; ++c)
        A += std::fabs(double(p.x[size_t(t * p.C + c)]) * double(p.w0[size_t(o * p.C + c)]));
      const double d = std::fabs(double(y[size_t(t * p.H + o)]) - double(ys[size_t(t * p.H + o)]));
      ASSERT_LE(d, factor * A) << "token " << t << " out " << o;
      worst = std::max(worst, d / A);
    }
  EXPECT_GT(worst, 0.0);  // the scaling really changed the arithmetic
}

// Powers of two: multiplying or dividing by 2^k is exact in f32 (no overflow/underflow here), and it commutes
// with every rounding of the norm and the matmul, so a correct fold reproduces the block output bit for bit
// while a fold on the wrong axis or with the wrong direction changes it grossly.
std::vector<float> power_of_two_scales(int64_t C, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> e(-6, 6);
  std::vector<float> s(static_cast<size_t>(C));
  for (auto& v : s) v = std::ldexp(1.0f, e(rng));
  return s;
}

// RMSNorm -> linear: y = W (rms_norm(x) * gamma) = (W s)(rms_norm(x) * gamma / s).
TEST(Awq, FoldIntoNormGivesIdenticalOutputs) {
  const int64_t T = 16, C = 64, N = 24;
  std::mt19937_64 rng(5);
  const auto x = random_normal(T * C, rng, 1.0f);
  auto gamma = random_normal(C, rng, 0.5f);
  auto W = random_normal(N * C, rng, 0.1f);
  const auto s = power_of_two_scales(C, 6);
  auto block = [&](const std::vector<float>& g, const std::vector<float>& w) {
    std::vector<float> n(static_cast<size_t>(T * C)), y(static_cast<size_t>(T * N));
    ops::rms_norm(x.data(), T, C, g.data(), 1e-5f, n.data());
    ops::linear(n.data(), T, C, C, w.data(), N, nullptr, y.data(), N);
    return y;
  };
  const auto y0 = block(gamma, W);
  awq_fold_into_norm(gamma.data(), s);
  awq_apply_scales(W.data(), N, s);
  EXPECT_EQ(block(gamma, W), y0);
}

// Linear (+ bias) -> linear: h = W1 x + b1; y = W2 h = (W2 s)((W1 x + b1) / s) with W1's rows and b1 / s.
TEST(Awq, FoldIntoPreviousLinearRowsGivesIdenticalOutputs) {
  const int64_t T = 16, K = 40, C = 64, N = 24;
  std::mt19937_64 rng(7);
  const auto x = random_normal(T * K, rng, 1.0f);
  auto W1 = random_normal(C * K, rng, 0.1f);
  auto b1 = random_normal(C, rng, 0.1f);
  auto W2 = random_normal(N * C, rng, 0.1f);
  const auto s = power_of_two_scales(C, 8);
  auto block = [&](const std::vector<float>& w1, const std::vector<float>& b, const std::vector<float>& w2) {
    std::vector<float> h(static_cast<size_t>(T * C)), y(static_cast<size_t>(T * N));
    ops::linear(x.data(), T, K, K, w1.data(), C, b.data(), h.data(), C);
    ops::linear(h.data(), T, C, C, w2.data(), N, nullptr, y.data(), N);
    return y;
  };
  const auto y0 = block(W1, b1, W2);
  ASSERT_TRUE(awq_check_fold_into_linear_rows(C, C, "v_proj", "o_proj").is_ok());
  awq_fold_into_linear_rows(W1.data(), K, b1.data(), s);
  awq_apply_scales(W2.data(), N, s);
  EXPECT_EQ(block(W1, b1, W2), y0);
}

// Grouped-query attention: v_proj has n_kv * hd outputs, o_proj reads n_heads * hd; no row fold exists.
TEST(Awq, FoldCheckRejectsGroupedQueryShapes) {
  const Status st = awq_check_fold_into_linear_rows(192, 576, "model.layers.3.self_attn.v_proj",
                                                    "model.layers.3.self_attn.o_proj");
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("model.layers.3.self_attn.v_proj"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("grouped-query"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("192"), std::string::npos) << st.message();
  EXPECT_FALSE(awq_check_fold_into_linear_rows(576, 100, "a", "b").is_ok());
}

// Recomputes the per-(row, group) clip errors in double for shrink levels 0..n-1 and checks the chosen
// max_val is a level that can win under the f32 BLAS bound (gamma_gs * sum |x||d| per dot product, squared
// and averaged: 2|e| de + de^2; x2 for slack), i.e. that its error does not exceed level 0's (no clipping)
// or any other level's beyond the bound. Returns how many groups were clipped.
int check_clip_choice(const float* W, int64_t out, int64_t C,
                      const std::vector<float>& xs /*[ts, C] sampled*/, int64_t ts, const QuantConfig& cfg,
                      const Tensor& mv, const std::string& what) {
  const int64_t ng = quant_n_groups(cfg, C), gs = C / ng;
  const int maxq = quant_maxq(cfg.bits);
  const double gamma = gamma_f32(gs);
  int clipped = 0;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < ng; ++j) {
      const float* w = W + r * C + j * gs;
      float amax = 0;
      for (int64_t k = 0; k < gs; ++k) amax = std::max(amax, std::fabs(w[k]));
      auto level_err = [&](float m, double& bound) {
        std::vector<float> wc(static_cast<size_t>(gs)), d(static_cast<size_t>(gs));
        for (int64_t k = 0; k < gs; ++k) wc[size_t(k)] = std::clamp(w[k], -m, m);
        auto p = quant_group_params(wc.data(), gs, cfg);
        EXPECT_TRUE(p) << p.message();
        for (int64_t k = 0; k < gs; ++k)
          d[size_t(k)] = w[k] - quant_dequant(quant_code(wc[size_t(k)], *p, maxq), *p);
        double err = 0;
        bound = 0;
        for (int64_t t = 0; t < ts; ++t) {
          double e = 0, a = 0;
          for (int64_t k = 0; k < gs; ++k) {
            e += double(xs[size_t(t * C + j * gs + k)]) * double(d[size_t(k)]);
            a += std::fabs(double(xs[size_t(t * C + j * gs + k)]) * double(d[size_t(k)]));
          }
          err += e * e;
          bound += 2 * std::fabs(e) * gamma * a + gamma * a * gamma * a;
        }
        bound = 2 * bound / double(ts);
        return err / double(ts);
      };
      const float got = mv.f32()[r * ng + j];
      double b_got = 0, b_0 = 0;
      const double e_got = level_err(got, b_got);
      const double e_0 = level_err(amax, b_0);
      EXPECT_LE(e_got, e_0 + b_got + b_0) << what << " row " << r << " group " << j;
      for (int i = 1; i < 10; ++i) {
        double b_i = 0;
        const double e_i = level_err(float(double(amax) * (1.0 - i / 20.0)), b_i);
        EXPECT_LE(e_got, e_i + b_got + b_i) << what << " row " << r << " group " << j << " level " << i;
      }
      clipped += got < amax;
    }
  return clipped;
}

// Clipping never raises the per-group output error versus no clipping (level 0 is in the grid and ties keep
// it), the chosen level is the best one, and applying the clip bounds every group by its max_val while the
// no-clip values leave W unchanged.
TEST(Awq, ClipNeverIncreasesGroupErrorAndApplies) {
  const Problem p = make_problem(9);
  auto mv =
      awq_search_clip(p.w0.data(), p.H, p.C, p.x.data(), p.T, kAwq4, {}, "model.layers.0.mlp.down_proj");
  ASSERT_TRUE(mv) << mv.message();
  ASSERT_EQ(mv->shape(), (Shape{p.H, 4}));
  const int clipped = check_clip_choice(p.w0.data(), p.H, p.C, p.x, p.T, kAwq4, *mv, "clip");
  EXPECT_GT(clipped, 0);

  std::vector<float> W = p.w0;
  ASSERT_TRUE(awq_apply_clip(W.data(), p.H, p.C, *mv, 32, "clip").is_ok());
  for (int64_t r = 0; r < p.H; ++r)
    for (int64_t c = 0; c < p.C; ++c) {
      const float m = mv->f32()[r * 4 + c / 32];
      const float w0 = p.w0[size_t(r * p.C + c)], w = W[size_t(r * p.C + c)];
      EXPECT_LE(std::fabs(w), m);
      EXPECT_EQ(w, std::fabs(w0) <= m ? w0 : std::copysign(m, w0));
    }
  // Clip values equal to each group's amax change nothing.
  Tensor amax(DType::kF32, {p.H, 4});
  for (int64_t r = 0; r < p.H; ++r)
    for (int64_t c = 0; c < p.C; ++c)
      amax.f32()[r * 4 + c / 32] = std::max(amax.f32()[r * 4 + c / 32], std::fabs(p.w0[size_t(r * p.C + c)]));
  W = p.w0;
  ASSERT_TRUE(awq_apply_clip(W.data(), p.H, p.C, amax, 32, "clip").is_ok());
  EXPECT_EQ(W, p.w0);
}

// Tokens are subsampled with stride max(1, T / clip_sample_tokens) starting at 0: rows off the stride
// cannot influence the result, and batching rows (7, not dividing 48) still gives valid choices.
TEST(Awq, ClipUsesStridedTokenSubsampleAndAnyRowBatch) {
  const Problem p = make_problem(10);
  AwqOptions opt;
  opt.clip_sample_tokens = 64;  // T = 192 -> step 3, 64 tokens
  opt.clip_batch_rows = 7;
  auto a = awq_search_clip(p.w1.data(), p.H, p.C, p.x.data(), p.T, kAwq4, opt, "sub");
  std::vector<float> x2 = p.x;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> n(0.0f, 100.0f);
  for (int64_t t = 0; t < p.T; ++t)
    if (t % 3 != 0)
      for (int64_t c = 0; c < p.C; ++c) x2[size_t(t * p.C + c)] = n(rng);
  auto b = awq_search_clip(p.w1.data(), p.H, p.C, x2.data(), p.T, kAwq4, opt, "sub");
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->shape(), b->shape());
  for (int64_t i = 0; i < a->numel(); ++i) EXPECT_EQ(a->f32()[i], b->f32()[i]) << i;
  std::vector<float> xs;
  for (int64_t t = 0; t < p.T; t += 3)
    xs.insert(xs.end(), p.x.begin() + t * p.C, p.x.begin() + (t + 1) * p.C);
  EXPECT_GT(check_clip_choice(p.w1.data(), p.H, p.C, xs, 64, kAwq4, *a, "batched"), 0);
}

// Ties keep the first candidate, as the references' strict '<': a block whose output ignores the weights
// has error 0 at every alpha, so alpha 0 (s = 1) wins; a group whose input channels are all zero has error
// 0 at every shrink, so it is not clipped.
TEST(Awq, TiesKeepTheFirstCandidate) {
  Problem p = make_problem(16);
  const float* ws[] = {p.w0.data()};
  const int64_t outs[] = {p.H};
  BlockForward constant = [](std::span<const float* const>, Tensor& y) {
    y = Tensor(DType::kF32, {8});
    return Status::ok();
  };
  auto r = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {}, constant, "tie");
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->best_alpha, 0.0);
  EXPECT_EQ(r->scales, std::vector<float>(size_t(p.C), 1.0f));

  for (int64_t t = 0; t < p.T; ++t) std::fill_n(p.x.begin() + t * p.C + 32, 32, 0.0f);  // group 1 silent
  auto mv = awq_search_clip(p.w0.data(), p.H, p.C, p.x.data(), p.T, kAwq4, {}, "tie");
  ASSERT_TRUE(mv) << mv.message();
  int clipped_elsewhere = 0;
  for (int64_t row = 0; row < p.H; ++row) {
    float amax = 0;
    for (int64_t c = 32; c < 64; ++c) amax = std::max(amax, std::fabs(p.w0[size_t(row * p.C + c)]));
    EXPECT_EQ(mv->f32()[row * 4 + 1], amax) << "row " << row;
    float amax0 = 0;
    for (int64_t c = 0; c < 32; ++c) amax0 = std::max(amax0, std::fabs(p.w0[size_t(row * p.C + c)]));
    clipped_elsewhere += mv->f32()[row * 4] < amax0;
  }
  EXPECT_GT(clipped_elsewhere, 0);
}

// ------------------------------------------------------------------------------------------------ bad input

TEST(Awq, NanInCalibrationInputNamesTheLayer) {
  Problem p = make_problem(12);
  p.x[size_t(5 * p.C + 17)] = std::nanf("");
  auto m = awq_mean_abs(p.x.data(), p.T, p.C, "model.layers.2.self_attn.qkv");
  ASSERT_FALSE(m);
  EXPECT_NE(m.message().find("model.layers.2.self_attn.qkv"), std::string::npos) << m.message();
  EXPECT_NE(m.message().find("[5, 17]"), std::string::npos) << m.message();
  auto c = awq_search_clip(p.w0.data(), p.H, p.C, p.x.data(), p.T, kAwq4, {}, "model.layers.2.mlp.down_proj");
  ASSERT_FALSE(c);
  EXPECT_NE(c.message().find("model.layers.2.mlp.down_proj"), std::string::npos) << c.message();
  std::vector<float> xm = make_problem(12).x_mean;
  xm[9] = std::numeric_limits<float>::infinity();
  const float* ws[] = {p.w0.data()};
  const int64_t outs[] = {p.H};
  auto s =
      awq_search_scales(xm.data(), p.C, ws, outs, kAwq4, {}, concat_forward_f32(p.x, p.T, p.C, {p.H}), "L9");
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("L9: x_mean[9]"), std::string::npos) << s.message();
}

TEST(Awq, EmptyOrMismatchedWeightListIsAnError) {
  const Problem p = make_problem(13);
  auto fwd = concat_forward_f32(p.x, p.T, p.C, {});
  auto r = awq_search_scales(p.x_mean.data(), p.C, {}, {}, kAwq4, {}, fwd, "model.layers.1.mlp");
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("model.layers.1.mlp"), std::string::npos) << r.message();
  const float* ws[] = {p.w0.data(), p.w1.data()};
  const int64_t outs[] = {p.H};
  auto r2 = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {}, fwd, "model.layers.1.mlp");
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.message().find("2 weight matrices but 1"), std::string::npos) << r2.message();
}

TEST(Awq, GroupSizeNotDividingChannelsIsTheConfigError) {
  const Problem p = make_problem(14);
  QuantConfig cfg = kAwq4;
  cfg.group_size = 128;
  const int64_t C = 96;  // use the first 96 channels of each row: stride-free sub-problem
  std::vector<float> w(static_cast<size_t>(p.H * C)), x(static_cast<size_t>(p.T * C));
  for (int64_t r = 0; r < p.H; ++r) std::copy_n(p.w0.begin() + r * p.C, C, w.begin() + r * C);
  for (int64_t t = 0; t < p.T; ++t) std::copy_n(p.x.begin() + t * p.C, C, x.begin() + t * C);
  const std::string want = validate_quant_config(cfg, C, "model.layers.4.mlp.up_proj").message();
  ASSERT_NE(want.find("does not divide in_features 96"), std::string::npos) << want;
  const float* ws[] = {w.data()};
  const int64_t outs[] = {p.H};
  auto r = awq_search_scales(p.x_mean.data(), C, ws, outs, cfg, {}, concat_forward_f32(x, p.T, C, {p.H}),
                             "model.layers.4.mlp.up_proj");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(), want);
  auto c = awq_search_clip(w.data(), p.H, C, x.data(), p.T, cfg, {}, "model.layers.4.mlp.up_proj");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.message(), want);
}

TEST(Awq, ForwardErrorsAndShapeChangesPropagateWithTheLayer) {
  const Problem p = make_problem(15);
  const float* ws[] = {p.w0.data()};
  const int64_t outs[] = {p.H};
  BlockForward failing = [](std::span<const float* const>, Tensor&) { return error("attention exploded"); };
  auto r = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {}, failing, "model.layers.5.self_attn");
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("model.layers.5.self_attn: block forward: attention exploded"),
            std::string::npos)
      << r.message();
  int calls = 0;
  BlockForward shrinking = [&](std::span<const float* const>, Tensor& y) {
    y = Tensor(DType::kF32, {calls++ == 0 ? int64_t(4) : int64_t(3)});
    return Status::ok();
  };
  auto r2 = awq_search_scales(p.x_mean.data(), p.C, ws, outs, kAwq4, {}, shrinking, "L5");
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.message().find("L5: block forward returned 3 values"), std::string::npos) << r2.message();
}

TEST(Awq, ApplyClipRejectsWrongShape) {
  std::vector<float> W(4 * 64, 0.5f);
  Tensor mv(DType::kF32, {4, 3});
  const Status st = awq_apply_clip(W.data(), 4, 64, mv, 32, "model.layers.6.mlp.down_proj");
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("model.layers.6.mlp.down_proj"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("[4, 3]"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace qforge::quant
