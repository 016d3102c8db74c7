// AMX W4A16 kernel for bf16 activations (Intel AMX-TILE + AMX-BF16, Sapphire Rapids and later). Compiled with
// -mamx-tile -mamx-bf16 and AVX-512 flags (see CMakeLists.txt); w4a16.cpp calls it only after
// w4_amx_enable() succeeded (CPUID, XCR0 and the Linux arch_prctl permission for the tile data state).
//
// The vector units only decode; the tile unit does the multiply-adds. For a block of up to 16 output rows and
// each 64-input chunk:
//   - per row, vpmovzxbw spreads the 32 code bytes into words, and vpermw looks each code up in a 16-entry
//     table of bf16((code - zero) * scale) for that row and group (vpermw reads the low 5 bits of the index,
//     so the table is stored twice and the high nibble sitting in bit 4 does not matter); a 16-bit shift by 4
//     gives the high nibbles. The two 32-column halves go to two A tiles (16 rows x 32 bf16);
//   - the activations were rearranged once per call into the VNNI layout the B tiles need
//     (B[p][m] = the bf16 pair x[m, 2p], x[m, 2p + 1]);
//   - tdpbf16ps accumulates C[16 rows x M] += A . B in f32.
// So the weights enter the products rounded to bf16, as GPU W4A16 kernels round them to fp16: relative error
// <= 2^-9 per weight on top of the f32 sums (tests compare against a reference that rounds the same way).
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

// GCC 12 false positive (bug 105593): its AVX-512 intrinsics pass _mm512_undefined_*() as the unused source.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/cpu/w4a16_kernels.h"

namespace qforge::kernels::w4detail {
namespace {

#define QF_INLINE inline __attribute__((always_inline))

// Tile numbers (macros: GCC's tile intrinsics paste them into the register name) and the 64-byte
// configuration ldtilecfg reads (palette 1).
// Four C accumulators: each takes one tdpbf16ps per two chunks, so the tile unit's latency is not a chain.
#define kTileC0 0
#define kTileC1 1
#define kTileC2 2
#define kTileC3 3
#define kTileA0 4
#define kTileA1 5
#define kTileB0 6
#define kTileB1 7
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of each tile
  uint8_t rows[16];
};

// C [R x MB] f32, A [R x 32] bf16, B [16 pairs x MB] bf16 pairs.
void configure_tiles(int R, int MB) {
  TileConfig c{};
  c.palette_id = 1;
  for (int t = kTileC0; t <= kTileC3; ++t) {
    c.rows[t] = uint8_t(R);
    c.colsb[t] = uint16_t(4 * MB);
  }
  c.rows[kTileA0] = c.rows[kTileA1] = uint8_t(R);
  c.colsb[kTileA0] = c.colsb[kTileA1] = 64;
  c.rows[kTileB0] = c.rows[kTileB1] = 16;
  c.colsb[kTileB0] = c.colsb[kTileB1] = uint16_t(4 * MB);
  _tile_loadconfig(&c);
}

// Per-call scratch, carved from the caller's float buffer (see w4_bf16_scratch_floats).
struct Scratch {
  uint32_t* bv;    // [in/2][MB] activation pairs, VNNI
  uint16_t* a;     // 2 x 2 A tiles [16][32] bf16 (chunks alternate between the two pairs)
  uint16_t* lut;   // 2 table sets [16 rows][32] bf16 (lo half's group, hi half's group)
  float* c;        // 4 x [16][MB] f32
  float* sf;       // [16][G] scales
};

// 64-byte aligned pieces; w4_bf16_scratch_floats (w4a16_kernels.h) covers their total.
Scratch carve(float* scratch, int64_t in, int64_t G) {
  uintptr_t p = (reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63);
  auto take = [&p](int64_t bytes) {
    const uintptr_t q = p;
    p += uintptr_t((bytes + 63) / 64 * 64);
    return q;
  };
  Scratch s;
  s.bv = reinterpret_cast<uint32_t*>(take((in / 2) * kAmxMaxM * 4));
  s.a = reinterpret_cast<uint16_t*>(take(4 * kAmxRows * 64));
  s.lut = reinterpret_cast<uint16_t*>(take(2 * kAmxRows * 64));
  s.c = reinterpret_cast<float*>(take(4 * kAmxRows * kAmxMaxM * 4));
  s.sf = reinterpret_cast<float*>(take(kAmxRows * G * 4));
  return s;
}

// lut rows r < R: bf16((i - zero[r, g]) * scale[r, g]) for i = 0..15, stored twice (32 words).
QF_INLINE void build_luts(uint16_t* lut, int R, const float* sf, const float* zeros, int64_t G, int64_t g) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int r = 0; r < R; ++r) {
    const __m512 v = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(zeros[r * G + g])), _mm512_set1_ps(sf[r * G + g]));
    const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
    _mm512_store_si512(lut + r * 32, _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1));
  }
}

// Rows [o, o + R) (R <= 16) for activation rows [0, MB): y[m, r] = C[r, m] + bias[r].
void amx_block(const W4View& w, int64_t o, int R, int MB, const Scratch& s, const float* bias, float* y,
               int64_t ldy) {
  const int64_t in = w.in, gs = w.group_size, G = in / gs, row_bytes = in / 2, hpg = gs / 32;
  const uint8_t* codes = w.codes + o * row_bytes;
  const float* zeros = w.zeros + o * G;
  // f32 scales of the block's rows.
  for (int r = 0; r < R; ++r)
    for (int64_t g = 0; g < G; g += 16) {
      const int64_t n = G - g < 16 ? G - g : 16;
      const __mmask16 k = __mmask16((1u << n) - 1);
      _mm512_mask_storeu_ps(s.sf + r * G + g, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, w.scales + (o + r) * G + g)));
    }
  uint16_t* lut_lo = s.lut;
  uint16_t* lut_hi = s.lut + kAmxRows * 32;
  int64_t g_lo = -1, g_hi = -1;  // groups whose tables lut_lo / lut_hi hold
  _tile_zero(kTileC0);
  _tile_zero(kTileC1);
  _tile_zero(kTileC2);
  _tile_zero(kTileC3);
  for (int64_t c = 0; c < in / 64; ++c) {
    const int64_t glo = (2 * c) / hpg, ghi = (2 * c + 1) / hpg;
    if (glo != g_lo) build_luts(lut_lo, R, s.sf, zeros, G, g_lo = glo);
    const uint16_t* th = lut_lo;
    if (ghi != glo) {
      if (ghi != g_hi) build_luts(lut_hi, R, s.sf, zeros, G, g_hi = ghi);
      th = lut_hi;
    }
    // Alternate A buffers: the tile loads of chunk c read what the stores just wrote (they wait for the stores
    // to reach L1), while chunk c + 1 is decoded into the other pair.
    uint16_t* a0 = s.a + (c & 1) * 2 * kAmxRows * 32;
    uint16_t* a1 = a0 + kAmxRows * 32;
    for (int r = 0; r < R; ++r) {
      const uint8_t* cc = codes + r * row_bytes + c * 32;
      if ((c & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(cc + 512), _MM_HINT_T0);
      const __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc)));
      _mm512_store_si512(a0 + r * 32, _mm512_permutexvar_epi16(w16, _mm512_load_si512(lut_lo + r * 32)));
      _mm512_store_si512(a1 + r * 32, _mm512_permutexvar_epi16(_mm512_srli_epi16(w16, 4), _mm512_load_si512(th + r * 32)));
    }
    _tile_loadd(kTileA0, a0, 64);
    _tile_loadd(kTileA1, a1, 64);
    _tile_loadd(kTileB0, s.bv + (2 * c) * 16 * MB, 4 * MB);
    _tile_loadd(kTileB1, s.bv + (2 * c + 1) * 16 * MB, 4 * MB);
    if ((c & 1) == 0) {
      _tile_dpbf16ps(kTileC0, kTileA0, kTileB0);
      _tile_dpbf16ps(kTileC1, kTileA1, kTileB1);
    } else {
      _tile_dpbf16ps(kTileC2, kTileA0, kTileB0);
      _tile_dpbf16ps(kTileC3, kTileA1, kTileB1);
    }
  }
  const int64_t cs = kAmxRows * MB;  // floats per stored C tile
  _tile_stored(kTileC0, s.c, 4 * MB);
  _tile_stored(kTileC1, s.c + cs, 4 * MB);
  _tile_stored(kTileC2, s.c + 2 * cs, 4 * MB);
  _tile_stored(kTileC3, s.c + 3 * cs, 4 * MB);
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      const int64_t i = r * MB + m;
      y[m * ldy + r] = ((s.c[i] + s.c[cs + i]) + (s.c[2 * cs + i] + s.c[3 * cs + i])) + (bias ? bias[r] : 0.0f);
    }
}

void gemm_rows(const uint16_t* xb, const float* /*xsum: zeros are in the tables*/, int64_t M, const W4View& w,
               int64_t o0, int64_t o1, const float* bias, float* y, int64_t ldy, float* scratch) {
  const int64_t in = w.in, G = in / w.group_size;
  const Scratch s = carve(scratch, in, G);
  int cur_r = -1, cur_mb = -1;
  for (int64_t m0 = 0; m0 < M; m0 += kAmxMaxM) {
    const int MB = int(M - m0 < kAmxMaxM ? M - m0 : kAmxMaxM);
    // VNNI activations: bv[p * MB + m] = the pair (x[m0 + m, 2p], x[m0 + m, 2p + 1]).
    if (MB == 1) {
      __builtin_memcpy(s.bv, xb + m0 * in, size_t(in) * 2);
    } else {
      for (int64_t p = 0; p < in / 2; ++p)
        for (int m = 0; m < MB; ++m) {
          uint32_t pair;
          __builtin_memcpy(&pair, xb + (m0 + m) * in + 2 * p, 4);
          s.bv[p * MB + m] = pair;
        }
    }
    for (int64_t o = o0; o < o1; o += kAmxRows) {
      const int R = int(o1 - o < kAmxRows ? o1 - o : kAmxRows);
      if (R != cur_r || MB != cur_mb) configure_tiles(cur_r = R, cur_mb = MB);
      amx_block(w, o, R, MB, s, bias ? bias + o : nullptr, y + m0 * ldy + o, ldy);
    }
  }
  _tile_release();  // the thread's tile state need not be saved at context switches
}

}  // namespace

bool w4_amx_enable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  if (!amx_bf16 || !amx_tile) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  const unsigned long long xcr0 = _xgetbv(0);
  if ((xcr0 & (3ull << 17)) != (3ull << 17)) return false;  // XTILECFG and XTILEDATA enabled by the OS
  // Linux: a process must ask for the tile data state before its first AMX instruction.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

const W4Bf16Kernels& w4_kernels_amx() {
  static const W4Bf16Kernels k{"amx", gemm_rows};
  return k;
}

}  // namespace qforge::kernels::w4detail
