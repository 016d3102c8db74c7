// W4A16 tensor-core kernel: y^T[N, M] = W[N, K] x^T[K, M] with mma.sync m16n8k16, the weight as A.
//
// Block = W warps (8; 16 for tuning) over R tiles of 16 output rows and
// NT tiles of 8 batch rows. The warps split the block's K range (warp w takes K tiles w, w + W, ...), each
// with its own cp.async ring of STAGES stages in shared memory (weights, activations, scales, zeros of one
// 64-column tile); a lane only ever reads back the bytes it copied, so the ring needs no barrier. The W
// partial sums meet in shared memory at the end; when the grid is too small for the card, blocks also split
// K (grid.z) and the last block of a tile adds the fp32 partials in a fixed order (deterministic) and writes y.
//
// Instruction budget (Nsight Compute, H100, docs/cuda-kernels.md): at batch 1 the previous version issued
// ~141 instructions per 512-byte weight tile with 2 warps per scheduler, which made it issue/latency-bound
// (not bandwidth-bound). This version: loop-carried pointers instead of per-tile 64-bit index arithmetic; the
// fp16 nibbles of registers 1 and 3 are taken in place (value 1024 + 16c) and brought to c - z by one exact
// hfma2, so one shift per word instead of three; and when a tile lies in one group (g % 64 == 0, "fold") the
// mma runs on the exact integers c - z and the fp16 group scale is applied once per tile and row in fp32 (4
// FFMA) instead of one hmul2 per weight pair (16). About 60 instructions per tile remain.
#include <algorithm>

#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda::detail {
namespace {

template <int NT, int R, int W>
struct Stage {
  static constexpr int kThreads = W * 32;
  static constexpr int kW = 0;                      // R x 512 B: weight fragments, lane-major
  static constexpr int kX = R * w4::kTileBytes;     // NT x 2 planes x 512 B: activations (16 B per lane per plane)
  static constexpr int kS = kX + NT * 2 * 512;      // R x 128 B: scale pairs
  static constexpr int kZ = kS + R * 128;           // R x 128 B: zero words
  static constexpr int kBytes = kZ + R * 128;
  // Ring depth from a per-block budget: 8-warp blocks stay small enough for 3 blocks (24 warps) per SM at
  // batch <= 8 (2 above); 16-warp blocks are for grids of about one block per SM and take most of it.
  static constexpr int kBudget = W == 16 ? 200 * 1024 : (NT == 1 ? 72 * 1024 : 100 * 1024);
  static constexpr int kFit = kBudget / (W * kBytes);
  static constexpr int kStages = kFit > 4 ? 4 : (kFit < 2 ? 2 : kFit);
  // Reduction buffer row stride in floats; +1: no bank conflicts when a warp reads down a column.
  static constexpr int kRedStride = NT * 8 + 1;
  static constexpr size_t kRing = size_t{W} * kStages * kBytes;
  static constexpr size_t kRed = size_t{W} * R * 16 * kRedStride * sizeof(float);
  static constexpr size_t kSmem = kRing > kRed ? kRing : kRed;
};

template <bool kBF16, int NT, int R, int W, bool FOLD>
__global__ void __launch_bounds__(W * 32) w4a16_mma_kernel(MmaArgs a) {
  using T = typename Act<kBF16>::T;
  using L = Stage<NT, R, W>;
  constexpr int STAGES = L::kStages;
  constexpr int kThreads = L::kThreads;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tid = lane & 3;
  const int nb0 = blockIdx.x * R;        // first 16-row tile of this block
  const int m0 = blockIdx.y * NT * 8;    // first batch row
  const int KT = a.K / w4::kTileK;
  const int split = gridDim.z;
  const int kt0 = static_cast<int>(static_cast<int64_t>(KT) * blockIdx.z / split);
  const int kt1 = static_cast<int>(static_cast<int64_t>(KT) * (blockIdx.z + 1) / split);
  const int n_iter = (kt1 - kt0 > warp) ? (kt1 - kt0 - warp + W - 1) / W : 0;

  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + warp * STAGES * L::kBytes;
  const unsigned char* ring_ptr = smem + warp * STAGES * L::kBytes;
  const bool asym = a.zeros != nullptr;

  // Loop-carried source pointers of this warp's K stream (tile kb = kt0 + warp + it * W); only the group
  // index is recomputed per tile (the group of a lane's 16 columns).
  const int kb_first = kt0 + warp;
  const uint4* wsrc = static_cast<const uint4*>(a.qweight) + (static_cast<int64_t>(nb0) * KT + kb_first) * 32 + lane;
  const int64_t w_row_stride = static_cast<int64_t>(KT) * 32;  // uint4 between row tiles r and r + 1
  const T* xsrc = static_cast<const T*>(a.x) + kb_first * w4::kTileK + 16 * tid;
  uint32_t x_ok = 0;  // bit j: batch row m0 + 8j + gid exists
  int64_t x_row[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int m = m0 + j * 8 + gid;
    x_ok |= (m < a.M ? 1u : 0u) << j;
    x_row[j] = static_cast<int64_t>(m < a.M ? m : 0) * a.K;
  }
  const uint32_t* ssrc = a.scales + (nb0 * 8 + gid);
  const uint32_t* zsrc = asym ? a.zeros + (nb0 * 2 + gid / 4) : nullptr;
  const int64_t s_group_stride = a.N / 2, z_group_stride = a.N / 8;
  int kcol = kb_first * w4::kTileK + 16 * tid;  // first kernel column of this lane's 16 in the tile

  auto issue_w = [&](int stage) {
    const uint32_t st = ring + stage * L::kBytes;
#pragma unroll
    for (int r = 0; r < R; ++r) cp_async16_cg(st + L::kW + r * w4::kTileBytes + lane * 16, wsrc + r * w_row_stride);
    const int grp = a.group_shift >= 0 ? (kcol >> a.group_shift) : kcol / a.group;
    const uint32_t* sp = ssrc + grp * s_group_stride;
#pragma unroll
    for (int r = 0; r < R; ++r) cp_async4(st + L::kS + r * 128 + lane * 4, sp + r * 8);
    if (asym) {
      const uint32_t* zp = zsrc + grp * z_group_stride;
#pragma unroll
      for (int r = 0; r < R; ++r) cp_async4(st + L::kZ + r * 128 + lane * 4, zp + r * 2);
    }
    wsrc += W * 32;
    kcol += W * w4::kTileK;
  };
  // Activations (written by the previous kernel: only after grid_dependency_wait).
  auto issue_x = [&](int stage) {
    const uint32_t st = ring + stage * L::kBytes;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const bool ok = (x_ok >> j) & 1u;
      const T* src = xsrc + x_row[j];
      cp_async16_ca(st + L::kX + j * 1024 + lane * 16, src, ok);
      cp_async16_ca(st + L::kX + j * 1024 + 512 + lane * 16, src + 8, ok);
    }
    xsrc += W * w4::kTileK;
  };

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;

  // Prologue: the weights of the first STAGES-1 tiles go out before the wait for the previous kernel
  // (programmatic dependent launch; a no-op otherwise), the activations after it. The first commit group
  // holds all prologue weights, so wait_group<STAGES-2> at iteration `it` still guarantees that groups
  // 0..it (everything of stage it) have landed.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s)
    if (s < n_iter) issue_w(s);
  grid_dependency_wait();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_iter) issue_x(s);
    cp_async_commit();
  }
  const uint32_t zshift = 8 * (gid & 3);
  int stage_c = 0, stage_i = STAGES - 1;  // stage consumed / issued this iteration
  for (int it = 0; it < n_iter; ++it) {
    cp_async_wait<STAGES - 2>();
    if (it + STAGES - 1 < n_iter) {
      issue_w(stage_i);
      issue_x(stage_i);
    }
    cp_async_commit();
    stage_i = stage_i + 1 == STAGES ? 0 : stage_i + 1;

    const unsigned char* st = ring_ptr + stage_c * L::kBytes;
    stage_c = stage_c + 1 == STAGES ? 0 : stage_c + 1;
    uint4 xv[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      xv[j][0] = *reinterpret_cast<const uint4*>(st + L::kX + j * 1024 + lane * 16);
      xv[j][1] = *reinterpret_cast<const uint4*>(st + L::kX + j * 1024 + 512 + lane * 16);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4 wv = *reinterpret_cast<const uint4*>(st + L::kW + r * w4::kTileBytes + lane * 16);
      const uint32_t sp = *reinterpret_cast<const uint32_t*>(st + L::kS + r * 128 + lane * 4);
      const uint32_t zp = asym ? *reinterpret_cast<const uint32_t*>(st + L::kZ + r * 128 + lane * 4) >> zshift
                               : (w4::kSymmetricZero | (w4::kSymmetricZero << 4));
      const TileConsts tc = tile_consts<kBF16, FOLD>(sp, zp);
      const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
      float part[NT][4];  // FOLD: this tile's sum over exact integer weights, scaled once below
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[j][i] = 0.f;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        uint32_t af[4];
        dequant_word2<kBF16, FOLD>(words[t], tc, af);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          // Lane's 16 activation columns as 8 words; step t uses words 2t and 2t+1.
          const uint4& p = xv[j][t >> 1];
          const uint32_t b0 = (t & 1) ? p.z : p.x;
          const uint32_t b1 = (t & 1) ? p.w : p.y;
          mma_16816<kBF16>(FOLD ? part[j] : acc[r][j], af, b0, b1);
        }
      }
      if constexpr (FOLD) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          acc[r][j][0] = fmaf(tc.f0, part[j][0], acc[r][j][0]);
          acc[r][j][1] = fmaf(tc.f0, part[j][1], acc[r][j][1]);
          acc[r][j][2] = fmaf(tc.f1, part[j][2], acc[r][j][2]);
          acc[r][j][3] = fmaf(tc.f1, part[j][3], acc[r][j][3]);
        }
      }
    }
  }
  // This grid no longer needs the memory system for long: let the next kernel in the stream (launched with
  // PDL) start its weight prologue. Triggering here rather than at entry keeps at most two grids resident.
  grid_dependency_launch();
  cp_async_wait<0>();
  __syncthreads();

  // Sum the W warps' partials: red[warp][n_local][m_local].
  constexpr int RS = L::kRedStride;
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int n = r * 16 + gid, m = j * 8 + 2 * tid;
      float* base = red + (warp * R * 16) * RS;
      base[n * RS + m] = acc[r][j][0];
      base[n * RS + m + 1] = acc[r][j][1];
      base[(n + 8) * RS + m] = acc[r][j][2];
      base[(n + 8) * RS + m + 1] = acc[r][j][3];
    }
  __syncthreads();

  constexpr int kOut = R * 16 * NT * 8;
  const int n_base = nb0 * 16;
  T* y = static_cast<T*>(a.y);
  for (int e = threadIdx.x; e < kOut; e += kThreads) {
    const int nl = e % (R * 16), ml = e / (R * 16);
    const int m = m0 + ml;
    if (m >= a.M) continue;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) s += red[(w * R * 16 + nl) * RS + ml];
    if (split == 1)
      y[static_cast<int64_t>(m) * a.N + n_base + nl] = Act<kBF16>::from_float(s);
    else
      a.partial[(static_cast<int64_t>(blockIdx.z) * a.M + m) * a.N + n_base + nl] = s;
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
  for (int e = threadIdx.x; e < kOut; e += kThreads) {
    const int nl = e % (R * 16), ml = e / (R * 16);
    const int m = m0 + ml;
    if (m >= a.M) continue;
    float s = 0.f;
    for (int z = 0; z < split; ++z) s += __ldcg(a.partial + (static_cast<int64_t>(z) * a.M + m) * a.N + n_base + nl);
    y[static_cast<int64_t>(m) * a.N + n_base + nl] = Act<kBF16>::from_float(s);
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

template <bool kBF16, int NT, int R, int W, bool FOLD>
cudaError_t set_smem(void (*kernel)(MmaArgs)) {
  static bool attr_set = false;  // per instantiation; harmless if two threads race to set it
  if (attr_set) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(Stage<NT, R, W>::kSmem));
  if (e == cudaSuccess) attr_set = true;
  return e;
}

template <bool kBF16, int NT, int R, int W, bool FOLD>
cudaError_t launch_one(const MmaPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  auto kernel = w4a16_mma_kernel<kBF16, NT, R, W, FOLD>;
  const cudaError_t e = set_smem<kBF16, NT, R, W, FOLD>(kernel);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = plan.grid;
  cfg.blockDim = dim3(W * 32);
  cfg.dynamicSmemBytes = Stage<NT, R, W>::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = plan.cfg.pdl > 0 ? 1 : 0;
  const cudaError_t e2 = cudaLaunchKernelEx(&cfg, kernel, args);
  return e2 != cudaSuccess ? e2 : cudaGetLastError();
}

template <bool kBF16, int NT, int R, int W>
cudaError_t occupancy(int* blocks) {
  auto kernel = w4a16_mma_kernel<kBF16, NT, R, W, true>;
  const cudaError_t e = set_smem<kBF16, NT, R, W, true>(kernel);
  if (e != cudaSuccess) return e;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, W * 32, Stage<NT, R, W>::kSmem);
}

// The instantiated (NT, R, warps) block shapes (each with and without the folded scale); anything else is
// rejected by mma_plan. 16-warp blocks exist for the batch 1-16 shapes (nt <= 2, r = 2).
#define QF_W4_FOR_EACH_SHAPE(X) \
  X(1, 1, 8) X(1, 2, 8) X(1, 4, 8) X(2, 1, 8) X(2, 2, 8) X(2, 4, 8) X(4, 2, 8) X(8, 2, 8) X(1, 2, 16) X(2, 2, 16)

bool has_shape(int nt, int r, int warps) {
#define QF_W4_HAS(NT_, R_, W_) \
  if (nt == NT_ && r == R_ && warps == W_) return true;
  QF_W4_FOR_EACH_SHAPE(QF_W4_HAS)
#undef QF_W4_HAS
  return false;
}

template <bool kBF16>
cudaError_t dispatch_occupancy(int nt, int r, int warps, int* blocks) {
#define QF_W4_OCC(NT_, R_, W_) \
  if (nt == NT_ && r == R_ && warps == W_) return occupancy<kBF16, NT_, R_, W_>(blocks);
  QF_W4_FOR_EACH_SHAPE(QF_W4_OCC)
#undef QF_W4_OCC
  return cudaErrorInvalidValue;
}

template <bool kBF16>
cudaError_t dispatch_launch(const MmaPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  // Fold the scale per tile when every 64-column tile lies in one group.
  const bool fold = args.group % w4::kTileK == 0;
#define QF_W4_LAUNCH(NT_, R_, W_)                                                                        \
  if (plan.cfg.nt == NT_ && plan.cfg.r == R_ && plan.cfg.warps == W_)                                   \
    return fold ? launch_one<kBF16, NT_, R_, W_, true>(plan, args, stream)                              \
                : launch_one<kBF16, NT_, R_, W_, false>(plan, args, stream);
  QF_W4_FOR_EACH_SHAPE(QF_W4_LAUNCH)
#undef QF_W4_LAUNCH
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t mma_plan(bool bf16, int M, int N, int K, int sm_count, MmaConfig want, MmaPlan* plan) {
  MmaConfig c = want;
  if (c.nt == 0) c.nt = M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8;
  // r = 2 output tiles per warp won every H100 sweep at M <= 64 (docs/cuda-kernels.md); r = 1 and 4 are kept
  // for tuning. nt >= 4 is only instantiated with r = 2.
  if (c.r == 0 || c.nt >= 4) c.r = 2;
  if (N % (16 * c.r) != 0) c.r = N % 32 == 0 ? 2 : 1;
  if (c.nt >= 4 && c.r != 2) c.nt = 2;  // N % 32 != 0: the large batch tiles need two output tiles
  const int gy_nt = (M + 8 * c.nt - 1) / (8 * c.nt);
  const int gx = N / (16 * c.r);
  const int KT = K / w4::kTileK;
  const int64_t base = static_cast<int64_t>(gx) * gy_nt;
  // 8 warps per block: with this kernel's smaller ring (3 blocks per SM at batch <= 8), 16-warp blocks were
  // no faster on the 7B shapes and slower on the others (H100 sweep, docs/cuda-kernels.md); kept for tuning.
  if (c.warps == 0 || !has_shape(c.nt, c.r, c.warps)) c.warps = 8;
  if (c.split == 0) {
    // Split K over blocks only when the grid covers under half the card: the fix-up costs a partial round
    // trip (a 128-block grid on 132 SMs ran faster unsplit).
    c.split = 1;
    if (2 * base < sm_count) {
      int blocks = 0;
      const cudaError_t e = bf16 ? dispatch_occupancy<true>(c.nt, c.r, c.warps, &blocks)
                                 : dispatch_occupancy<false>(c.nt, c.r, c.warps, &blocks);
      if (e != cudaSuccess) return e;
      const int64_t target = static_cast<int64_t>(sm_count) * std::max(blocks, 1);
      c.split = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(target / base, KT / (2 * c.warps))));
    }
  }
  c.split = std::max(1, std::min(c.split, KT));
  plan->cfg = c;
  plan->grid = dim3(gx, gy_nt, c.split);
  plan->stages = 0;
  plan->smem = 0;
  plan->partial_floats = c.split > 1 ? static_cast<size_t>(c.split) * M * N : 0;
  plan->counters = c.split > 1 ? static_cast<size_t>(gx) * gy_nt : 0;
  if (gy_nt > 65535) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

cudaError_t mma_launch(bool bf16, const MmaPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  return bf16 ? dispatch_launch<true>(plan, args, stream) : dispatch_launch<false>(plan, args, stream);
}

}  // namespace qforge::cuda::detail
