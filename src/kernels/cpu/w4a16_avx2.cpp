// AVX2 + FMA + F16C W4A16 kernels, for CPUs without AVX-512. Compiled with -mno-avx512f (see CMakeLists.txt)
// so this object holds no AVX-512 instruction even under -march=native.
//
// A 32-byte chunk is one ymm of 8 dwords; vector v (0..7) is (chunk >> (8*b + 4*nib)) & 15 with b = v & 3,
// nib = v >> 2, so lane i holds chunk column 32*nib + 4*i + b (v0..v3: low nibbles, v4..v7: high nibbles,
// each vector within one group even for group_size 32). vpermps only indexes 8 entries, so codes become
// weights as (float(code) - zero) * scale: the same two roundings as the AVX-512 table and w4_dequantize.
#include <immintrin.h>

#include "kernels/cpu/w4a16_kernels.h"

namespace qforge::kernels::w4detail {
namespace {

constexpr int col_of(int p) {
  const int v = p / 8, i = p % 8;
  return 32 * (v >> 2) + 4 * i + (v & 3);
}
struct ColTable {
  uint8_t c[64];
};
constexpr ColTable make_cols() {
  ColTable t{};
  for (int p = 0; p < 64; ++p) t.c[p] = uint8_t(col_of(p));
  return t;
}
constexpr ColTable kCols = make_cols();

#define QF_INLINE inline __attribute__((always_inline))

constexpr int kR = 2;   // output rows per block (16 ymm registers: 4 accumulators + decode temporaries)
constexpr int kMB = 2;  // activation rows per block

void convert_sz(const W4View& w, int64_t o, int R, float* sf, float* zf) {
  const int64_t G = w.in / w.group_size;
  for (int r = 0; r < R; ++r) {
    const uint16_t* s = w.scales + (o + r) * G;
    const float* z = w.zeros + (o + r) * G;
    int64_t g = 0;
    for (; g + 8 <= G; g += 8) {
      _mm256_storeu_ps(sf + r * G + g, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + g))));
      _mm256_storeu_ps(zf + r * G + g, _mm256_loadu_ps(z + g));
    }
    for (; g < G; ++g) {
      sf[r * G + g] = _cvtsh_ss(s[g]);
      zf[r * G + g] = z[g];
    }
  }
}

template <int V>
QF_INLINE __m256 decode(__m256i code, __m256 z, __m256 s) {
  constexpr int kShift = 8 * (V & 3) + 4 * (V >> 2);
  const __m256i c = _mm256_and_si256(_mm256_srli_epi32(code, kShift), _mm256_set1_epi32(15));
  return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), z), s);
}

template <int R, int MB, int V>
QF_INLINE void chunk_vec(__m256 (&acc)[MB][R], const float* xc, int64_t in, const __m256i (&code)[R],
                         const float* sf, const float* zf, int64_t G, int64_t glo, int64_t ghi) {
  const int64_t g = V < 4 ? glo : ghi;
  __m256 wv[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
    wv[r] = decode<V>(code[r], _mm256_broadcast_ss(zf + r * G + g), _mm256_broadcast_ss(sf + r * G + g));
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m) {
    const __m256 xv = _mm256_loadu_ps(xc + m * in + 8 * V);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
  }
}

QF_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int MB>
void gemm_block(const float* xi, int64_t in, const uint8_t* codes, int64_t gs, const float* sf,
                const float* zf, const float* bias, float* y, int64_t ldy) {
  const int64_t row_bytes = in / 2, G = in / gs, hpg = gs / 32;
  __m256 acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t g = 0, used = 0;  // group of the next 32-column half, and how many of its halves were used
  auto next_group = [&] {
    const int64_t cur = g;
    if (++used == hpg) used = 0, ++g;
    return cur;
  };
  for (int64_t c = 0; c < in / 64; ++c) {
    const int64_t glo = next_group(), ghi = next_group();
    __m256i code[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      code[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + r * row_bytes + c * 32));
    const float* xc = xi + c * 64;
    chunk_vec<R, MB, 0>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 1>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 2>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 3>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 4>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 5>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 6>(acc, xc, in, code, sf, zf, G, glo, ghi);
    chunk_vec<R, MB, 7>(acc, xc, in, code, sf, zf, G, glo, ghi);
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) y[m * ldy + r] = hsum(acc[m][r]) + (bias ? bias[r] : 0.0f);
}

using BlockFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, const float*, const float*,
                         const float*, float*, int64_t);
constexpr BlockFn kBlock[kR][kMB] = {{gemm_block<1, 1>, gemm_block<1, 2>}, {gemm_block<2, 1>, gemm_block<2, 2>}};

void gemm_rows(const float* xi, int64_t M, const W4View& w, int64_t o0, int64_t o1, const float* bias,
               float* y, int64_t ldy, float* scratch) {
  const int64_t in = w.in, G = in / w.group_size;
  float* sf = scratch;
  float* zf = scratch + kR * G;
  for (int64_t o = o0; o < o1; o += kR) {
    const int R = int(o1 - o < kR ? o1 - o : kR);
    convert_sz(w, o, R, sf, zf);
    const uint8_t* codes = w.codes + o * (in / 2);
    for (int64_t m0 = 0; m0 < M; m0 += kMB) {
      const int MB = int(M - m0 < kMB ? M - m0 : kMB);
      kBlock[R - 1][MB - 1](xi + m0 * in, in, codes, w.group_size, sf, zf, bias ? bias + o : nullptr,
                            y + m0 * ldy + o, ldy);
    }
  }
}

template <int V>
QF_INLINE void store_vec(float* d, __m256i code, const float* sf, const float* zf, int64_t glo, int64_t ghi) {
  const int64_t g = V < 4 ? glo : ghi;
  _mm256_storeu_ps(d + 8 * V, decode<V>(code, _mm256_broadcast_ss(zf + g), _mm256_broadcast_ss(sf + g)));
}

void dequant_rows(const W4View& w, int64_t o0, int64_t o1, float* dst, float* scratch) {
  const int64_t in = w.in, G = in / w.group_size, hpg = w.group_size / 32;
  float* sf = scratch;
  float* zf = scratch + G;
  for (int64_t o = o0; o < o1; ++o) {
    convert_sz(w, o, 1, sf, zf);
    const uint8_t* codes = w.codes + o * (in / 2);
    float* d = dst + (o - o0) * in;
    for (int64_t c = 0; c < in / 64; ++c) {
      const int64_t glo = (2 * c) / hpg, ghi = (2 * c + 1) / hpg;
      const __m256i code = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * 32));
      store_vec<0>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<1>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<2>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<3>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<4>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<5>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<6>(d + c * 64, code, sf, zf, glo, ghi);
      store_vec<7>(d + c * 64, code, sf, zf, glo, ghi);
    }
  }
}

}  // namespace

const W4IsaKernels& w4_kernels_avx2() {
  static const W4IsaKernels k{"avx2", kCols.c, gemm_rows, dequant_rows};
  return k;
}

}  // namespace qforge::kernels::w4detail
