// W4A16 tensor-core kernel: y^T[N, M] = W[N, K] x^T[K, M] with mma.sync m16n8k16, the weight as A.
//
// Block = 8 warps over R tiles of 16 output rows and NT tiles of 8 batch rows. The warps split the block's
// K range (warp w takes K tiles w, w + 8, ...), each with its own cp.async ring of STAGES stages in shared
// memory (weights, activations, scales, zeros of one 64-column tile); a lane only ever reads back the bytes
// it copied, so the ring needs no barrier. The 8 partial sums meet in shared memory at the end; when the
// grid is too small for the card, blocks also split K (grid.z) and the last block of a tile adds the fp32
// partials in a fixed order (deterministic) and writes y.
#include <algorithm>

#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda::detail {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <int NT, int R>
struct Stage {
  static constexpr int kW = 0;                      // R x 512 B: weight fragments, lane-major
  static constexpr int kX = R * w4::kTileBytes;     // NT x 2 planes x 512 B: activations (16 B per lane per plane)
  static constexpr int kS = kX + NT * 2 * 512;      // R x 128 B: scale pairs
  static constexpr int kZ = kS + R * 128;           // R x 128 B: zero words
  static constexpr int kBytes = kZ + R * 128;
  // Ring depth: keep a block at or under ~100 KB so two blocks (16 warps) fit an SM where possible.
  static constexpr int kFit = (100 * 1024) / (kWarps * kBytes);
  static constexpr int kStages = kFit > 4 ? 4 : (kFit < 2 ? 2 : kFit);
  // Reduction buffer row stride in floats; +1: no bank conflicts when a warp reads down a column.
  static constexpr int kRedStride = NT * 8 + 1;
  static constexpr size_t kRing = size_t{kWarps} * kStages * kBytes;
  static constexpr size_t kRed = size_t{kWarps} * R * 16 * kRedStride * sizeof(float);
  static constexpr size_t kSmem = kRing > kRed ? kRing : kRed;
};

template <bool kBF16, int NT, int R>
__global__ void __launch_bounds__(kThreads) w4a16_mma_kernel(MmaArgs a) {
  using T = typename Act<kBF16>::T;
  using L = Stage<NT, R>;
  constexpr int STAGES = L::kStages;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tid = lane & 3;
  const int nb0 = blockIdx.x * R;        // first 16-row tile of this block
  const int m0 = blockIdx.y * NT * 8;    // first batch row
  const int KT = a.K / w4::kTileK;
  const int split = gridDim.z;
  const int kt0 = static_cast<int>(static_cast<int64_t>(KT) * blockIdx.z / split);
  const int kt1 = static_cast<int>(static_cast<int64_t>(KT) * (blockIdx.z + 1) / split);
  const int n_iter = (kt1 - kt0 > warp) ? (kt1 - kt0 - warp + kWarps - 1) / kWarps : 0;

  const uint4* qw = static_cast<const uint4*>(a.qweight);
  const T* x = static_cast<const T*>(a.x);
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + warp * STAGES * L::kBytes;
  const unsigned char* ring_ptr = smem + warp * STAGES * L::kBytes;
  const bool asym = a.zeros != nullptr;

  auto issue = [&](int it, int stage) {
    const int kb = kt0 + warp + it * kWarps;
    const uint32_t st = ring + stage * L::kBytes;
#pragma unroll
    for (int r = 0; r < R; ++r)
      cp_async16_cg(st + L::kW + r * w4::kTileBytes + lane * 16, qw + (static_cast<int64_t>(nb0 + r) * KT + kb) * 32 + lane);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int m = m0 + j * 8 + gid;
      const bool ok = m < a.M;
      const T* src = x + static_cast<int64_t>(ok ? m : 0) * a.K + kb * w4::kTileK + 16 * tid;
      cp_async16_ca(st + L::kX + j * 1024 + lane * 16, src, ok);
      cp_async16_ca(st + L::kX + j * 1024 + 512 + lane * 16, src + 8, ok);
    }
    const int kcol = kb * w4::kTileK + 16 * tid;
    const int grp = a.group_shift >= 0 ? (kcol >> a.group_shift) : kcol / a.group;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      cp_async4(st + L::kS + r * 128 + lane * 4, a.scales + static_cast<int64_t>(grp) * (a.N / 2) + (nb0 + r) * 8 + gid);
      if (asym)
        cp_async4(st + L::kZ + r * 128 + lane * 4, a.zeros + static_cast<int64_t>(grp) * (a.N / 8) + (nb0 + r) * 2 + gid / 4);
    }
  };

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][j][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_iter) issue(s, s);
    cp_async_commit();
  }
  for (int it = 0; it < n_iter; ++it) {
    cp_async_wait<STAGES - 2>();
    if (it + STAGES - 1 < n_iter) issue(it + STAGES - 1, (it + STAGES - 1) % STAGES);
    cp_async_commit();

    const unsigned char* st = ring_ptr + (it % STAGES) * L::kBytes;
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
      const uint32_t zp =
          asym ? (*reinterpret_cast<const uint32_t*>(st + L::kZ + r * 128 + lane * 4) >> (8 * (gid & 3))) & 0xFFu
               : (w4::kSymmetricZero | (w4::kSymmetricZero << 4));
      const GroupConsts gc = group_consts<kBF16>(sp, zp);
      const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        uint32_t af[4];
        dequant_word<kBF16>(words[t], gc, af);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          // Lane's 16 activation columns as 8 words; step t uses words 2t and 2t+1.
          const uint4& p = xv[j][t >> 1];
          const uint32_t b0 = (t & 1) ? p.z : p.x;
          const uint32_t b1 = (t & 1) ? p.w : p.y;
          mma_16816<kBF16>(acc[r][j], af, b0, b1);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Sum the 8 warps' partials: red[warp][n_local][m_local].
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
    for (int w = 0; w < kWarps; ++w) s += red[(w * R * 16 + nl) * RS + ml];
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

template <bool kBF16, int NT, int R>
cudaError_t launch_one(const MmaPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  auto kernel = w4a16_mma_kernel<kBF16, NT, R>;
  constexpr size_t smem = Stage<NT, R>::kSmem;
  static bool attr_set = false;  // per instantiation; harmless if two threads race to set it
  if (!attr_set) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  kernel<<<plan.grid, kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

template <bool kBF16, int NT, int R>
cudaError_t occupancy(int* blocks) {
  auto kernel = w4a16_mma_kernel<kBF16, NT, R>;
  constexpr size_t smem = Stage<NT, R>::kSmem;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, kThreads, smem);
}

// The instantiated (NT, R) shapes; anything else is rejected by mma_plan.
#define QF_W4_FOR_EACH_SHAPE(X) X(1, 1) X(1, 2) X(1, 4) X(2, 1) X(2, 2) X(2, 4) X(4, 2) X(8, 2)

template <bool kBF16>
cudaError_t dispatch_occupancy(int nt, int r, int* blocks) {
#define QF_W4_OCC(NT_, R_) \
  if (nt == NT_ && r == R_) return occupancy<kBF16, NT_, R_>(blocks);
  QF_W4_FOR_EACH_SHAPE(QF_W4_OCC)
#undef QF_W4_OCC
  return cudaErrorInvalidValue;
}

template <bool kBF16>
cudaError_t dispatch_launch(const MmaPlan& plan, const MmaArgs& args, cudaStream_t stream) {
#define QF_W4_LAUNCH(NT_, R_) \
  if (plan.cfg.nt == NT_ && plan.cfg.r == R_) return launch_one<kBF16, NT_, R_>(plan, args, stream);
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
  if (c.split == 0) {
    // Split K over blocks only when the grid covers under half the card: the fix-up costs a partial round
    // trip (a 128-block grid on 132 SMs ran faster unsplit).
    c.split = 1;
    const int64_t base = static_cast<int64_t>(gx) * gy_nt;
    if (2 * base < sm_count) {
      int blocks = 0;
      const cudaError_t e = bf16 ? dispatch_occupancy<true>(c.nt, c.r, &blocks) : dispatch_occupancy<false>(c.nt, c.r, &blocks);
      if (e != cudaSuccess) return e;
      const int64_t target = static_cast<int64_t>(sm_count) * std::max(blocks, 1);
      c.split = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(target / base, KT / (2 * kWarps))));
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
