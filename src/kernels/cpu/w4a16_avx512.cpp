// AVX-512 W4A16 kernels. Compiled with AVX-512 flags (see CMakeLists.txt) and called only when the CPU has
// AVX-512F/BW/VL (w4a16.cpp checks once).
//
// Decoding one 32-byte chunk (64 codes) takes 1 broadcast load + 4 vpsrlvd + 4 vpermps:
//   - the chunk is broadcast to both 256-bit halves of a zmm (a load-port-only uop);
//   - vector v (0..3) shifts every dword right by 8*b + 4*nib, b = 2*(v&1) + (lane >= 8), nib = v >> 1,
//     so each lane's low 4 bits are one code, and v0/v1 hold only low nibbles (chunk columns 0..31),
//     v2/v3 only high nibbles (columns 32..63) - each vector lies in one group even when group_size is 32;
//   - vpermps uses only the low 4 bits of each index, so it turns the shifted dwords directly into
//     dequantized weights through a 16-entry table lut[c] = (c - zero) * scale: no mask, no int->float.
// Lane l of vector v holds chunk column 32*nib + 4*(l & 7) + b: the activations are pre-shuffled into this
// order (w4a16_kernels.h), so the FMAs read x contiguously.
// Per chunk and output row this is 12 uops for 64 weights (M = 1), split evenly between ports 0 and 5.
#include <immintrin.h>

// GCC 12 false positive (bug 105593): its AVX-512 intrinsics pass _mm512_undefined_*() as the unused source.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/cpu/w4a16_kernels.h"

namespace qforge::kernels::w4detail {
namespace {

constexpr int col_of(int p) {
  const int v = p / 16, l = p % 16;
  const int b = 2 * (v & 1) + (l >= 8 ? 1 : 0), nib = v >> 1;
  return 32 * nib + 4 * (l & 7) + b;
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

// Shift counts of the 4 vectors (lanes 0..7, lanes 8..15).
QF_INLINE __m512i shift_of(int v) {
  const int b0 = 2 * (v & 1), nib = v >> 1;
  const int lo = 8 * b0 + 4 * nib, hi = lo + 8;
  return _mm512_inserti64x4(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi), 1);
}

QF_INLINE __m512 make_lut(float s, float z) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), _mm512_set1_ps(s));
}

// f32 scales and zeros of rows [o, o + R): sf/zf[r * G + g].
void convert_sz(const W4View& w, int64_t o, int R, float* sf, float* zf) {
  const int64_t G = w.in / w.group_size;
  for (int r = 0; r < R; ++r) {
    const uint16_t* s = w.scales + (o + r) * G;
    const float* z = w.zeros + (o + r) * G;
    for (int64_t g = 0; g < G; g += 16) {
      const int64_t n = G - g < 16 ? G - g : 16;
      const __mmask16 k = __mmask16((1u << n) - 1);
      _mm512_mask_storeu_ps(sf + r * G + g, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, s + g)));
      _mm512_mask_storeu_ps(zf + r * G + g, k, _mm512_maskz_loadu_ps(k, z + g));
    }
  }
}

// One 64-column chunk for R output rows and MB activation rows.
//   acc[m][r] += W[row r, chunk] . xc[m, :]     xc = xi + c*64 (row stride in), cc = codes of row 0 + c*32
// pf: where to prefetch (a later row block; 2 lines per chunk cover a 4-row block at the rate it is read). Into
// L2 (T1), not L1: L1 keeps the activations (in * 4 bytes here, in * 2 for bf16) and the rows being read, and the
// hardware streamer moves the next block up from L2. With T0, the 11008-wide rows (a 22 KB block ahead next to
// 22-44 KB of activations in a 48 KB L1) lost 4-5 points of bandwidth (docs/packed-checkpoints.md, session 8).
template <int R, int MB>
QF_INLINE void chunk_body(__m512 (&acc)[MB][R], const float* xc, int64_t in, const uint8_t* cc,
                          int64_t row_bytes, const __m512 (&lo)[R], const __m512 (&hi)[R], const uint8_t* pf) {
  _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(pf + 64), _MM_HINT_T1);
  __m512i code[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
    code[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc + r * row_bytes)));
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const __m512i sh = shift_of(v);
    __m512 wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = _mm512_permutexvar_ps(_mm512_srlv_epi32(code[r], sh), v < 2 ? lo[r] : hi[r]);
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_loadu_ps(xc + m * in + 16 * v);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
}

// y[m, r] (+= nothing; overwritten) for rows r < R, m < MB. xi [MB, in] interleaved (row stride in),
// codes of row 0, sf/zf [R, G], y row stride ldy, bias [R] or null.
template <int R, int MB>
void gemm_block(const float* xi, int64_t in, const uint8_t* codes, int64_t gs, const float* sf,
                const float* zf, const float* bias, float* y, int64_t ldy, const uint8_t* pf) {
  const int64_t row_bytes = in / 2, G = in / gs, n_chunks = in / 64;
  __m512 acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  __m512 lo[R], hi[R];
  if (gs % 64 == 0) {
    const int64_t cpg = gs / 64;  // chunks per group
    for (int64_t g = 0; g < G; ++g) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) lo[r] = make_lut(sf[r * G + g], zf[r * G + g]);
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c)
        chunk_body<R, MB>(acc, xi + c * 64, in, codes + c * 32, row_bytes, lo, lo, pf + c * (32 * R));
    }
  } else {
    // group_size an odd multiple of 32: the two halves of a chunk may sit in different groups.
    const int64_t hpg = gs / 32;  // 32-column halves per group
    int64_t g = 0, used = 0;      // group of the next half, and how many of its halves were used
    auto next_group = [&] {
      const int64_t cur = g;
      if (++used == hpg) used = 0, ++g;
      return cur;
    };
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t glo = next_group(), ghi = next_group();
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        lo[r] = make_lut(sf[r * G + glo], zf[r * G + glo]);
        hi[r] = make_lut(sf[r * G + ghi], zf[r * G + ghi]);
      }
      chunk_body<R, MB>(acc, xi + c * 64, in, codes + c * 32, row_bytes, lo, hi, pf + c * (32 * R));
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r)
      y[m * ldy + r] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[r] : 0.0f);
}

using BlockFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, const float*, const float*,
                         const float*, float*, int64_t, const uint8_t*);
template <int R>
constexpr BlockFn kBlockRow[kMBlock] = {gemm_block<R, 1>, gemm_block<R, 2>, gemm_block<R, 3>, gemm_block<R, 4>};
constexpr const BlockFn* kBlock[kRowBlock] = {kBlockRow<1>, kBlockRow<2>, kBlockRow<3>, kBlockRow<4>};

void gemm_rows(const float* xi, int64_t M, const W4View& w, int64_t o0, int64_t o1, const float* bias,
               float* y, int64_t ldy, float* scratch) {
  const int64_t in = w.in, G = in / w.group_size;
  float* sf = scratch;
  float* zf = scratch + kRowBlock * G;
  // Software prefetch >= 4 KiB ahead: one core's hardware prefetchers alone left the M = 1 kernel at about
  // half of the DRAM rate that OpenBLAS's (prefetching) sgemv reaches per core.
  const int64_t block_bytes = kRowBlock * (in / 2);
  const int64_t ahead_blocks = (4096 + block_bytes - 1) / block_bytes;
  for (int64_t o = o0; o < o1; o += kRowBlock) {
    const int R = int(o1 - o < kRowBlock ? o1 - o : kRowBlock);
    const int64_t o_pf = o + ahead_blocks * kRowBlock;
    if (o_pf < w.out) {  // the scales/zeros that block will read (prefetch never faults, but stay in bounds)
      for (int64_t b = 0; b < kRowBlock * G * 2; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.scales + o_pf * G) + b, _MM_HINT_T0);
      for (int64_t b = 0; b < kRowBlock * G * 4; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.zeros + o_pf * G) + b, _MM_HINT_T0);
    }
    convert_sz(w, o, R, sf, zf);
    const uint8_t* codes = w.codes + o * (in / 2);
    for (int64_t m0 = 0; m0 < M; m0 += kMBlock) {
      const int MB = int(M - m0 < kMBlock ? M - m0 : kMBlock);
      kBlock[R - 1][MB - 1](xi + m0 * in, in, codes, w.group_size, sf, zf, bias ? bias + o : nullptr,
                            y + m0 * ldy + o, ldy, codes + ahead_blocks * block_bytes);
    }
  }
}

void dequant_rows(const W4View& w, int64_t o0, int64_t o1, float* dst, float* scratch) {
  const int64_t in = w.in, gs = w.group_size, G = in / gs, hpg = gs / 32;
  float* sf = scratch;
  float* zf = scratch + G;
  for (int64_t o = o0; o < o1; ++o) {
    convert_sz(w, o, 1, sf, zf);
    const uint8_t* codes = w.codes + o * (in / 2);
    float* d = dst + (o - o0) * in;
    for (int64_t c = 0; c < in / 64; ++c) {
      const int64_t glo = (2 * c) / hpg, ghi = (2 * c + 1) / hpg;
      const __m512 lo = make_lut(sf[glo], zf[glo]), hi = make_lut(sf[ghi], zf[ghi]);
      const __m512i code = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * 32)));
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v)
        _mm512_storeu_ps(d + c * 64 + 16 * v, _mm512_permutexvar_ps(_mm512_srlv_epi32(code, shift_of(v)), v < 2 ? lo : hi));
    }
  }
}

}  // namespace

const W4IsaKernels& w4_kernels_avx512() {
  static const W4IsaKernels k{"avx512", kCols.c, gemm_rows, dequant_rows};
  return k;
}

}  // namespace qforge::kernels::w4detail
