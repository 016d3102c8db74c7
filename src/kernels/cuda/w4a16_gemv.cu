// W4A16 small-batch kernel (M <= 16): a weight-streaming kernel built to keep HBM busy.
//
// Why not the mma kernel at small batch: one pass over W is the whole cost, and the mma kernel's grid (one
// block of 8 warps per 32 output rows, a 3-4 stage cp.async ring per warp) keeps only ~24-32 KB of loads in
// flight per SM on the 7B shapes, so each warp spends most of its time on the DRAM round trip (Nsight Compute:
// long-scoreboard stalls after cp.async.wait, SMs active ~70% of the kernel's time). At ~23 GB/s per SM and
// ~1 us loaded latency an SM needs >= 24 KB in flight just to break even, and a 7B matrix is only 64 KB per SM.
//
// This kernel:
//   * one block (W = 4 or 8 warps) per 16-row tile and K slice (grid.y = split); warp w streams the w-th
//     contiguous share of the slice. Blocks are small, so a 7B shape gives every SM 2+ blocks (16+ warps);
//   * weights go straight into registers with 16-byte ld.global.nc.L1::no_allocate loads, D tiles (4 or 8, a
//     template parameter) in flight per warp in a register ring: the load of tile i + D is issued before tile i
//     is computed. No shared memory and no barrier in the main loop;
//   * activations are read per warp with 16-byte __ldg loads two tiles ahead (L1-resident: every block of an SM
//     reads the same x slice), only for lanes whose batch row exists (M = 1: 4 lanes);
//   * dequantisation as in the mma kernel (w4a16_device.cuh): exact integers c - z with one lop3 and one
//     hsub2/hfma2 per pair; the mma runs on them and the group scale is applied once per tile and row in fp32
//     ("fold", g % 64 == 0), else per weight pair (g = 16, 32, 48). Two partial accumulators per tile halve
//     the mma dependency chain;
//   * the warps' sums meet in shared memory in warp order; with split > 1 the last block of a row tile adds the
//     fp32 partials in split order (deterministic; counters self-reset);
//   * programmatic dependent launch (optional, GemvConfig::pdl): the weight prologue is issued before
//     griddepcontrol.wait, the activations after it.
#include <algorithm>

#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda::detail {
namespace {

constexpr int kGvMaxM = 16;      // two mma n8 batch tiles
constexpr int kGvMaxWarps = 8;
// Activation loads this many tiles ahead. Measured on H100 (docs/cuda-kernels.md): putting x in the weight ring
// at full depth (DX = D) raised registers to 110-243 and was 1.3-2x slower at every shape.
constexpr int kGvXAhead = 2;

// Blocks of 8 warps per SM the register budget is sized for (2: 128 registers per thread, 1: 255).
template <int NT, int D>
constexpr int gemv_min_blocks() {
  return (NT == 2 && D == 8) ? 1 : 2;
}

template <bool kBF16, bool kFold, int NT, int D>
__global__ void __launch_bounds__(kGvMaxWarps * 32, gemv_min_blocks<NT, D>()) w4a16_gemv_kernel(MmaArgs a) {
  using T = typename Act<kBF16>::T;
  constexpr int DX = kGvXAhead;
  static_assert(D % DX == 0, "the x ring slot of tile base + s must be s % DX");
  constexpr int RS = NT * 8 + 1;  // reduction row stride (floats)
  __shared__ float red[kGvMaxWarps * w4::kTileN * RS];
  __shared__ int is_last;

  const int W = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tid = lane & 3;
  const int KT = a.K / w4::kTileK;
  const int split = gridDim.y;
  const int kb0 = static_cast<int>(static_cast<int64_t>(KT) * blockIdx.y / split);
  const int kb1 = static_cast<int>(static_cast<int64_t>(KT) * (blockIdx.y + 1) / split);
  const int i0 = kb0 + (kb1 - kb0) * warp / W;                 // first K tile of this warp
  const int n = kb0 + (kb1 - kb0) * (warp + 1) / W - i0;       // K tiles of this warp
  const int nb = blockIdx.x;                                   // 16-row tile
  const bool asym = a.zeros != nullptr;

  const uint4* wp = static_cast<const uint4*>(a.qweight) + (static_cast<int64_t>(nb) * KT + i0) * 32 + lane;
  const T* xp[NT];
  bool xok[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int m = 8 * j + gid;
    xok[j] = m < a.M;
    xp[j] = static_cast<const T*>(a.x) + static_cast<int64_t>(xok[j] ? m : 0) * a.K + i0 * w4::kTileK + 16 * tid;
  }
  const uint32_t* sp = a.scales + nb * 8 + gid;
  const uint32_t* zp = asym ? a.zeros + nb * 2 + gid / 4 : nullptr;
  const int64_t s_stride = a.N / 2, z_stride = a.N / 8;
  const int kcol0 = i0 * w4::kTileK + 16 * tid;  // first kernel column of this lane's 16 in tile i0
  const uint32_t zshift = 8 * (gid & 3);

  // Register rings: weights, scale pair and zero byte pair D tiles deep, activations DX tiles deep.
  uint4 wv[D];
  uint32_t sv[D], zv[D];
  uint4 xv[DX][NT][2];
  auto load_w = [&](int s, int i) {
    wv[s] = ld_stream16(wp + i * 32);
    const int col = kcol0 + i * w4::kTileK;
    const int grp = a.group_shift >= 0 ? (col >> a.group_shift) : col / a.group;
    sv[s] = __ldg(sp + grp * s_stride);
    zv[s] = asym ? __ldg(zp + grp * z_stride) >> zshift : (w4::kSymmetricZero | (w4::kSymmetricZero << 4));
  };
  auto load_x = [&](int s, int i) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      if (xok[j]) {
        const uint4* p = reinterpret_cast<const uint4*>(xp[j] + i * w4::kTileK);
        xv[s][j][0] = __ldg(p);
        xv[s][j][1] = __ldg(p + 1);
      } else {
        xv[s][j][0] = xv[s][j][1] = make_uint4(0, 0, 0, 0);
      }
    }
  };

  // Prologue: weights before the wait for the previous kernel (PDL; a no-op otherwise), activations after.
#pragma unroll
  for (int s = 0; s < D; ++s)
    if (s < n) load_w(s, s);
  grid_dependency_wait();
#pragma unroll
  for (int s = 0; s < DX; ++s)
    if (s < n) load_x(s, s);

  float acc[NT][4], acc2[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[j][q] = acc2[j][q] = 0.f;

  for (int base = 0; base < n; base += D) {
#pragma unroll
    for (int s = 0; s < D; ++s) {
      const int i = base + s;
      if (i >= n) break;
      // Compute tile i from the ring slots, then refill them (tiles i + D and i + DX): D - 1 weight tiles stay
      // in flight while this one is computed, with no second copy of the slot in registers.
      const uint4 w = wv[s];
      const uint32_t sc = sv[s], zc = zv[s];
      const uint4(&xc)[NT][2] = xv[s % DX];
      const TileConsts tc = tile_consts<kBF16, kFold>(sc, zc);
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
      float p0[NT][4], p1[NT][4];  // kFold: this tile's sums over exact integer weights (even / odd k-steps)
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        uint32_t af[4];
        dequant_word2<kBF16, kFold>(words[t], tc, af);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          // Lane's 16 activation columns as 8 words; step t uses words 2t and 2t+1.
          const uint4& p = xc[j][t >> 1];
          const uint32_t b0 = (t & 1) ? p.z : p.x;
          const uint32_t b1 = (t & 1) ? p.w : p.y;
          if constexpr (kFold) {
            if (t == 0) mma_16816_z<kBF16>(p0[j], af, b0, b1);
            else if (t == 1) mma_16816_z<kBF16>(p1[j], af, b0, b1);
            else mma_16816_nv<kBF16>((t & 1) ? p1[j] : p0[j], af, b0, b1);
          } else {
            mma_16816_nv<kBF16>((t & 1) ? acc2[j] : acc[j], af, b0, b1);
          }
        }
      }
      if constexpr (kFold) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          acc[j][0] = fmaf(tc.f0, p0[j][0] + p1[j][0], acc[j][0]);
          acc[j][1] = fmaf(tc.f0, p0[j][1] + p1[j][1], acc[j][1]);
          acc[j][2] = fmaf(tc.f1, p0[j][2] + p1[j][2], acc[j][2]);
          acc[j][3] = fmaf(tc.f1, p0[j][3] + p1[j][3], acc[j][3]);
        }
      }
      if (i + D < n) load_w(s, i + D);
      if (i + DX < n) load_x(s % DX, i + DX);
    }
  }
  // The next kernel in the stream (PDL) may start its weight prologue now.
  grid_dependency_launch();
  if constexpr (!kFold) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[j][q] += acc2[j][q];
  }

  // Sum the warps' partials in warp order: red[warp][row 0..15][batch 0..NT*8).
  // acc[j]: {0, 1} = row gid, batch 8j + 2tid (+1); {2, 3} = row gid + 8.
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int q = 0; q < 4; ++q)
      red[(warp * w4::kTileN + gid + 8 * (q >> 1)) * RS + 8 * j + 2 * tid + (q & 1)] = acc[j][q];
  __syncthreads();
  T* y = static_cast<T*>(a.y);
  const int n_base = nb * w4::kTileN;
  const int outs = w4::kTileN * a.M;
  for (int e = threadIdx.x; e < outs; e += blockDim.x) {
    const int nl = e & 15, m = e >> 4;
    float v = 0.f;
    for (int ww = 0; ww < W; ++ww) v += red[(ww * w4::kTileN + nl) * RS + m];
    if (split == 1)
      y[static_cast<int64_t>(m) * a.N + n_base + nl] = Act<kBF16>::from_float(v);
    else
      a.partial[(static_cast<int64_t>(blockIdx.y) * a.M + m) * a.N + n_base + nl] = v;
  }
  if (split == 1) return;

  // Split-K: the last block of this row tile adds the partials in blockIdx.y order.
  __threadfence();
  __syncthreads();
  unsigned* counter = a.counters + blockIdx.x;
  if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == static_cast<unsigned>(split - 1);
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  for (int e = threadIdx.x; e < outs; e += blockDim.x) {
    const int nl = e & 15, m = e >> 4;
    float v = 0.f;
    for (int z = 0; z < split; ++z)
      v += __ldcg(a.partial + (static_cast<int64_t>(z) * a.M + m) * a.N + n_base + nl);
    y[static_cast<int64_t>(m) * a.N + n_base + nl] = Act<kBF16>::from_float(v);
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

template <bool kBF16, bool kFold, int NT, int D>
cudaError_t launch_gemv(const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  auto kernel = w4a16_gemv_kernel<kBF16, kFold, NT, D>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = plan.grid;
  cfg.blockDim = dim3(plan.cfg.warps * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = plan.cfg.pdl > 0 ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args);
  return e != cudaSuccess ? e : cudaGetLastError();
}

template <bool kBF16, bool kFold>
cudaError_t dispatch_gemv(const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  const int nt = plan.nt, d = plan.cfg.depth;
  if (nt == 1 && d == 4) return launch_gemv<kBF16, kFold, 1, 4>(plan, args, stream);
  if (nt == 1 && d == 8) return launch_gemv<kBF16, kFold, 1, 8>(plan, args, stream);
  if (nt == 2 && d == 4) return launch_gemv<kBF16, kFold, 2, 4>(plan, args, stream);
  if (nt == 2 && d == 8) return launch_gemv<kBF16, kFold, 2, 8>(plan, args, stream);
  return cudaErrorInvalidValue;
}

template <int NT, int D>
cudaError_t gemv_occupancy(int warps, int* blocks) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, w4a16_gemv_kernel<false, true, NT, D>, warps * 32, 0);
}

}  // namespace

int gemv_max_m() { return kGvMaxM; }

cudaError_t gemv_plan(int M, int N, int K, int group, int sm_count, GemvConfig want, GemvPlan* plan) {
  if (M < 1 || M > kGvMaxM || N % w4::kTileN || K % w4::kTileK || group <= 0) return cudaErrorInvalidValue;
  GemvConfig c = want;
  const int nt = M <= 8 ? 1 : 2;
  const int NTR = N / w4::kTileN, KT = K / w4::kTileK;
  const int sms = std::max(sm_count, 1);
  // Defaults from the H100 sweep (docs/cuda-kernels.md).
  if (c.depth == 0) c.depth = 4;
  if (c.depth != 4 && c.depth != 8) return cudaErrorInvalidValue;
  if (c.warps == 0) c.warps = nt == 1 && KT >= 16 ? 8 : 4;
  if (c.warps != 4 && c.warps != 8) return cudaErrorInvalidValue;
  if (c.split == 0) {
    // Split K over blocks only while the row tiles alone leave resident block slots empty, and not below
    // two K tiles per warp (the fix-up costs a partial round trip at the end).
    int occ = 0;
    cudaError_t e = cudaSuccess;
    if (nt == 1) e = c.depth == 4 ? gemv_occupancy<1, 4>(c.warps, &occ) : gemv_occupancy<1, 8>(c.warps, &occ);
    else e = c.depth == 4 ? gemv_occupancy<2, 4>(c.warps, &occ) : gemv_occupancy<2, 8>(c.warps, &occ);
    if (e != cudaSuccess) return e;
    const int resident = sms * std::max(occ, 1);
    c.split = std::max(1, std::min(resident / NTR, KT / (2 * c.warps)));
  }
  c.split = std::max(1, std::min(c.split, KT));
  plan->cfg = c;
  plan->nt = nt;
  plan->fold = group % w4::kTileK == 0;
  plan->grid = dim3(NTR, c.split, 1);
  plan->partial_floats = c.split > 1 ? static_cast<size_t>(c.split) * M * N : 0;
  plan->counters = c.split > 1 ? static_cast<size_t>(NTR) : 0;
  if (c.split > 65535) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

cudaError_t gemv_launch(bool bf16, const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  if (bf16) return plan.fold ? dispatch_gemv<true, true>(plan, args, stream) : dispatch_gemv<true, false>(plan, args, stream);
  return plan.fold ? dispatch_gemv<false, true>(plan, args, stream) : dispatch_gemv<false, false>(plan, args, stream);
}

}  // namespace qforge::cuda::detail
