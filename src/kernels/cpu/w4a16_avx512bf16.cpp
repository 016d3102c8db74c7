// AVX-512 BF16 W4A16 kernel for bf16 activations: vdpbf16ps multiplies 32 bf16 pairs per instruction, twice
// the weights per instruction of the f32 kernel (w4a16_avx512.cpp). Compiled with -mavx512bf16 (see
// CMakeLists.txt) and called only when the CPU has AVX512_BF16 (w4a16.cpp checks once).
//
// The codes are never dequantized. With D[g] = sum_{k in g} code_k * x_k and X[g] = sum_{k in g} x_k,
//   y = sum_g scale[g] * D[g] - sum_g scale[g] * zero[g] * X[g]
// The codes 0..15 are exact in bf16 and so are their products with bf16 activations (8 + 4 mantissa bits), so
// D[g] carries only the f32 rounding of its sums; X[g] comes from the dispatcher (f32, one per group and row).
//
// Decoding one 32-byte chunk (64 codes) takes vpmovzxbw (word j = byte j) and vpermw twice:
//   - vpermw reads only the low 5 bits of each index word, so the table t[i] = bf16(i & 15) turns word j
//     (low nibble = code of column j, bit 4 = a high-nibble bit) into bf16(code of column j) without a mask;
//   - a 16-bit shift right by 4 leaves the high nibble (column 32 + j), looked up the same way.
// Both vectors hold 32 consecutive columns, so the activations are read in natural order (no interleave), and
// each vector lies in one group (group sizes are multiples of 32).
// Per chunk and output row: 1 vpmovzxbw + 1 shift + 2 vpermw + 2 vdpbf16ps for 64 weights (the f32 kernel
// needs 12 uops).
#include <immintrin.h>

// GCC 12 false positive (bug 105593): its AVX-512 intrinsics pass _mm512_undefined_*() as the unused source.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/cpu/w4a16_kernels.h"

namespace qforge::kernels::w4detail {
namespace {

#define QF_INLINE inline __attribute__((always_inline))

// bf16 bits of the integer c (0..15): sign 0, exponent 127 + floor(log2 c), the bits below the leading one.
constexpr uint16_t bf16_of_code(int c) {
  if (c == 0) return 0;
  int e = 0;
  while ((c >> (e + 1)) != 0) ++e;
  return uint16_t(((127 + e) << 7) | ((c << (7 - e)) & 0x7f));
}
struct CodeTable {
  alignas(64) uint16_t t[32];
};
constexpr CodeTable make_table() {
  CodeTable t{};
  for (int i = 0; i < 32; ++i) t.t[i] = bf16_of_code(i & 15);
  return t;
}
constexpr CodeTable kTable = make_table();
static_assert(bf16_of_code(1) == 0x3f80 && bf16_of_code(15) == 0x4170 && bf16_of_code(10) == 0x4120);

// f32 scales and scale * zero of rows [o, o + R): sf/szf[r * G + g].
void convert_sz(const W4View& w, int64_t o, int R, float* sf, float* szf) {
  const int64_t G = w.in / w.group_size;
  for (int r = 0; r < R; ++r) {
    const uint16_t* s = w.scales + (o + r) * G;
    const float* z = w.zeros + (o + r) * G;
    for (int64_t g = 0; g < G; g += 16) {
      const int64_t n = G - g < 16 ? G - g : 16;
      const __mmask16 k = __mmask16((1u << n) - 1);
      const __m512 sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, s + g));
      _mm512_mask_storeu_ps(sf + r * G + g, k, sv);
      _mm512_mask_storeu_ps(szf + r * G + g, k, _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(k, z + g)));
    }
  }
}

QF_INLINE __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh>(v); }

// Decodes one row's 32-byte chunk into lo (columns 0..31) and hi (columns 32..63), bf16.
QF_INLINE void decode(const uint8_t* cc, __m512i table, __m512i& lo, __m512i& hi) {
  const __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc)));
  lo = _mm512_permutexvar_epi16(w16, table);
  hi = _mm512_permutexvar_epi16(_mm512_srli_epi16(w16, 4), table);
}

// acc[m][r] (+)= scale * (code . x) over the rows' chunks; returns nothing, the caller adds the zero term.
//   xb [MB, in] bf16 (row stride in), codes of row 0, sf [R, G].
// Groups that are multiples of 64 accumulate whole chunks into dot registers and scale once per group; other
// group sizes (odd multiples of 32) scale every 32-column half.
template <int R, int MB>
QF_INLINE void accumulate(__m512 (&acc)[MB][R], const uint16_t* xb, int64_t in, const uint8_t* codes, int64_t gs,
                          const float* sf, const uint8_t* pf) {
  const int64_t row_bytes = in / 2, G = in / gs, n_chunks = in / 64;
  const __m512i table = _mm512_load_si512(kTable.t);
  // Rows are decoded one at a time (the activations are re-read from L1 per row), so only one row's two
  // weight vectors are live next to the accumulators.
  if (gs % 64 == 0) {
    const int64_t cpg = gs / 64;
    for (int64_t g = 0; g < G; ++g) {
      // At M = 1, two dot chains per row (low and high halves) keep vdpbf16ps's latency off the critical
      // path; at M = 2 the two activation rows already give 2 chains per row, and registers run short.
      constexpr int NC = MB == 1 ? 2 : 1;
      __m512 d[NC][MB][R];
#pragma GCC unroll 4
      for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
          for (int n = 0; n < NC; ++n) d[n][m][r] = _mm512_setzero_ps();
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(pf + c * (32 * R)), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(pf + c * (32 * R) + 64), _MM_HINT_T1);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          __m512i lo, hi;
          decode(codes + r * row_bytes + c * 32, table, lo, hi);
#pragma GCC unroll 4
          for (int m = 0; m < MB; ++m) {
            const __m512i xlo = _mm512_loadu_si512(xb + m * in + c * 64);
            const __m512i xhi = _mm512_loadu_si512(xb + m * in + c * 64 + 32);
            d[0][m][r] = _mm512_dpbf16_ps(d[0][m][r], as_bh(lo), as_bh(xlo));
            d[NC - 1][m][r] = _mm512_dpbf16_ps(d[NC - 1][m][r], as_bh(hi), as_bh(xhi));
          }
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 s = _mm512_set1_ps(sf[r * G + g]);
#pragma GCC unroll 4
        for (int m = 0; m < MB; ++m) {
          const __m512 dot = NC == 2 ? _mm512_add_ps(d[0][m][r], d[NC - 1][m][r]) : d[0][m][r];
          acc[m][r] = _mm512_fmadd_ps(dot, s, acc[m][r]);
        }
      }
    }
  } else {
    const int64_t hpg = gs / 32;  // 32-column halves per group
    for (int64_t c = 0; c < n_chunks; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + c * (32 * R)), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(pf + c * (32 * R) + 64), _MM_HINT_T1);
      const int64_t glo = (2 * c) / hpg, ghi = (2 * c + 1) / hpg;
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        __m512i lo, hi;
        decode(codes + r * row_bytes + c * 32, table, lo, hi);
#pragma GCC unroll 4
        for (int m = 0; m < MB; ++m) {
          const __m512i xlo = _mm512_loadu_si512(xb + m * in + c * 64);
          const __m512i xhi = _mm512_loadu_si512(xb + m * in + c * 64 + 32);
          const __m512 dl = _mm512_dpbf16_ps(_mm512_setzero_ps(), as_bh(lo), as_bh(xlo));
          const __m512 dh = _mm512_dpbf16_ps(_mm512_setzero_ps(), as_bh(hi), as_bh(xhi));
          acc[m][r] = _mm512_fmadd_ps(dl, _mm512_set1_ps(sf[r * G + glo]), acc[m][r]);
          acc[m][r] = _mm512_fmadd_ps(dh, _mm512_set1_ps(sf[r * G + ghi]), acc[m][r]);
        }
      }
    }
  }
}

// y[m, r] for rows r < R, m < MB: the scaled code dots minus sum_g scale * zero * X[g], plus bias.
template <int R, int MB>
void gemm_block(const uint16_t* xb, const float* xsum, int64_t in, const uint8_t* codes, int64_t gs,
                const float* sf, const float* szf, const float* bias, float* y, int64_t ldy, const uint8_t* pf) {
  const int64_t G = in / gs;
  __m512 acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  accumulate<R, MB>(acc, xb, in, codes, gs, sf, pf);
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) {
      __m512 zt = _mm512_setzero_ps();
      for (int64_t g = 0; g < G; g += 16) {
        const int64_t n = G - g < 16 ? G - g : 16;
        const __mmask16 k = __mmask16((1u << n) - 1);
        zt = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, szf + r * G + g), _mm512_maskz_loadu_ps(k, xsum + m * G + g), zt);
      }
      y[m * ldy + r] = (_mm512_reduce_add_ps(acc[m][r]) - _mm512_reduce_add_ps(zt)) + (bias ? bias[r] : 0.0f);
    }
}

inline constexpr int kBf16MBlock = 2;  // activation rows per pass (dot + acc registers of 4 rows fill the file)

using BlockFn = void (*)(const uint16_t*, const float*, int64_t, const uint8_t*, int64_t, const float*,
                         const float*, const float*, float*, int64_t, const uint8_t*);
template <int R>
constexpr BlockFn kBlockRow[kBf16MBlock] = {gemm_block<R, 1>, gemm_block<R, 2>};
constexpr const BlockFn* kBlock[kRowBlock] = {kBlockRow<1>, kBlockRow<2>, kBlockRow<3>, kBlockRow<4>};

void gemm_rows(const uint16_t* xb, const float* xsum, int64_t M, const W4View& w, int64_t o0, int64_t o1,
               const float* bias, float* y, int64_t ldy, float* scratch) {
  const int64_t in = w.in, G = in / w.group_size;
  float* sf = scratch;
  float* szf = scratch + kRowBlock * G;
  // Software prefetch of the next row block (>= 4 KiB ahead) into L2, as in the f32 kernel (why: there).
  const int64_t block_bytes = kRowBlock * (in / 2);
  const int64_t ahead_blocks = (4096 + block_bytes - 1) / block_bytes;
  for (int64_t o = o0; o < o1; o += kRowBlock) {
    const int R = int(o1 - o < kRowBlock ? o1 - o : kRowBlock);
    const int64_t o_pf = o + ahead_blocks * kRowBlock;
    if (o_pf < w.out) {
      for (int64_t b = 0; b < kRowBlock * G * 2; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.scales + o_pf * G) + b, _MM_HINT_T0);
      for (int64_t b = 0; b < kRowBlock * G * 4; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.zeros + o_pf * G) + b, _MM_HINT_T0);
    }
    convert_sz(w, o, R, sf, szf);
    const uint8_t* codes = w.codes + o * (in / 2);
    for (int64_t m0 = 0; m0 < M; m0 += kBf16MBlock) {
      const int MB = int(M - m0 < kBf16MBlock ? M - m0 : kBf16MBlock);
      kBlock[R - 1][MB - 1](xb + m0 * in, xsum + m0 * G, in, codes, w.group_size, sf, szf, bias ? bias + o : nullptr,
                            y + m0 * ldy + o, ldy, codes + ahead_blocks * block_bytes);
    }
  }
}

}  // namespace

const W4Bf16Kernels& w4_kernels_avx512bf16() {
  static const W4Bf16Kernels k{"avx512bf16", gemm_rows};
  return k;
}

}  // namespace qforge::kernels::w4detail
