// The packed W4A16 layout of the CUDA kernels: defined here and nowhere else (host and device).
//
// The weight is W[N = out, K = in]; y[M, N] = x[M, K] @ dequant(W)^T, dequant = (code - zero) * scale.
// The kernels compute y^T = W x^T with mma.sync m16n8k16: the weight is the A operand (16 output rows x
// 16 inputs), the activations the B operand (16 inputs x 8 batch rows). So a weight tile is the A fragment
// of four consecutive mma steps, pre-shuffled so that one 16-byte load per lane feeds them all.
//
// Kernel columns. Inputs are stored in "kernel column" order: kernel column kc holds input column perm[kc]
// (perm is the identity unless act-order left groups non-contiguous). The group of kernel column kc is
// kc / group_size, so every group is a contiguous run of kernel columns.
//
// qweight: [N/16][K/64] tiles of 512 bytes, tile (nb, kb) at byte ((nb * K/64) + kb) * 512.
//   A tile covers output rows nb*16 .. +16 and kernel columns kb*64 .. +64.
//   Inside a tile, lane l (0..31) owns bytes l*16 .. l*16+15 = four little-endian uint32 words t = 0..3.
//   With gid = l / 4 and tid = l % 4, nibble p (bits 4p .. 4p+3) of word t holds the code of
//       row    r = gid + 8 * (p & 1)                               (tile-local output row, 0..15)
//       column c = 16 * tid + 4 * t + 2 * ((p >> 1) & 1) + (p >> 2)  (tile-local kernel column, 0..63)
//   Why: ((word >> 4j) & 0x000F000F) | 0x64006400 turns nibbles j and j+4 into the fp16 pair
//   (1024 + code_j, 1024 + code_{j+4}), which after subtracting 1024 + zero and scaling is mma A register j
//   of step t (j = 0: row gid, j = 1: row gid+8, j = 2: row gid, j = 3: row gid+8; low half = even k-slot).
//   mma step t uses the k-slots {2tid, 2tid+1, 2tid+8, 2tid+9}, mapped to kernel columns
//   16tid + 4t + {0, 1, 2, 3}: the dot product does not care about the order as long as A and B agree,
//   and this order makes each lane's activations 16 contiguous kernel columns (two 16-byte loads).
//
// scales: [K/g][N/16][8] uint32 = half2 {scale(row nb*16 + gid), scale(row nb*16 + gid + 8)} of group g,
//   i.e. fp16 bits at index (grp * N + nb * 16 + 2 * gid + h) for row nb*16 + gid + 8h.
// zeros (asymmetric only; symmetric means zero = 8): [K/g][N/16][8] bytes; byte (grp, nb, gid) holds
//   zero(row nb*16 + gid) in bits 0..3 and zero(row nb*16 + gid + 8) in bits 4..7 (integers 0..15).
// perm: [K] int32, kernel column kc reads activation column perm[kc]; empty / null when the identity.
//
// Costs per weight at g = 128: 4 + 16/128 (scale) + 4/128 (zero) = 4.156 bits (4.125 symmetric).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define QF_W4_HD __host__ __device__
#else
#define QF_W4_HD
#endif

namespace qforge::cuda::w4 {

inline constexpr int kTileN = 16;                           // output rows per tile (mma M)
inline constexpr int kTileK = 64;                           // kernel columns per tile (4 mma k-steps)
inline constexpr int kLanes = 32;                           // one warp owns a tile
inline constexpr int kLaneBytes = 16;                       // one 128-bit load per lane per tile
inline constexpr int kTileBytes = kTileN * kTileK / 2;      // 4-bit codes
inline constexpr int kGroupAlign = 16;                      // a lane's 16 columns never span two groups
inline constexpr uint32_t kSymmetricZero = 8;               // GPTQ's implicit zero point

static_assert(kTileBytes == kLanes * kLaneBytes, "a tile is exactly one 16-byte load per lane");
static_assert(kTileK == 4 * 16, "a tile is four mma k16 steps");
static_assert(kTileK % kGroupAlign == 0 && 16 % kGroupAlign == 0, "a lane's column run stays in one group");

// Where the code of tile-local (row r, column c) lives inside a tile.
struct NibbleLoc {
  int lane;    // 0..31
  int word;    // 0..3, uint32 index inside the lane's 16 bytes
  int nibble;  // 0..7, bits 4*nibble .. 4*nibble+3
};

QF_W4_HD constexpr NibbleLoc nibble_loc(int r, int c) {
  const int gid = r & 7, h = r >> 3;        // row -> (gid, half)
  const int tid = c >> 4, t = (c >> 2) & 3;  // column -> (lane column group, mma step)
  const int jhi = (c >> 1) & 1, e = c & 1;  // column pair inside the step, element of the pair
  return NibbleLoc{gid * 4 + tid, t, (h + 2 * jhi) + 4 * e};
}

// The inverse: tile-local row of (lane, word, nibble).
QF_W4_HD constexpr int nibble_row(int lane, int /*word*/, int nibble) { return (lane >> 2) + 8 * (nibble & 1); }
// The inverse: tile-local kernel column of (lane, word, nibble).
QF_W4_HD constexpr int nibble_col(int lane, int word, int nibble) {
  return 16 * (lane & 3) + 4 * word + 2 * ((nibble >> 1) & 1) + (nibble >> 2);
}

// Byte offset of tile (nb, kb) in qweight for a matrix of K kernel columns.
QF_W4_HD constexpr int64_t tile_offset(int64_t nb, int64_t kb, int64_t K) {
  return (nb * (K / kTileK) + kb) * kTileBytes;
}
// fp16 index of the scale of output row n in group grp, for N output rows.
QF_W4_HD constexpr int64_t scale_index(int64_t grp, int64_t n, int64_t N) {
  return grp * N + (n / kTileN) * kTileN + 2 * (n % 8) + (n % kTileN) / 8;
}
// Byte index and shift of the zero of output row n in group grp, for N output rows.
QF_W4_HD constexpr int64_t zero_byte(int64_t grp, int64_t n, int64_t N) {
  return grp * (N / 2) + (n / kTileN) * 8 + (n % 8);
}
QF_W4_HD constexpr int zero_shift(int64_t n) { return static_cast<int>(4 * ((n % kTileN) / 8)); }

namespace detail {
// nibble_loc and its inverse are a bijection between the 16x64 tile and its 512 bytes.
constexpr bool layout_is_bijective() {
  bool seen[kLanes][4][8] = {};
  for (int r = 0; r < kTileN; ++r)
    for (int c = 0; c < kTileK; ++c) {
      const NibbleLoc l = nibble_loc(r, c);
      if (l.lane < 0 || l.lane >= kLanes || l.word < 0 || l.word > 3 || l.nibble < 0 || l.nibble > 7) return false;
      if (seen[l.lane][l.word][l.nibble]) return false;
      seen[l.lane][l.word][l.nibble] = true;
      if (nibble_row(l.lane, l.word, l.nibble) != r || nibble_col(l.lane, l.word, l.nibble) != c) return false;
    }
  return true;
}
// The nibble pair (j, j+4) of word t is mma A register j of step t: rows gid (j even) / gid+8 (j odd), k-slots
// 2tid(+1) for j < 2 and 2tid+8(+1) for j >= 2, k-slot s of step t being kernel column 16tid + 4t + slot order.
constexpr bool layout_matches_mma_fragment() {
  for (int lane = 0; lane < kLanes; ++lane)
    for (int t = 0; t < 4; ++t)
      for (int j = 0; j < 4; ++j)
        for (int e = 0; e < 2; ++e) {
          const int p = j + 4 * e;
          const int want_row = (lane >> 2) + 8 * (j & 1);
          const int want_col = 16 * (lane & 3) + 4 * t + 2 * (j >> 1) + e;
          if (nibble_row(lane, t, p) != want_row || nibble_col(lane, t, p) != want_col) return false;
        }
  return true;
}
}  // namespace detail

static_assert(detail::layout_is_bijective(), "tile layout must be a bijection");
static_assert(detail::layout_matches_mma_fragment(), "tile layout must match the mma.m16n8k16 A fragment");
static_assert(scale_index(0, 0, 16) == 0 && scale_index(0, 8, 16) == 1 && scale_index(0, 1, 16) == 2 &&
                  scale_index(1, 17, 32) == 32 + 16 + 2,
              "scales: half2 {row gid, row gid+8} per lane group");
static_assert(zero_byte(0, 9, 16) == 1 && zero_shift(9) == 4 && zero_shift(7) == 0, "zeros: two rows per byte");

}  // namespace qforge::cuda::w4
