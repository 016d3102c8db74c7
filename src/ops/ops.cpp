#include "ops/ops.h"

#include <cblas.h>
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
}

namespace qforge::ops {

void linear(const float* x, int64_t M, int64_t K, int64_t ldx, const float* w, int64_t N, const float* bias,
            float* y, int64_t ldy) {
  if (M == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(N), int(K), 1.0f, w, int(K), x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, x, int(ldx), w, int(K),
                0.0f, y, int(ldy));
  }
  if (bias)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * ldy + n] += bias[n];
}

void linear_ref(const float* x, int64_t M, int64_t K, int64_t ldx, const float* w, int64_t N,
                const float* bias, float* y, int64_t ldy) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[m * ldx + k]) * double(w[n * K + k]);
      y[m * ldy + n] = float(acc) + (bias ? bias[n] : 0.0f);
    }
}

void rms_norm(const float* x, int64_t M, int64_t D, const float* gamma, float eps, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * D;
    float* yr = y + m * D;
    float ss = 0.f;
    for (int64_t d = 0; d < D; ++d) ss += xr[d] * xr[d];
    const float inv = 1.0f / std::sqrt(ss / float(D) + eps);
    for (int64_t d = 0; d < D; ++d) yr[d] = gamma[d] * (xr[d] * inv);
  }
}

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t hd, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

namespace hn = hwy::HWY_NAMESPACE;

// Softmax of one row in place, exp vectorised with Highway (max error 1 ulp on its valid range;
// inputs are x - max <= 0, so no overflow).
static void softmax_row(float* r, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t L = int64_t(hn::Lanes(d));
  int64_t i = 0;
  auto vmax = hn::Set(d, -FLT_MAX);
  for (; i + L <= n; i += L) vmax = hn::Max(vmax, hn::LoadU(d, r + i));
  float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
  for (; i < n; ++i) mx = std::max(mx, r[i]);
  const auto vm = hn::Set(d, mx);
  const auto vlo = hn::Set(d, -FLT_MAX);  // -inf (masked) inputs: Exp's valid range starts at -FLT_MAX
  auto vsum = hn::Zero(d);
  for (i = 0; i + L <= n; i += L) {
    const auto e = hn::Exp(d, hn::Max(hn::Sub(hn::LoadU(d, r + i), vm), vlo));
    hn::StoreU(e, d, r + i);
    vsum = hn::Add(vsum, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, vsum));
  for (; i < n; ++i) sum += (r[i] = std::exp(r[i] - mx));
  const auto vinv = hn::Set(d, 1.0f / sum);
  for (i = 0; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(d, r + i), vinv), d, r + i);
  for (; i < n; ++i) r[i] *= 1.0f / sum;
}

void softmax_rows(float* x, int64_t M, int64_t N, int64_t ld) {
  for (int64_t m = 0; m < M; ++m) softmax_row(x + m * ld, N);
}

void silu_mul(const float* g, const float* u, float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void set_num_threads(int n) {
  if (n > 0) openblas_set_num_threads(n);
}
int num_threads() { return openblas_get_num_threads(); }

}  // namespace qforge::ops


namespace qforge::ops {

void attention_causal(const float* q, int64_t T, int64_t pos0, const float* k, const float* v, int64_t nh,
                      int64_t nkv, int64_t hd, float* out) {
  // Query rows in blocks, so each block only scores the keys it can see (about half the work of a
  // full T x T product at long contexts).
  // 128 rows: K is packed once per block by BLAS, so larger blocks copy less; the masked half of the
  // diagonal block is wasted work, so not too large.
  constexpr int64_t kQueryBlock = 128;
  const int64_t Q = nh * hd, KV = nkv * hd, group = nh / nkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<float> s(size_t(kQueryBlock * (pos0 + T)));
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / group;
    for (int64_t i0 = 0; i0 < T; i0 += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, T - i0);
      const int64_t nk = pos0 + i0 + rows;
      // s[rows, nk] = q_blk[rows, hd] @ k[0:nk, hd]^T * scale
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(nk), int(hd), scale,
                  q + i0 * Q + h * hd, int(Q), k + g * hd, int(KV), 0.0f, s.data(), int(nk));
      for (int64_t r = 0; r < rows; ++r) {
        // Causal mask: row r sees keys [0, visible); the rest get probability 0.
        const int64_t visible = pos0 + i0 + r + 1;
        float* sr = s.data() + r * nk;
        softmax_row(sr, visible);
        std::fill(sr + visible, sr + nk, 0.0f);
      }
      // out_blk[rows, hd] = s[rows, nk] @ v[0:nk, hd]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(hd), int(nk), 1.0f, s.data(), int(nk),
                  v + g * hd, int(KV), 0.0f, out + i0 * Q + h * hd, int(Q));
    }
  }
}

void attention_causal_ref(const float* q, int64_t T, int64_t pos0, const float* k, const float* v, int64_t nh,
                          int64_t nkv, int64_t hd, float* out) {
  const int64_t Q = nh * hd, KV = nkv * hd, group = nh / nkv;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / group, n = pos0 + t + 1;
      std::vector<double> p(static_cast<size_t>(n));
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t d = 0; d < hd; ++d) acc += double(q[t * Q + h * hd + d]) * k[j * KV + g * hd + d];
        p[size_t(j)] = acc / std::sqrt(double(hd));
        mx = std::max(mx, p[size_t(j)]);
      }
      double sum = 0;
      for (auto& e : p) sum += (e = std::exp(e - mx));
      for (int64_t d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += p[size_t(j)] * v[j * KV + g * hd + d];
        out[t * Q + h * hd + d] = float(acc / sum);
      }
    }
}

}  // namespace qforge::ops

namespace qforge::ops {

namespace {
constexpr int64_t kSumChunk = 1024;  // f32 lane sums of at most 1024 terms, then added in f64

// Index of the largest of x[n] (first on ties); its value in *mx.
int64_t row_argmax(const float* x, int64_t n, float* mx) {
  int64_t am = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[am]) am = i;
  *mx = x[am];
  return am;
}
}

double logsumexp_row(const float* x, int64_t n, int64_t* argmax) {
  float mx;
  *argmax = row_argmax(x, n, &mx);
  const hn::ScalableTag<float> d;
  const int64_t L = int64_t(hn::Lanes(d));
  const auto vm = hn::Set(d, mx);
  const auto vlo = hn::Set(d, -FLT_MAX);
  double total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kSumChunk) {
    const int64_t c1 = std::min(n, c0 + kSumChunk);
    auto acc = hn::Zero(d);
    int64_t i = c0;
    for (; i + L <= c1; i += L) acc = hn::Add(acc, hn::Exp(d, hn::Max(hn::Sub(hn::LoadU(d, x + i), vm), vlo)));
    double part = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; i < c1; ++i) part += std::exp(double(x[i]) - mx);
    total += part;
  }
  return double(mx) + std::log(total);
}

double kl_row(const float* p, double p_lse, const float* q, double q_lse, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t L = int64_t(hn::Lanes(d));
  const auto vplse = hn::Set(d, float(p_lse));
  const auto vdlse = hn::Set(d, float(p_lse - q_lse));
  const auto vlo = hn::Set(d, -FLT_MAX);
  double total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kSumChunk) {
    const int64_t c1 = std::min(n, c0 + kSumChunk);
    auto acc = hn::Zero(d);
    int64_t i = c0;
    for (; i + L <= c1; i += L) {
      const auto vp = hn::LoadU(d, p + i), vq = hn::LoadU(d, q + i);
      const auto logp = hn::Sub(vp, vplse);
      const auto diff = hn::Sub(hn::Sub(vp, vq), vdlse);  // log p - log q
      acc = hn::MulAdd(hn::Exp(d, hn::Max(logp, vlo)), diff, acc);
    }
    double part = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; i < c1; ++i) {
      const double lp = double(p[i]) - p_lse;
      part += std::exp(lp) * (lp - (double(q[i]) - q_lse));
    }
    total += part;
  }
  return total;
}

double logsumexp_row_ref(const float* x, int64_t n, int64_t* argmax) {
  float mx;
  const int64_t am = row_argmax(x, n, &mx);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - mx);
  *argmax = am;
  return double(mx) + std::log(s);
}

double kl_row_ref(const float* p, double p_lse, const float* q, double q_lse, int64_t n) {
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double lp = double(p[i]) - p_lse;
    kl += std::exp(lp) * (lp - (double(q[i]) - q_lse));
  }
  return kl;
}

}  // namespace qforge::ops
