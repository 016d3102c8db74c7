#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "ops/ops.h"

namespace qforge::ops {
namespace {

constexpr double kF32Eps = 1.1920929e-07;

std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// BLAS linear vs the double-accumulation reference. Bound: a float32 dot product of length K has
// |error| <= K * eps * sum|x_k w_k| (Higham, deterministic worst case).
TEST(Ops, LinearMatchesReference) {
  for (auto [M, K, N] : {std::tuple{1, 576, 192}, std::tuple{7, 64, 33}, std::tuple{65, 576, 1536}}) {
    auto x = random_vec(size_t(M * K), 1), w = random_vec(size_t(N * K), 2), b = random_vec(size_t(N), 3);
    std::vector<float> y(size_t(M * N)), yr(size_t(M * N));
    linear(x.data(), M, K, K, w.data(), N, b.data(), y.data(), N);
    linear_ref(x.data(), M, K, K, w.data(), N, b.data(), yr.data(), N);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double abs_sum = 0;
        for (int k = 0; k < K; ++k) abs_sum += std::fabs(double(x[size_t(m * K + k)]) * w[size_t(n * K + k)]);
        const double bound = (K + 2) * kF32Eps * (abs_sum + std::fabs(b[size_t(n)]));
        ASSERT_NEAR(y[size_t(m * N + n)], yr[size_t(m * N + n)], bound) << M << "x" << K << "x" << N;
      }
  }
}

TEST(Ops, RmsNormMatchesFormula) {
  const int D = 576;
  auto x = random_vec(2 * D, 4, 3.0f), g = random_vec(D, 5);
  std::vector<float> y(2 * D);
  rms_norm(x.data(), 2, D, g.data(), 1e-5f, y.data());
  for (int r = 0; r < 2; ++r) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(x[size_t(r * D + d)]) * x[size_t(r * D + d)];
    const double inv = 1.0 / std::sqrt(ss / D + 1e-5);
    for (int d = 0; d < D; ++d) {
      const double want = g[size_t(d)] * x[size_t(r * D + d)] * inv;
      EXPECT_NEAR(y[size_t(r * D + d)], want, (D + 4) * kF32Eps * std::fabs(want) + 1e-30);
    }
  }
}

// RoPE rotates each (i, i + hd/2) pair: norms are preserved and position 0 is the identity.
TEST(Ops, RopeRotatesHalfPairs) {
  const int T = 3, nh = 2, hd = 8, half = hd / 2;
  auto x = random_vec(T * nh * hd, 6);
  auto orig = x;
  std::vector<float> c(T * half), s(T * half);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const double a = t * std::pow(10000.0, -2.0 * i / hd);
      c[size_t(t * half + i)] = float(std::cos(a));
      s[size_t(t * half + i)] = float(std::sin(a));
    }
  rope_apply(x.data(), T, nh, hd, c.data(), s.data());
  for (int h = 0; h < nh; ++h)
    for (int i = 0; i < hd; ++i) EXPECT_EQ(x[size_t(h * hd + i)], orig[size_t(h * hd + i)]);
  for (int t = 1; t < T; ++t)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < half; ++i) {
        const size_t a = size_t((t * nh + h) * hd + i), b = a + half;
        const float cc = c[size_t(t * half + i)], ss = s[size_t(t * half + i)];
        EXPECT_FLOAT_EQ(x[a], orig[a] * cc - orig[b] * ss);
        EXPECT_FLOAT_EQ(x[b], orig[b] * cc + orig[a] * ss);
      }
}

// Blocked causal GQA attention vs the direct double-precision reference, with and without a
// cached prefix (pos0 > 0), across query-block boundaries (T > 64).
TEST(Ops, AttentionCausalMatchesReference) {
  for (auto [T, pos0] : {std::pair{1, 0}, std::pair{1, 9}, std::pair{70, 0}, std::pair{130, 5}}) {
    const int nh = 6, nkv = 2, hd = 16;
    auto q = random_vec(size_t(T * nh * hd), 7), k = random_vec(size_t((pos0 + T) * nkv * hd), 8),
         v = random_vec(size_t((pos0 + T) * nkv * hd), 9);
    std::vector<float> o(size_t(T * nh * hd)), oref(o.size());
    attention_causal(q.data(), T, pos0, k.data(), v.data(), nh, nkv, hd, o.data());
    attention_causal_ref(q.data(), T, pos0, k.data(), v.data(), nh, nkv, hd, oref.data());
    // Outputs are convex combinations of v (|v| <~ 5): errors from f32 score/exp/sum rounding over
    // n <= 135 keys stay below n * eps * max|v| * a small constant.
    const double bound = 8.0 * (pos0 + T) * kF32Eps * 5.0;
    for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], oref[i], bound) << "T=" << T << " pos0=" << pos0;
  }
}

// Vectorised logsumexp / KL against the double references. f32 exp has <= 1 ulp error (Highway's
// stated bound) on each term and the f32 partial sums of <= 1024 terms add at most 1024 * eps
// relative, so both agree to 2 * 1024 * eps relative (logsumexp: absolute, after the log).
TEST(Ops, LogsumexpAndKlRowsMatchReference) {
  const int64_t V = 49152 + 7;  // a tail that is not a multiple of the vector width
  auto p = random_vec(size_t(V), 21, 4.0f), q = random_vec(size_t(V), 22, 4.0f);
  int64_t am = -1, am_ref = -2;
  const double lp = logsumexp_row(p.data(), V, &am), lp_ref = logsumexp_row_ref(p.data(), V, &am_ref);
  EXPECT_EQ(am, am_ref);
  const double bound = 2.0 * 1024 * kF32Eps;
  EXPECT_NEAR(lp, lp_ref, bound);
  int64_t dummy;
  const double lq = logsumexp_row_ref(q.data(), V, &dummy);
  const double kl = kl_row(p.data(), lp_ref, q.data(), lq, V), kl_ref = kl_row_ref(p.data(), lp_ref, q.data(), lq, V);
  // Terms p_i * d_i with |d_i| <= ~40: absolute error <= bound * sum p_i |d_i|, and sum p_i |d_i| <= 40.
  EXPECT_NEAR(kl, kl_ref, bound * 40.0);
  EXPECT_GT(kl_ref, 1.0);  // two unrelated random rows are far apart
  EXPECT_NEAR(kl_row(p.data(), lp_ref, p.data(), lp_ref, V), 0.0, bound);
}

TEST(Ops, SoftmaxRowsSumToOneAndSurviveLargeInputs) {
  std::vector<float> x = {1000.f, 1001.f, 999.f, -INFINITY, 0.f, 0.f, 0.f, 0.f};
  softmax_rows(x.data(), 2, 4, 4);
  EXPECT_NEAR(x[0] + x[1] + x[2] + x[3], 1.0, 1e-6);
  EXPECT_EQ(x[3], 0.0f);
  EXPECT_GT(x[1], x[0]);
  for (int i = 4; i < 8; ++i) EXPECT_FLOAT_EQ(x[size_t(i)], 0.25f);
}

}  // namespace
}  // namespace qforge::ops
