// Throwaway: int16-activation (vpdpwssd) W4 GEMV prototype vs the shipped f32 kernel, same run.
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include "kernels/cpu/w4a16.h"
using namespace qforge::kernels;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct XQ { std::vector<int16_t> q; std::vector<float> sx; std::vector<int32_t> xs; };
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void quantize_x_fast(const float* x, int64_t in, int64_t gs, XQ& o) {
  const int64_t G = in / gs; o.q.resize(in); o.sx.resize(G); o.xs.resize(G);
  for (int64_t g = 0; g < G; ++g) {
    __m512 mx = _mm512_setzero_ps();
    for (int64_t k = g*gs; k < (g+1)*gs; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    const float m = _mm512_reduce_max_ps(mx);
    const float inv = m > 0 ? 32767.0f / m : 0.f;
    __m512i sum = _mm512_setzero_si512(); const __m512 vi = _mm512_set1_ps(inv);
    for (int64_t k = g*gs; k < (g+1)*gs; k += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vi));
      sum = _mm512_add_epi32(sum, q);
      _mm256_storeu_si256((__m256i*)(o.q.data() + k), _mm512_cvtsepi32_epi16(q));
    }
    o.sx[g] = m > 0 ? m / 32767.0f : 0.f; o.xs[g] = _mm512_reduce_add_epi32(sum);
  }
}
static void quantize_x(const float* x, int64_t in, int64_t gs, XQ& o) {
  const int64_t G = in / gs; o.q.resize(in); o.sx.resize(G); o.xs.resize(G);
  for (int64_t g = 0; g < G; ++g) {
    float mx = 0; for (int64_t k = g*gs; k < (g+1)*gs; ++k) mx = std::max(mx, std::fabs(x[k]));
    const float s = mx > 0 ? mx / 32767.0f : 0.f, inv = mx > 0 ? 32767.0f / mx : 0.f;
    int32_t sum = 0;
    for (int64_t k = g*gs; k < (g+1)*gs; ++k) { int v = (int)std::lrint(x[k]*inv); v = std::clamp(v,-32767,32767); o.q[k]=(int16_t)v; sum += v; }
    o.sx[g] = s; o.xs[g] = sum;
  }
}
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl,f16c")))
static void gemv_i16(const W4Weight& w, const XQ& xq, float* y, int64_t o0, int64_t o1, float* scr) {
  const int64_t in = w.in, gs = w.group_size, G = in / gs, rb = in / 2, cpg = gs / 64;
  const __m512i m0f = _mm512_set1_epi16(0x0F);
  for (int64_t o = o0; o < o1; o += 4) {
    float* sf = scr;  // [4][G] coef = s*sx
    float zc[4] = {0,0,0,0};
    for (int r = 0; r < 4; ++r) for (int64_t g = 0; g < G; ++g) {
      const float s = _cvtsh_ss(w.scales[(o + r) * G + g]) * xq.sx[g];
      sf[r * G + g] = s; zc[r] += s * w.zeros[(o + r) * G + g] * (float)xq.xs[g];
    }
    const uint8_t* cr = w.codes.data() + o * rb;
    __m512 facc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < G; ++g) {
      __m512i a0[4], a1[4];
      for (int r = 0; r < 4; ++r) a0[r] = a1[r] = _mm512_setzero_si512();
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        _mm_prefetch((const char*)(cr + 4 * rb + c * 128), _MM_HINT_T1); _mm_prefetch((const char*)(cr + 4 * rb + c * 128 + 64), _MM_HINT_T1);
        const __m512i xl = _mm512_loadu_si512(xq.q.data() + c * 64), xh = _mm512_loadu_si512(xq.q.data() + c * 64 + 32);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          const __m512i t = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(cr + r * rb + c * 32)));
          a0[r] = _mm512_dpwssd_epi32(a0[r], _mm512_and_si512(t, m0f), xl);
          a1[r] = _mm512_dpwssd_epi32(a1[r], _mm512_srli_epi16(t, 4), xh);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
        facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0[r], a1[r])), _mm512_set1_ps(sf[r * G + g]), facc[r]);
    }
    for (int r = 0; r < 4; ++r) y[o + r] = _mm512_reduce_add_ps(facc[r]) - zc[r];
  }
}

#include <atomic>
#include <thread>
int main() {
  const int64_t shapes[3][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  w4_set_num_threads(2);
  std::mt19937 rng(1);
  for (auto& sh : shapes) {
    const int64_t out = sh[0], in = sh[1], gs = 128, G = in / gs;
    std::vector<uint8_t> codes(out * in); std::vector<float> sc(out * G), ze(out * G);
    for (auto& c : codes) c = rng() & 15;
    for (auto& s : sc) s = 0.001f + (rng() % 1000) * 1e-5f;
    for (auto& z : ze) z = float(rng() % 16);
    const int64_t bytes1 = out * in / 2;
    const int copies = int(std::max<int64_t>(2, (1000ll << 20) / bytes1));
    std::vector<W4Weight> ws;
    for (int i = 0; i < copies; ++i) ws.push_back(*w4_pack(codes.data(), sc.data(), ze.data(), out, in, gs, {}, "w"));
    std::vector<float> x(in); std::normal_distribution<float> nd; for (auto& v : x) v = nd(rng);
    std::vector<float> y0(out), y1(out), yr(out);
    w4_linear_ref(x.data(), 1, in, ws[0], nullptr, yr.data(), out);
    XQ xq; std::vector<float> scr(2 * (4 * G + 64));
    const double b = (double)ws[0].bytes();
    for (int round = 0; round < 3; ++round) {
      std::vector<double> tf, ti;
      for (int i = 0; i < 31; ++i) { const W4Weight& w = ws[i % copies]; double t = now(); w4_linear(x.data(), 1, in, w, nullptr, y0.data(), out); tf.push_back(now() - t); }
      // i16: main thread + one spinning helper
      std::atomic<int> gen{0}, done{0}; std::atomic<bool> stop{false}; const W4Weight* cur = nullptr;
      const int64_t h = out / 2 / 4 * 4;
      std::thread helper([&] { int seen = 0; while (!stop.load()) { int g = gen.load(std::memory_order_acquire); if (g == seen) { _mm_pause(); continue; } seen = g;
          gemv_i16(*cur, xq, y1.data(), h, out, scr.data() + 4 * G + 64); done.fetch_add(1, std::memory_order_release); } });
      auto run_i16 = [&](const W4Weight& w) { quantize_x_fast(x.data(), in, gs, xq); cur = &w; const int d0 = done.load(); gen.fetch_add(1, std::memory_order_release);
          gemv_i16(w, xq, y1.data(), 0, h, scr.data()); while (done.load(std::memory_order_acquire) == d0) _mm_pause(); };
      for (int i = 0; i < 3; ++i) run_i16(ws[i % copies]);
      for (int i = 0; i < 31; ++i) { const W4Weight& w = ws[i % copies]; double t = now(); run_i16(w); ti.push_back(now() - t); }
      stop = true; helper.join();
      std::sort(tf.begin(), tf.end()); std::sort(ti.begin(), ti.end());
      double maxe = 0, maxr = 0; for (int64_t o = 0; o < out; ++o) { maxe = std::max(maxe, (double)std::fabs(y1[o] - yr[o])); maxr = std::max(maxr, (double)std::fabs(yr[o])); }
      printf("%ldx%ld round %d: f32 kernel %.1f us %.1f GB/s | i16 %.1f us %.1f GB/s (i16/f32 speed %.2fx; max err %.2g of max|y| %.3g)\n", out, in, round, tf[15]*1e6, b/tf[15]/1e9, ti[15]*1e6, b/ti[15]/1e9, tf[15]/ti[15], maxe, maxr);
    }
  }
}
