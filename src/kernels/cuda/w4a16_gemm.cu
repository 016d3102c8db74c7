// W4A16 batch GEMM for M = 16..256+: y^T[N, M] = W[N, K] x^T[K, M] with mma.sync m16n8k16, the weight as A.
//
// Why a second tensor-core kernel: the mma kernel (w4a16_mma.cu) gives every warp a private K stream over
// 8-64 batch rows, so above batch 32 each weight tile is dequantised once per 64 batch rows and every block
// re-reads its activations from L2 with no sharing between warps. Here a block owns a slab of BN output rows
// and BM batch rows (the whole batch up to 256) and streams K through one block-wide cp.async ring:
//
//   stage (KC = WARPS_K chunks of 64 kernel columns):
//     W  [KC][BN/16][512 B]     packed tiles, copied verbatim (w4a16_layout.h: one 16-byte lane fragment
//     each) X  [KC][BM][8 x 16 B]     activation rows, 16-byte chunk c of row m stored at c ^ (m & 7): the
//     B-fragment
//                               loads (lane gid reads row gid, chunks 2tid and 2tid+1) are conflict-free
//     S  [KC][4 slots][BN/2]    half2 scale pairs; slot = 16-column quarter of the chunk when g % 64 != 0
//                               (a lane's 16 columns never span two groups), else one slot per chunk
//     Z  [KC][4 slots][BN/2 B]  zero bytes (asymmetric only)
//   warp (wn, wm, wk) computes WN x 16 output rows by WM x 8 batch rows on chunk wk of each stage: it
//   dequantises each weight word once (exact c - z, one rounding by the scale; dequant_word2) and feeds the
//   same A fragment to all WM batch tiles, so the dequantisation cost per mma falls as 1/WM.
//   One __syncthreads per stage; the ring slot refilled in iteration i is the one consumed in i - 1.
//
// The WARPS_K partials meet in shared memory (fixed order); with split-K over grid.z the last block of an
// output tile adds the fp32 partials in z order (deterministic; counters self-reset). The epilogue goes
// through shared memory so y is written in coalesced pairs.
#include <algorithm>

#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda::detail {
namespace {

// 16 bytes through L1 with src_bytes (0, 8 or 16) read and the rest zero-filled.
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}

template <int WN_, int WM_, int WARPS_N_, int WARPS_M_, int WARPS_K_, int STAGES_, int MINB_>
struct GemmShape {
  static constexpr int WN = WN_;  // 16-row weight tiles per warp (mma M)
  static constexpr int WM = WM_;  // 8-row batch tiles per warp (mma N)
  static constexpr int WARPS_N = WARPS_N_, WARPS_M = WARPS_M_, WARPS_K = WARPS_K_;
  static constexpr int STAGES = STAGES_;
  static constexpr int MINB = MINB_;  // blocks per SM asked of the register allocator
  static constexpr int kWarps = WARPS_N * WARPS_M * WARPS_K;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int BN = WARPS_N * WN * 16;  // output rows per block
  static constexpr int BM = WARPS_M * WM * 8;   // batch rows per block
  static constexpr int KC = WARPS_K;            // 64-column chunks per stage
  static constexpr int kSlots = 4;
  static constexpr int kWBytes = KC * (BN / 16) * w4::kTileBytes;
  static constexpr int kXBytes = KC * BM * 128;
  static constexpr int kSBytes = KC * kSlots * BN * 2;
  static constexpr int kZBytes = KC * kSlots * BN / 2;
  static constexpr int kOffX = kWBytes, kOffS = kOffX + kXBytes, kOffZ = kOffS + kSBytes;
  static constexpr int kStage = kOffZ + kZBytes;
  static constexpr int kRedStride = BN + 4;  // floats; == 4 mod 32: the fragment stores are conflict-free
  static constexpr size_t kRing = size_t{STAGES} * kStage;
  static constexpr size_t kRed = size_t{KC} * BM * kRedStride * sizeof(float);
  static constexpr size_t kSmem = kRing > kRed ? kRing : kRed;
  static_assert(kStage % 16 == 0 && kOffX % 16 == 0 && kOffS % 16 == 0 && kOffZ % 16 == 0, "16-byte copies");
  static_assert(BN % 32 == 0, "zero pieces cover two 16-row tiles");
  static_assert(kRedStride % 32 == 4, "epilogue stores");
};

// SLOTS: scale/zero slots copied per 64-column chunk: 1 when g % 64 == 0, else 4 (one per 16 columns).
template <bool kBF16, class S, int SLOTS>
__global__ void __launch_bounds__(S::kThreads, S::MINB) w4a16_gemm_kernel(MmaArgs a) {
  using T = typename Act<kBF16>::T;
  constexpr int WN = S::WN, WM = S::WM, KC = S::KC, BN = S::BN, BM = S::BM, STAGES = S::STAGES;
  constexpr int kThreads = S::kThreads;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tid = lane & 3;
  const int wk = warp % S::WARPS_K;
  const int wn = (warp / S::WARPS_K) % S::WARPS_N;
  const int wm = warp / (S::WARPS_K * S::WARPS_N);
  const int nb0 = blockIdx.x * (BN / 16);  // first 16-row tile of the block
  const int m0 = blockIdx.y * BM;          // first batch row of the block
  const int NT16 = a.N / 16;
  const int KT = a.K / w4::kTileK;
  const int split = gridDim.z;
  const int kt0 = static_cast<int>(static_cast<int64_t>(KT) * blockIdx.z / split);
  const int kt1 = static_cast<int>(static_cast<int64_t>(KT) * (blockIdx.z + 1) / split);
  const int n_stages = (kt1 - kt0 + KC - 1) / KC;
  const bool asym = a.zeros != nullptr;
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  const unsigned char* qw = static_cast<const unsigned char*>(a.qweight);
  const T* xg = static_cast<const T*>(a.x);
  const unsigned char* sg = reinterpret_cast<const unsigned char*>(a.scales);
  const unsigned char* zg = reinterpret_cast<const unsigned char*>(a.zeros);

  constexpr int kXRows = kThreads / 8;  // activation rows one pass of the block copies
  static_assert((KC * BM) % kXRows == 0 && (BM % kXRows == 0 || kXRows % BM == 0), "activation copy passes");
  constexpr int kXIters = KC * BM / kXRows;
  static_assert(kXIters <= 32, "x_ok mask");
  const int xc = threadIdx.x % 8, xr0 = threadIdx.x / 8;
  uint32_t x_ok = 0;  // bit i: the row of pass i ((xr0 + i * kXRows) % BM) exists
#pragma unroll
  for (int i = 0; i < kXIters; ++i) x_ok |= (m0 + (xr0 + i * kXRows) % BM < a.M ? 1u : 0u) << i;
  const T* xsrc = xg + static_cast<int64_t>(m0) * a.K + kt0 * w4::kTileK + xc * 8;

  // Per-thread copy plan, fixed for the whole K loop: which 16-byte pieces of a stage this thread copies and
  // loop-carried source pointers, so that a stage costs a few adds per piece (no per-stage divisions).
  // Weights: piece (p, chunk q, tile) = (t % 32, t / 32 % KC, t / (32 KC) + i * kWTileStep); a tile row's KC
  // chunks are contiguous in global memory.
  constexpr int kWPieces = KC * (BN / 16) * 32;
  constexpr int kWIters = (kWPieces + kThreads - 1) / kThreads;
  constexpr int kWTileStep = kThreads / (32 * KC);
  static_assert(kThreads % (32 * KC) == 0 && (kWPieces % kThreads == 0 || kWIters == 1), "weight copy plan");
  const int wq = (threadIdx.x / 32) % KC, wtile = threadIdx.x / (32 * KC);
  const unsigned char* wsrc = qw + w4::tile_offset(nb0 + wtile, kt0 + wq, a.K) + (threadIdx.x % 32) * 16;
  const int64_t w_tile_stride = static_cast<int64_t>(kWTileStep) * KT * w4::kTileBytes;
  const uint32_t w_dst = (wq * (BN / 16) + wtile) * w4::kTileBytes + (threadIdx.x % 32) * 16;
  uint32_t w_ok = 0;
#pragma unroll
  for (int i = 0; i < kWIters; ++i)
    w_ok |= (threadIdx.x + i * kThreads < kWPieces && nb0 + wtile + i * kWTileStep < NT16 ? 1u : 0u) << i;
  // Scales and zeros: at most one piece of each per thread.
  constexpr int kSPieces = KC * SLOTS * (BN / 8), kZPieces = KC * SLOTS * (BN / 32);
  static_assert(kSPieces <= kThreads && kZPieces <= kThreads, "one scale / zero piece per thread");
  const int sp = threadIdx.x % (BN / 8), ssl = (threadIdx.x / (BN / 8)) % SLOTS,
            sq = threadIdx.x / ((BN / 8) * SLOTS);
  const bool s_on = threadIdx.x < kSPieces && nb0 + sp / 2 < NT16;
  const unsigned char* s_src = sg + nb0 * 32 + sp * 16;
  const uint32_t s_dst = S::kOffS + (sq * S::kSlots + ssl) * (BN * 2) + sp * 16;
  const int zp_ = threadIdx.x % (BN / 32), zsl = (threadIdx.x / (BN / 32)) % SLOTS,
            zq = threadIdx.x / ((BN / 32) * SLOTS);
  const bool z_on = asym && threadIdx.x < kZPieces && nb0 + 2 * zp_ < NT16;
  const unsigned char* z_src = zg + nb0 * 8 + zp_ * 16;
  const uint32_t z_dst = S::kOffZ + (zq * S::kSlots + zsl) * (BN / 2) + zp_ * 16;
  auto group_of = [&](int col) { return a.group_shift >= 0 ? col >> a.group_shift : col / a.group; };

  auto issue = [&](int s, int slot) {
    const int kb_base = kt0 + s * KC;
    const uint32_t st = ring + slot * S::kStage;
    if (kb_base + wq < kt1) {
#pragma unroll
      for (int i = 0; i < kWIters; ++i)
        if ((w_ok >> i) & 1u)
          cp_async16_cg(st + w_dst + i * kWTileStep * w4::kTileBytes,
                        wsrc + static_cast<int64_t>(s) * KC * w4::kTileBytes + i * w_tile_stride);
    }
    // Activations: a thread copies 16-byte chunk xc of (chunk q, row) = divmod(xr0 + i * kXRows, BM); rows
    // past M are zero-filled (their outputs are not stored, but keep them finite).
#pragma unroll
    for (int i = 0; i < kXIters; ++i) {
      const int rq = xr0 + i * kXRows, q = rq / BM, row = rq % BM;
      if (kb_base + q >= kt1) continue;
      const bool ok = ((x_ok >> i) & 1u) != 0;
      const T* src = ok ? xsrc + static_cast<int64_t>(row) * a.K + (s * KC + q) * w4::kTileK : xg;
      cp_async16_zfill(st + S::kOffX + (q * BM + row) * 128 + ((xc ^ (row & 7)) * 16), src, ok ? 16 : 0);
    }
    if (s_on && kb_base + sq < kt1) {
      const int grp = group_of((kb_base + sq) * w4::kTileK + 16 * ssl);
      cp_async16_cg(st + s_dst, s_src + static_cast<int64_t>(grp) * a.N * 2);
    }
    if (z_on && kb_base + zq < kt1) {
      const int grp = group_of((kb_base + zq) * w4::kTileK + 16 * zsl);
      cp_async16_zfill(st + z_dst, z_src + static_cast<int64_t>(grp) * (a.N / 2), 16);
    }
  };

  float acc[WN][WM][4];
#pragma unroll
  for (int i = 0; i < WN; ++i)
#pragma unroll
    for (int j = 0; j < WM; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_stages) issue(s, s);
    cp_async_commit();
  }
  const int sl_lane = SLOTS == 1 ? 0 : tid;
  int slot_c = 0, slot_i = STAGES - 1;
  for (int it = 0; it < n_stages; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage `it` visible to all; every warp is done with the slot refilled below
    if (it + STAGES - 1 < n_stages) issue(it + STAGES - 1, slot_i);
    cp_async_commit();
    slot_i = slot_i + 1 == STAGES ? 0 : slot_i + 1;
    const unsigned char* st = smem + slot_c * S::kStage;
    slot_c = slot_c + 1 == STAGES ? 0 : slot_c + 1;
    if (kt0 + it * KC + wk >= kt1) continue;  // this warp's chunk lies past the block's K range

    TileConsts tc[WN];
#pragma unroll
    for (int i = 0; i < WN; ++i) {
      const int tile = wn * WN + i;
      const uint32_t sp = *reinterpret_cast<const uint32_t*>(
          st + S::kOffS + (wk * S::kSlots + sl_lane) * (BN * 2) + tile * 32 + gid * 4);
      const uint32_t zp = asym ? st[S::kOffZ + (wk * S::kSlots + sl_lane) * (BN / 2) + tile * 8 + gid]
                               : (w4::kSymmetricZero | (w4::kSymmetricZero << 4));
      tc[i] = tile_consts<kBF16, false>(sp, zp);
    }
    const unsigned char* xs = st + S::kOffX + (wk * BM + wm * WM * 8 + gid) * 128;
    const unsigned char* ws = st + (wk * (BN / 16) + wn * WN) * w4::kTileBytes + lane * 16;
#pragma unroll
    for (int tp = 0; tp < 2; ++tp) {
      // Half of each weight fragment (words 2tp, 2tp+1) and the activations of k-steps 2tp, 2tp+1: loading
      // per pair of steps keeps the 64x64 warp tiles (128 accumulators) within 255 registers.
      uint2 wv[WN];
#pragma unroll
      for (int i = 0; i < WN; ++i) wv[i] = *reinterpret_cast<const uint2*>(ws + i * w4::kTileBytes + tp * 8);
      const int chunk = (2 * tid + tp) ^ gid;  // rows wm*WM*8 + j*8 + gid: row & 7 == gid
#pragma unroll
      for (int th = 0; th < 2; ++th) {
        // B fragments of k-step 2tp + th (8-byte loads: 16 registers for WM = 8 instead of 32).
        uint2 xv[WM];
#pragma unroll
        for (int j = 0; j < WM; ++j)
          xv[j] = *reinterpret_cast<const uint2*>(xs + j * 8 * 128 + chunk * 16 + th * 8);
#pragma unroll
        for (int i = 0; i < WN; ++i) {
          const uint32_t w = th ? wv[i].y : wv[i].x;
          uint32_t af[4];
          dequant_word2<kBF16, false>(w, tc[i], af);
#pragma unroll
          for (int j = 0; j < WM; ++j) mma_16816_nv<kBF16>(acc[i][j], af, xv[j].x, xv[j].y);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // red[wk][m][n]: batch-major so the final stores are coalesced along n.
  constexpr int RS = S::kRedStride;
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < WN; ++i)
#pragma unroll
    for (int j = 0; j < WM; ++j) {
      const int n = (wn * WN + i) * 16 + gid, m = wm * WM * 8 + j * 8 + 2 * tid;
      float* base = red + (wk * BM) * RS;
      base[m * RS + n] = acc[i][j][0];
      base[(m + 1) * RS + n] = acc[i][j][1];
      base[m * RS + n + 8] = acc[i][j][2];
      base[(m + 1) * RS + n + 8] = acc[i][j][3];
    }
  __syncthreads();

  const int n_base = nb0 * 16;
  const int n_valid = min(BN, a.N - n_base);
  const bool y_vec = (reinterpret_cast<uintptr_t>(a.y) & 7u) == 0;
  T* y = static_cast<T*>(a.y);
  auto store4 = [&](int64_t o, float4 v) {
    if (y_vec) {
      uint2 u;
      if constexpr (kBF16) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
        u.x = *reinterpret_cast<const uint32_t*>(&lo), u.y = *reinterpret_cast<const uint32_t*>(&hi);
      } else {
        const __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
        u.x = *reinterpret_cast<const uint32_t*>(&lo), u.y = *reinterpret_cast<const uint32_t*>(&hi);
      }
      *reinterpret_cast<uint2*>(y + o) = u;
    } else {
      y[o] = Act<kBF16>::from_float(v.x), y[o + 1] = Act<kBF16>::from_float(v.y);
      y[o + 2] = Act<kBF16>::from_float(v.z), y[o + 3] = Act<kBF16>::from_float(v.w);
    }
  };
  // Quads of 4 outputs along n (N % 32 == 0, so a quad never straddles n_valid); 4 quads per thread per
  // round so the global traffic of split-K has several requests in flight per thread.
  constexpr int kQuads = BM * BN / 4;
  constexpr int kUnroll = 4;
  const int m_valid = min(BM, a.M - m0);
  for (int e0 = threadIdx.x; e0 < kQuads; e0 += kThreads * kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int e = e0 + u * kThreads;
      const int m = e / (BN / 4), n = 4 * (e % (BN / 4));
      if (e >= kQuads || m >= m_valid || n >= n_valid) continue;
      float4 v = *reinterpret_cast<const float4*>(red + m * RS + n);
#pragma unroll
      for (int q = 1; q < KC; ++q) {
        const float4 w = *reinterpret_cast<const float4*>(red + (q * BM + m) * RS + n);
        v.x += w.x, v.y += w.y, v.z += w.z, v.w += w.w;
      }
      const int64_t o = static_cast<int64_t>(m0 + m) * a.N + n_base + n;
      if (split == 1)
        store4(o, v);
      else
        __stcg(reinterpret_cast<float4*>(a.partial + static_cast<int64_t>(blockIdx.z) * a.M * a.N + o), v);
    }
  }
  if (split == 1) return;

  // Split-K: the last block of this (x, y) tile adds the partials in z order.
  __threadfence();
  __syncthreads();
  unsigned* counter = a.counters + blockIdx.y * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == static_cast<unsigned>(split - 1);
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const int64_t plane = static_cast<int64_t>(a.M) * a.N;
  for (int e0 = threadIdx.x; e0 < kQuads; e0 += kThreads * kUnroll) {
    float4 v[kUnroll];
    int64_t o[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int e = e0 + u * kThreads;
      const int m = e / (BN / 4), n = 4 * (e % (BN / 4));
      ok[u] = e < kQuads && m < m_valid && n < n_valid;
      o[u] = ok[u] ? static_cast<int64_t>(m0 + m) * a.N + n_base + n : 0;
      v[u] =
          ok[u] ? __ldcg(reinterpret_cast<const float4*>(a.partial + o[u])) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    for (int z = 1; z < split; ++z) {
      float4 w[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        w[u] = ok[u] ? __ldcg(reinterpret_cast<const float4*>(a.partial + z * plane + o[u]))
                     : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        v[u].x += w[u].x, v[u].y += w[u].y, v[u].z += w[u].z, v[u].w += w[u].w;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (ok[u]) store4(o[u], v[u]);
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

// The block shapes: (WN, WM, WARPS_N, WARPS_M, WARPS_K, STAGES, MINB), indexed by GemmConfig::shape.
//   1: BM  16, BN  64, 2 blocks/SM      2: BM  32, BN  64, 2 blocks/SM      3: BM  64, BN 128
//   4: BM 128, BN 128 (64x64 warp tiles) 5: BM 256, BN 128 (64x64 warp tiles)
using Shape1 = GemmShape<2, 2, 2, 1, 4, 4, 2>;
using Shape2 = GemmShape<2, 4, 2, 1, 4, 4, 2>;
using Shape3 = GemmShape<2, 8, 4, 1, 2, 6, 1>;
using Shape4 = GemmShape<4, 8, 2, 2, 2, 4, 1>;
using Shape5 = GemmShape<4, 8, 2, 4, 1, 4, 1>;
// 16 warps (4 per scheduler) with 32x64 warp tiles, for latency hiding at 128 registers.
using Shape6 = GemmShape<2, 8, 4, 4, 1, 4, 1>;  // BM 256, BN 128
using Shape7 = GemmShape<2, 8, 4, 2, 2, 4, 1>;  // BM 128, BN 128
using Shape8 = GemmShape<2, 4, 4, 2, 2, 4, 1>;  // BM  64, BN 128
constexpr int kShapes = 8;

template <class F>
cudaError_t with_shape(int shape, F&& f) {
  switch (shape) {
    case 1:
      return f(Shape1{});
    case 2:
      return f(Shape2{});
    case 3:
      return f(Shape3{});
    case 4:
      return f(Shape4{});
    case 5:
      return f(Shape5{});
    case 6:
      return f(Shape6{});
    case 7:
      return f(Shape7{});
    case 8:
      return f(Shape8{});
  }
  return cudaErrorInvalidValue;
}

template <bool kBF16, class S, int SLOTS>
cudaError_t set_smem() {
  static bool attr_set = false;  // per instantiation; harmless if two threads race to set it
  if (attr_set) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(w4a16_gemm_kernel<kBF16, S, SLOTS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(S::kSmem));
  if (e == cudaSuccess) attr_set = true;
  return e;
}

// Resident blocks per SM (asked once per instantiation; the context is bound to one device).
template <bool kBF16, class S>
cudaError_t occupancy(int* blocks) {
  static int cached = -1;
  if (cached >= 0) {
    *blocks = cached;
    return cudaSuccess;
  }
  cudaError_t e = set_smem<kBF16, S, 1>();
  if (e != cudaSuccess) return e;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, w4a16_gemm_kernel<kBF16, S, 1>, S::kThreads,
                                                    S::kSmem);
  if (e == cudaSuccess) cached = *blocks;
  return e;
}

}  // namespace

int gemm_block_n(int shape) {
  int bn = 0;
  (void)with_shape(shape, [&](auto s) {
    bn = decltype(s)::BN;
    return cudaSuccess;
  });
  return bn;
}

cudaError_t gemm_plan(bool bf16, int M, int N, int K, int sm_count, GemmConfig want, GemmPlan* plan) {
  if (N % 32 != 0 || K % w4::kTileK != 0 || M <= 0) return cudaErrorInvalidValue;
  GemmConfig c = want;
  if (c.shape < 1 || c.shape > kShapes) c.shape = M <= 16 ? 1 : M <= 32 ? 2 : M <= 64 ? 3 : M <= 128 ? 4 : 5;
  int bn = 0, bm = 0, kc = 0, blocks_per_sm = 0;
  const cudaError_t e = with_shape(c.shape, [&](auto s) {
    using S = decltype(s);
    bn = S::BN, bm = S::BM, kc = S::KC;
    return bf16 ? occupancy<true, S>(&blocks_per_sm) : occupancy<false, S>(&blocks_per_sm);
  });
  if (e != cudaSuccess) return e;
  const int gx = (N + bn - 1) / bn, gy = (M + bm - 1) / bm;
  const int KT = K / w4::kTileK;
  const int64_t base = static_cast<int64_t>(gx) * gy;
  if (c.split <= 0) {
    // Split K only while the grid is under one wave: pick the split (<= 4, >= 4 stages per block) with the
    // fewest waves per unit of work, the smaller on ties. A full grid is left unsplit: each split adds an
    // fp32 partial round trip of M x N through L2.
    const int64_t slots = static_cast<int64_t>(sm_count) * std::max(blocks_per_sm, 1);
    c.split = 1;
    if (base < slots) {
      double best = 1.0;
      for (int s = 2; s <= 4 && KT / (kc * s) >= 4; ++s) {
        const double cost = static_cast<double>((base * s + slots - 1) / slots) / s;
        if (cost < best - 1e-9) best = cost, c.split = s;
      }
    }
  }
  c.split = std::max(1, std::min(c.split, KT));
  plan->cfg = c;
  plan->grid = dim3(gx, gy, c.split);
  plan->blocks_per_sm = blocks_per_sm;
  plan->partial_floats = c.split > 1 ? static_cast<size_t>(c.split) * M * N : 0;
  plan->counters = c.split > 1 ? static_cast<size_t>(gx) * gy : 0;
  if (gy > 65535) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

template <bool kBF16, class S, int SLOTS>
cudaError_t launch_one(const GemmPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  const cudaError_t e = set_smem<kBF16, S, SLOTS>();
  if (e != cudaSuccess) return e;
  w4a16_gemm_kernel<kBF16, S, SLOTS><<<plan.grid, S::kThreads, S::kSmem, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t gemm_launch(bool bf16, const GemmPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  const bool one_slot = args.group % w4::kTileK == 0;
  return with_shape(plan.cfg.shape, [&](auto s) {
    using S = decltype(s);
    if (bf16)
      return one_slot ? launch_one<true, S, 1>(plan, args, stream)
                      : launch_one<true, S, 4>(plan, args, stream);
    return one_slot ? launch_one<false, S, 1>(plan, args, stream)
                    : launch_one<false, S, 4>(plan, args, stream);
  });
}

}  // namespace qforge::cuda::detail
