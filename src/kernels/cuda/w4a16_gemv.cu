// W4A16 small-batch kernel (M <= 8): a weight-streaming kernel built to run at memory speed.
//
// Why not the mma kernel: at M <= 8 one pass over W is the whole cost, and the mma kernel spent ~130 issued
// instructions per 512-byte tile per warp (cp.async ring through shared memory, per-tile scale/zero loads,
// a scale multiply per weight). This kernel:
//   * reads the weight straight into registers with 16-byte ld.global.nc.L1::no_allocate loads, 8 per lane
//     in flight (k-steps x R tiles), no shared memory round trip. At M <= 8 the time is a few memory latencies
//     (~1-2 us loaded) unless each SM keeps ~32-64 KB of loads in flight: 16 warps x 32 lanes x 8 x 16 B;
//   * stages the block's slice of x once in shared memory (all warps of a block share the same K slice);
//   * dequantises to the exact integers (code - zero) with one lop3 and one hsub2/hfma2 per pair (no scale),
//     multiplies them with x on the tensor cores (mma m16n8k16, fp32 accumulation: per instruction that is
//     256 MACs, 8x fewer issue slots than fp32 FMAs on the CUDA cores), and applies the group scale once per
//     group and row in fp32. When a 64-column tile can span two groups (g % 64 != 0: g = 16, 32, 48, ...)
//     the scale is applied per weight as in the mma kernel ("unfolded");
//   * splits K over blocks only when the x slice would not fit shared memory or the matrix is too short to
//     give every SM a block; the last block of a row slice then adds the fp32 partials in a fixed order
//     (deterministic, counters self-reset).
//
// Block = 8 warps over R row tiles (16 R rows) and one K slice (blockIdx.y of gridDim.y); warp w takes the
// w-th contiguous eighth of the slice's k-steps, kGvLoads / R of them in flight, and the warps' partial sums
// meet in shared memory (fixed order).
#include <algorithm>

#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda::detail {
namespace {

constexpr int kGvWarps = 8;
constexpr int kGvThreads = kGvWarps * 32;
constexpr int kGvLoads = 8;                  // 16-byte weight loads in flight per lane (k-steps x R)
constexpr int kGvSmemCap = 96 * 1024;        // x slice per block (opt-in above 48 KB); 2 blocks per SM fit
constexpr int kGvMaxM = 8;                   // one mma n8 batch tile
constexpr int kGvRedBytes = kGvWarps * 2 * 16 * 8 * 4 + 16;  // cross-warp reduction (R <= 2), alignment

// 16 bytes streamed once: no L1 allocation, 256-byte L2 prefetch (a warp reads 512 contiguous bytes).
__device__ __forceinline__ uint4 ld_stream16(const uint4* p) {
  uint4 v;
  // volatile: keeps the prologue loads ahead of the x staging and its barrier (so both latencies overlap).
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Per-lane constants of one group for rows gid (lo) and gid+8 (hi): what to subtract from the magic-number
// pairs so that they become the exact integers code - zero.
struct FoldConsts {
  uint32_t zlo;   // fp16: (1024 + z_lo) pair; bf16: (128 + z_lo) pair
  uint32_t zhi;   // fp16: -(64 + z_hi) pair (for the x16 nibbles, see dequant_word_int); bf16: (128 + z_hi) pair
};

template <bool kBF16>
__device__ __forceinline__ FoldConsts fold_consts(uint32_t zero_pair) {
  const uint32_t z0 = zero_pair & 15u, z1 = (zero_pair >> 4) & 15u;
  FoldConsts c;
  if constexpr (!kBF16) {
    c.zlo = (0x6400u | z0) * 0x10001u;
    c.zhi = (0xD400u | (z1 << 4)) * 0x10001u;  // -(64 + z1): 64 = 0x5400, ulp 1/16 there, sign 0x8000
  } else {
    c.zlo = (0x4300u | z0) * 0x10001u;
    c.zhi = (0x4300u | z1) * 0x10001u;
  }
  return c;
}

// One packed word -> the four mma A registers of one k-step as exact integers code - zero (layout in
// w4a16_layout.h: register j = nibbles j, j+4). fp16: nibbles 1, 5 (3, 7) are masked in place as 1024 + 16c
// and brought to c - z by one exact hfma2 (x 1/16, - (64 + z)), which saves three shifts per word.
template <bool kBF16>
__device__ __forceinline__ void dequant_word_int(uint32_t w, const FoldConsts& c, uint32_t a[4]) {
  if constexpr (!kBF16) {
    const uint32_t w8 = w >> 8;
    const uint32_t v0 = lop3_and_or(w, 0x000F000Fu, 0x64006400u);
    const uint32_t v1 = lop3_and_or(w, 0x00F000F0u, 0x64006400u);
    const uint32_t v2 = lop3_and_or(w8, 0x000F000Fu, 0x64006400u);
    const uint32_t v3 = lop3_and_or(w8, 0x00F000F0u, 0x64006400u);
    const uint32_t sixteenth = 0x2C002C00u;  // 1/16
    const __half2 zlo = *reinterpret_cast<const __half2*>(&c.zlo), zhi = *reinterpret_cast<const __half2*>(&c.zhi);
    const __half2 k = *reinterpret_cast<const __half2*>(&sixteenth);
    __half2 h0 = __hsub2(*reinterpret_cast<const __half2*>(&v0), zlo);
    __half2 h1 = __hfma2(*reinterpret_cast<const __half2*>(&v1), k, zhi);
    __half2 h2 = __hsub2(*reinterpret_cast<const __half2*>(&v2), zlo);
    __half2 h3 = __hfma2(*reinterpret_cast<const __half2*>(&v3), k, zhi);
    a[0] = *reinterpret_cast<uint32_t*>(&h0);
    a[1] = *reinterpret_cast<uint32_t*>(&h1);
    a[2] = *reinterpret_cast<uint32_t*>(&h2);
    a[3] = *reinterpret_cast<uint32_t*>(&h3);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t v = lop3_and_or(w >> (4 * j), 0x000F000Fu, 0x43004300u);
      const uint32_t z = (j & 1) ? c.zhi : c.zlo;
      __nv_bfloat162 h =
          __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), *reinterpret_cast<const __nv_bfloat162*>(&z));
      a[j] = *reinterpret_cast<uint32_t*>(&h);
    }
  }
}

__device__ __forceinline__ int group_of(int col, int group, int shift) { return shift >= 0 ? col >> shift : col / group; }

template <bool kBF16, bool kFold, int R>
__global__ void __launch_bounds__(kGvThreads, 2) w4a16_gemv_kernel(MmaArgs a) {
  using T = typename Act<kBF16>::T;
  constexpr int D = kGvLoads / R;  // k-steps in flight per warp
  // Shared memory: x slice [M][cols + 8] 16-bit (rows padded by 16 B: no bank conflicts), then the
  // cross-warp reduction [warps][R * 16 rows][8 batch] fp32.
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tid = lane & 3;
  const int NT = a.N / w4::kTileN, KT = a.K / w4::kTileK;
  const int split = gridDim.y;
  const int k0 = static_cast<int>(static_cast<int64_t>(KT) * blockIdx.y / split);
  const int k1 = static_cast<int>(static_cast<int64_t>(KT) * (blockIdx.y + 1) / split);
  const int cols = (k1 - k0) * w4::kTileK;
  const int row_bytes = cols * 2 + 16;
  // This warp's contiguous share of the block's k-steps (block-relative step indices).
  const int i0 = (k1 - k0) * warp / kGvWarps, i1 = (k1 - k0) * (warp + 1) / kGvWarps;
  const int n = i1 - i0;
  const bool asym = a.zeros != nullptr;

  int nb[R];
  bool valid[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int t = blockIdx.x * R + r;
    valid[r] = t < NT;
    nb[r] = valid[r] ? t : NT - 1;  // out-of-range tiles re-read the last tile and are never written
  }
  const uint4* qw = static_cast<const uint4*>(a.qweight);
  const uint4* wp[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wp[r] = qw + (static_cast<int64_t>(nb[r]) * KT + k0 + i0) * 32 + lane;

  // Ring of D k-steps: weights, scale pairs and zero words (registers; slots are compile-time indices).
  uint4 wv[D][R];
  uint32_t sv[D][R], zv[D][R];
  auto load = [&](int slot, int i) {  // i: warp-relative step
#pragma unroll
    for (int r = 0; r < R; ++r) wv[slot][r] = ld_stream16(wp[r] + i * 32);
    const int col = (k0 + i0 + i) * w4::kTileK + (kFold ? 0 : 16 * tid);
    const int grp = group_of(col, a.group, a.group_shift);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      sv[slot][r] = __ldg(a.scales + static_cast<int64_t>(grp) * (a.N / 2) + nb[r] * 8 + gid);
      zv[slot][r] = asym ? (__ldg(a.zeros + static_cast<int64_t>(grp) * (a.N / 8) + nb[r] * 2 + gid / 4) >> (8 * (gid & 3))) & 0xFFu
                         : (w4::kSymmetricZero | (w4::kSymmetricZero << 4));
    }
  };
#pragma unroll
  for (int s = 0; s < D; ++s)
    if (s < n) load(s, s);

  // Stage x[0..M)[k0*64 .. k1*64) while the weight loads are in flight: 8 loads per thread, then 8 stores.
  {
    const T* x = static_cast<const T*>(a.x);
    const int chunks = cols / 8;  // 16-byte chunks per row
    const int total = a.M * chunks;
    for (int base = 0; base < total; base += 8 * kGvThreads) {
      uint4 v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = base + j * kGvThreads + threadIdx.x;
        if (e < total) {
          const int m = e / chunks, c = e - m * chunks;
          v[j] = __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * a.K + k0 * w4::kTileK) + c);
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int e = base + j * kGvThreads + threadIdx.x;
        if (e < total) {
          const int m = e / chunks, c = e - m * chunks;
          *reinterpret_cast<uint4*>(smem + m * row_bytes + c * 16) = v[j];
        }
      }
    }
  }
  __syncthreads();

  float acc[R][4], accg[R][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[r][i] = accg[r][i] = 0.f;
  FoldConsts fc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) fc[r] = FoldConsts{0, 0};
  int cur_grp = -1;
  const bool has_x = gid < a.M;
  const unsigned char* xrow = smem + gid * row_bytes + tid * 32 + i0 * 128;

  for (int base = 0; base < n; base += D) {
#pragma unroll
    for (int s = 0; s < D; ++s) {
      const int i = base + s;
      if (i >= n) break;
      uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
      if (has_x) {
        x0 = *reinterpret_cast<const uint4*>(xrow + i * 128);
        x1 = *reinterpret_cast<const uint4*>(xrow + i * 128 + 16);
      }
      const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
      if constexpr (kFold) {
        const int col = (k0 + i0 + i) * w4::kTileK;
        const int grp = group_of(col, a.group, a.group_shift);
        const bool start = grp != cur_grp;
        const bool end = i == n - 1 || group_of(col + w4::kTileK, a.group, a.group_shift) != grp;
        cur_grp = grp;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (start) fc[r] = fold_consts<kBF16>(zv[s][r]);
          const uint32_t words[4] = {wv[s][r].x, wv[s][r].y, wv[s][r].z, wv[s][r].w};
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            uint32_t af[4];
            dequant_word_int<kBF16>(words[t], fc[r], af);
            mma_16816<kBF16>(accg[r], af, xw[2 * t], xw[2 * t + 1]);
          }
          if (end) {  // scale once per group and row, in fp32
            const float s_lo = __half2float(__ushort_as_half(static_cast<unsigned short>(sv[s][r] & 0xFFFFu)));
            const float s_hi = __half2float(__ushort_as_half(static_cast<unsigned short>(sv[s][r] >> 16)));
            acc[r][0] = fmaf(s_lo, accg[r][0], acc[r][0]);
            acc[r][1] = fmaf(s_lo, accg[r][1], acc[r][1]);
            acc[r][2] = fmaf(s_hi, accg[r][2], acc[r][2]);
            acc[r][3] = fmaf(s_hi, accg[r][3], acc[r][3]);
#pragma unroll
            for (int q = 0; q < 4; ++q) accg[r][q] = 0.f;
          }
        }
      } else {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const GroupConsts gc = group_consts<kBF16>(sv[s][r], zv[s][r]);
          const uint32_t words[4] = {wv[s][r].x, wv[s][r].y, wv[s][r].z, wv[s][r].w};
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            uint32_t af[4];
            dequant_word<kBF16>(words[t], gc, af);
            mma_16816<kBF16>(acc[r], af, xw[2 * t], xw[2 * t + 1]);
          }
        }
      }
      if (i + D < n) load(s, i + D);
    }
  }

  // Sum the warps' partials in warp order: red[warp][row (R * 16)][batch (8)].
  // acc[r]: {0, 1} = row r*16 + gid, batch 2tid / 2tid+1; {2, 3} = row + 8.
  constexpr int kRows = R * w4::kTileN;
  float* red = reinterpret_cast<float*>(smem + ((static_cast<size_t>(a.M) * row_bytes + 15) & ~size_t{15}));
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int m = 2 * tid + (q & 1), row = r * w4::kTileN + gid + 8 * (q >> 1);
      red[(warp * kRows + row) * 8 + m] = acc[r][q];
    }
  __syncthreads();
  T* y = static_cast<T*>(a.y);
  const int row0 = blockIdx.x * kRows;
  const int rows = min(kRows, a.N - row0);
  for (int e = threadIdx.x; e < rows * a.M; e += kGvThreads) {
    const int m = e / rows, rl = e - m * rows;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kGvWarps; ++w) v += red[(w * kRows + rl) * 8 + m];
    if (split == 1)
      y[static_cast<int64_t>(m) * a.N + row0 + rl] = Act<kBF16>::from_float(v);
    else
      a.partial[(static_cast<int64_t>(blockIdx.y) * a.M + m) * a.N + row0 + rl] = v;
  }
  if (split == 1) return;

  // Split-K: the last block of this row slice adds the partials in blockIdx.y order.
  __threadfence();
  __syncthreads();
  unsigned* counter = a.counters + blockIdx.x;
  if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == static_cast<unsigned>(split - 1);
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  for (int e = threadIdx.x; e < rows * a.M; e += kGvThreads) {
    const int m = e / rows, row = row0 + e % rows;
    float v = 0.f;
    for (int z = 0; z < split; ++z) v += __ldcg(a.partial + (static_cast<int64_t>(z) * a.M + m) * a.N + row);
    y[static_cast<int64_t>(m) * a.N + row] = Act<kBF16>::from_float(v);
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

template <bool kBF16, bool kFold, int R>
cudaError_t launch_gemv(const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  auto kernel = w4a16_gemv_kernel<kBF16, kFold, R>;
  static bool attr_set = false;  // per instantiation; harmless if two threads race to set it
  if (!attr_set) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kGvSmemCap + kGvRedBytes);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  kernel<<<plan.grid, kGvThreads, plan.smem, stream>>>(args);
  return cudaGetLastError();
}

template <bool kBF16, bool kFold>
cudaError_t dispatch_gemv_r(const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  switch (plan.cfg.r) {
    case 1: return launch_gemv<kBF16, kFold, 1>(plan, args, stream);
    case 2: return launch_gemv<kBF16, kFold, 2>(plan, args, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int gemv_max_m() { return kGvMaxM; }

cudaError_t gemv_plan(int M, int N, int K, int group, int sm_count, GemvConfig want, GemvPlan* plan) {
  if (M < 1 || M > kGvMaxM || N % w4::kTileN || K % w4::kTileK || group <= 0) return cudaErrorInvalidValue;
  GemvConfig c = want;
  const int NT = N / w4::kTileN, KT = K / w4::kTileK;
  const int sms = std::max(sm_count, 1);
  // Defaults from the H100 sweep (docs/cuda-kernels.md): two row tiles per block unless that leaves under
  // half the SMs a block; split K only as far as the x slice needs (splitting further always lost).
  if (c.r == 0) c.r = 2 * ((NT + 1) / 2) >= sms ? 2 : 1;
  if (c.r != 1 && c.r != 2) return cudaErrorInvalidValue;
  const int RB = (NT + c.r - 1) / c.r;
  // The x slice must fit the shared-memory cap: at most max_tiles k-tiles per block.
  const int max_tiles = std::max(1, (kGvSmemCap / M - 16) / (2 * w4::kTileK));
  const int s_fit = (KT + max_tiles - 1) / max_tiles;
  if (c.split == 0) c.split = s_fit;
  c.split = std::max(s_fit, std::min(c.split, KT));
  plan->cfg = c;
  plan->fold = group % w4::kTileK == 0;
  plan->grid = dim3(RB, c.split, 1);
  const int tiles = (KT + c.split - 1) / c.split;
  plan->smem = ((static_cast<size_t>(M) * (tiles * w4::kTileK * 2 + 16) + 15) & ~size_t{15}) +
               static_cast<size_t>(kGvWarps) * c.r * w4::kTileN * 8 * sizeof(float);
  plan->partial_floats = c.split > 1 ? static_cast<size_t>(c.split) * M * N : 0;
  plan->counters = c.split > 1 ? static_cast<size_t>(RB) : 0;
  if (c.split > 65535) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

cudaError_t gemv_launch(bool bf16, const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream) {
  if (bf16) return plan.fold ? dispatch_gemv_r<true, true>(plan, args, stream) : dispatch_gemv_r<true, false>(plan, args, stream);
  return plan.fold ? dispatch_gemv_r<false, true>(plan, args, stream) : dispatch_gemv_r<false, false>(plan, args, stream);
}

}  // namespace qforge::cuda::detail
