// W4A16 GEMM for Hopper (sm_90a) with warpgroup MMA: y^T[N, M] = W[N, K] x^T[K, M], M = 64..256 per block.
//
// Why: the mma.sync kernels (w4a16_mma.cu, w4a16_gemm.cu) reach 205-246 TFLOPS at M = 128-256 where cuBLAS
// fp16 (wgmma) reaches 574-633: mma.sync issues at half of wgmma's rate on Hopper. Here the weight is the
// wgmma A operand taken from registers (the packed layout of w4a16_layout.h is, per warp, exactly the A
// fragment of mma.m16n8k16, which is also the per-warp register fragment of wgmma m64nNk16), dequantised by
// the consumer warps right before the MMA, and the activations are B, read by the tensor cores from a
// 128-byte-swizzled shared-memory tile through a matrix descriptor. Nothing dequantised goes through shared
// memory (Machete's "A from registers" route rather than a dequantised B tile in shared memory).
//
// Activations. wgmma reads the 16 k-slots of a step as 16 contiguous elements of a shared-memory row, but the
// packed layout maps step t's slots {2tid, 2tid+1, 2tid+8, 2tid+9} to kernel columns 16tid + 4t + {0..3}.
// A staging kernel (xstage) therefore writes x once per call into xs [K/64][Mpad][128 B]: row m of 64-column
// chunk kb holds, at element 16t + s, the kernel column that slot s of step t uses, with the 16-byte chunk c
// of each 128-byte row stored at c ^ (m & 7) (the wgmma 128-byte swizzle). It also applies the act-order
// gather (x[m, perm[kc]]) and zero-fills rows M..Mpad-1, so one 1-D bulk copy moves a stage's whole
// [BM x 64] activation tile into shared memory already in wgmma's layout (no tensor map needed).
//
// Block = 3 warpgroups (384 threads), BN = 128 output rows, BM = 64 / 128 / 192 / 256 batch rows:
//   warpgroup 0, one thread: producer. Per stage (64 kernel columns) it waits for the slot to be free
//     (mbarrier `empty`), then issues one cp.async.bulk copy of the [BM x 128 B] activation tile completing on
//     mbarrier `full`. It waits for the staging kernel (griddepcontrol.wait) before its first copy: the two
//     kernels run with programmatic dependent launch, so this kernel's prologue overlaps the staging.
//   warpgroups 1, 2: consumers, 64 output rows each (warp w owns one 16-row weight tile). Each lane streams its
//     own 16 bytes of every weight tile, its scale and its zero from global memory into a register ring
//     kWDepth stages ahead (16-byte ld.global.nc, no L1 allocation); weights never touch shared memory. Per
//     stage: wait `full`, dequantise the 4 words into the A fragments of 4 k-steps ((c - z) * s, one rounding:
//     dequant_word2), issue 4 wgmma m64nBMk16 (fp32 accumulators in registers), commit, wait for the group (the
//     A registers are reused next stage) and release the slot (`empty`); the two consumer warpgroups overlap
//     each other's dequantisation and MMAs. (Until session 10 the producer also bulk-copied the 8 weight tiles
//     of 512 bytes, scales and zeros into each stage; that pipeline streamed the weight at ~0.7 TB/s and made
//     the kernel 1.1-1.6x slower.)
// Split-K runs over a thread-block cluster along z: each block leaves its fp32 tile in its own shared memory,
// and after a cluster barrier block r sums slice r of the tile over all blocks of the cluster in rank order
// through distributed shared memory (deterministic, no global partials, no counters).
#include <cooperative_groups.h>

#include <algorithm>

#include "kernels/cuda/w4a16_device.cuh"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

// wgmma and setmaxnreg exist only on sm_90a: other targets (the sm_80 pass of the CMake build) compile the
// kernels with empty bodies, and wgmma_available() tells the host which one the device runs.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QF_WGMMA_DEVICE 1
#else
#define QF_WGMMA_DEVICE 0
#endif

namespace qforge::cuda::detail {
namespace {

namespace cg = cooperative_groups;

constexpr int kWgBN = 128;           // output rows per block (2 consumer warpgroups x 64)
constexpr int kWgThreads = 384;      // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kWgConsumers = 256;  // consumer threads (device code only)
constexpr int kWgMaxSplit = 4;       // cluster size along K (tuning hook)
constexpr int kWgAutoMaxSplit = 3;   // largest split the plan picks by itself
constexpr int kWgSmemLimit = 227 * 1024;

#if QF_WGMMA_DEVICE
// wgmma.mma_async m64nNk16 with A from registers, B from shared memory, fp32 accumulators: D[64 x N] += A[64 x 16]
// (registers) * B[16 x N] (shared memory, K-major, 128-byte swizzle), for TY = "f16" or "bf16". The accumulators
// are operands %0..%(N/2 - 1), then the four A registers, the B descriptor and the scale-d flag.
#define QF_WG_REGS0 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define QF_WG_REGS1 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define QF_WG_REGS2 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define QF_WG_REGS3 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define QF_WG_REGS4 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
#define QF_WG_REGS5 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define QF_WG_REGS6 \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define QF_WG_REGS7 \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define QF_WG_D8(i)                                                                           \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define QF_WG_D32(i) QF_WG_D8(i), QF_WG_D8(i + 8), QF_WG_D8(i + 16), QF_WG_D8(i + 24)
#define QF_WG_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1)
#define QF_WGMMA_M64N64(TY)                                                                    \
  asm volatile(                                                                                \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                             \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {" QF_WG_REGS0 "," QF_WG_REGS1 \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                         \
      : QF_WG_D32(0)                                                                           \
      : QF_WG_IN)
#define QF_WGMMA_M64N128(TY)                                                                    \
  asm volatile(                                                                                 \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                              \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {" QF_WG_REGS0 "," QF_WG_REGS1 \
      "," QF_WG_REGS2 "," QF_WG_REGS3 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"          \
      : QF_WG_D32(0), QF_WG_D32(32)                                                             \
      : QF_WG_IN)
#define QF_WGMMA_M64N192(TY)                                                                    \
  asm volatile(                                                                                 \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"                                             \
      "wgmma.mma_async.sync.aligned.m64n192k16.f32." TY "." TY " {" QF_WG_REGS0 "," QF_WG_REGS1 \
      "," QF_WG_REGS2 "," QF_WG_REGS3 "," QF_WG_REGS4 "," QF_WG_REGS5                           \
      "}, {%96, %97, %98, %99}, %100, p, 1, 1, 0;\n}\n"                                         \
      : QF_WG_D32(0), QF_WG_D32(32), QF_WG_D32(64)                                              \
      : QF_WG_IN)
#define QF_WGMMA_M64N256(TY)                                                                          \
  asm volatile(                                                                                       \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"                                                   \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {" QF_WG_REGS0 "," QF_WG_REGS1       \
      "," QF_WG_REGS2 "," QF_WG_REGS3 "," QF_WG_REGS4 "," QF_WG_REGS5 "," QF_WG_REGS6 "," QF_WG_REGS7 \
      "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"                                           \
      : QF_WG_D32(0), QF_WG_D32(32), QF_WG_D32(64), QF_WG_D32(96)                                     \
      : QF_WG_IN)

// One k16 step of a warpgroup over the block's BM batch rows: D[64 x BM] += A[64 x 16] * B[16 x BM].
template <bool kBF16, int BM>
__device__ __forceinline__ void wgmma_step(float (&d)[BM / 2], const uint32_t (&a)[4], uint64_t desc) {
  static_assert(BM == 64 || BM == 128 || BM == 192 || BM == 256, "wgmma block height");
  if constexpr (BM == 64) {
    if constexpr (!kBF16)
      QF_WGMMA_M64N64("f16");
    else
      QF_WGMMA_M64N64("bf16");
  } else if constexpr (BM == 128) {
    if constexpr (!kBF16)
      QF_WGMMA_M64N128("f16");
    else
      QF_WGMMA_M64N128("bf16");
  } else if constexpr (BM == 192) {
    if constexpr (!kBF16)
      QF_WGMMA_M64N192("f16");
    else
      QF_WGMMA_M64N192("bf16");
  } else {
    if constexpr (!kBF16)
      QF_WGMMA_M64N256("f16");
    else
      QF_WGMMA_M64N256("bf16");
  }
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator accesses across wgmma fences / waits.
template <int R>
__device__ __forceinline__ void fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor of a K-major tile with the 128-byte swizzle: rows of 128 bytes, 8-row groups
// 1024 bytes apart (stride byte offset); the leading byte offset is unused for swizzled K-major layouts.
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// 1-D bulk copy global -> shared (16-byte aligned, size a multiple of 16), completing on `bar`.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
#endif  // QF_WGMMA_DEVICE

// Shared memory of one block: STAGES ring slots of activations, then (reusing the ring) the fp32 output tile.
// The weights, scales and zeros do not go through shared memory: each consumer lane loads its own 16 bytes
// (and scale, zero) straight into a register ring kWDepth stages ahead (see the kernel).
template <int BM_>
struct WgLayout {
  static constexpr int BM = BM_;
  static constexpr int kXBytes = BM * 128;                          // [BM][128 B] swizzled activations
  static constexpr int kStage = (kXBytes + 1023) / 1024 * 1024;     // keeps every X tile 1024-aligned
  static constexpr int kRedStride = kWgBN + 4;                      // floats; == 4 mod 32 (conflict-free)
  static constexpr int kRedBytes = BM * kRedStride * 4;
  static constexpr int kStages = std::min(8, (200 * 1024) / kStage);
  static constexpr int kRing = kStages * kStage;
  static constexpr int kSmem = (kRing > kRedBytes ? kRing : kRedBytes) + 1024;  // + alignment slack
  // Weight stages in flight per consumer lane (registers: 6 per stage). Session 10 (H100): the weights were
  // bulk-copied into the ring by the producer thread before, 8 copies of 512 bytes per stage, and that pipeline
  // streamed the weight at only ~0.7 TB/s (ablation in docs/cuda-kernels.md).
  static constexpr int kWDepth = BM >= 192 ? 4 : 8;
  static_assert(kStages >= 3, "pipeline depth");
  static_assert(kWDepth >= 1, "weight ring depth");
  static_assert(kSmem <= kWgSmemLimit, "shared memory");
};

// xs[kb][m][swizzled 128 B] from x [M, K] (kernel-column order via perm, or identity): see the file comment.
// One thread per 16-byte output chunk.
__global__ void w4a16_xstage_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ perm, int M,
                                    int K, int m_pad, uint4* __restrict__ xs) {
  grid_dependency_launch();  // the wgmma kernel may start its prologue (weights) now; it waits before reading xs
  const int64_t total = static_cast<int64_t>(K / 64) * m_pad * 8;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(e & 7);
    const int m = static_cast<int>((e >> 3) % m_pad);
    const int kb = static_cast<int>((e >> 3) / m_pad);
    const int lc = c ^ (m & 7);  // logical 16-byte chunk: step t = lc / 2, slots 8 (lc & 1) .. + 7
    const int t = lc >> 1, h = lc & 1;
    uint32_t v[4] = {0u, 0u, 0u, 0u};
    if (m < M) {
      const uint16_t* row = x + static_cast<int64_t>(m) * K;
#pragma unroll
      for (int p = 0; p < 4; ++p) {  // slot pair p of the chunk: kernel columns 16p + 4t + 2h + {0, 1}
        const int kc = kb * 64 + 16 * p + 4 * t + 2 * h;
        if (perm) {
          v[p] = static_cast<uint32_t>(row[perm[kc]]) | (static_cast<uint32_t>(row[perm[kc + 1]]) << 16);
        } else {
          v[p] = *reinterpret_cast<const uint32_t*>(row + kc);
        }
      }
    }
    xs[e] = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

template <bool kBF16, int BM, int SLOTS>
__global__ void __launch_bounds__(kWgThreads, 1) w4a16_wgmma_kernel(MmaArgs a, const unsigned char* xs, int m_pad) {
#if QF_WGMMA_DEVICE
  using L = WgLayout<BM>;
  using T = typename Act<kBF16>::T;
  constexpr int STAGES = L::kStages;
  constexpr int NACC = BM / 2;  // fp32 accumulators per consumer thread: 64 rows x BM / 128 threads
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[STAGES], empty_bar[STAGES];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  cg::cluster_group cluster = cg::this_cluster();
  const int split = static_cast<int>(gridDim.z);
  const int KT = a.K / w4::kTileK;
  const int kt0 = static_cast<int>(static_cast<int64_t>(KT) * blockIdx.z / split);
  const int kt1 = static_cast<int>(static_cast<int64_t>(KT) * (blockIdx.z + 1) / split);
  const int n_iter = kt1 - kt0;
  const int nb0 = blockIdx.x * (kWgBN / 16);  // first 16-row weight tile
  const int m0 = blockIdx.y * BM;
  const bool asym = a.zeros != nullptr;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(static_cast<uint32_t>(__cvta_generic_to_shared(&full_bar[s])), 1);
      mbar_init(static_cast<uint32_t>(__cvta_generic_to_shared(&empty_bar[s])), 8);  // one arrive per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) {
      const uint32_t bytes = L::kXBytes;
      grid_dependency_wait();  // xs is written by the staging kernel launched just before (PDL)
      for (int it = 0; it < n_iter; ++it) {
        const int slot = it % STAGES, round = it / STAGES;
        const uint32_t fb = static_cast<uint32_t>(__cvta_generic_to_shared(&full_bar[slot]));
        if (round > 0) mbar_wait(static_cast<uint32_t>(__cvta_generic_to_shared(&empty_bar[slot])), (round - 1) & 1);
        const int kb = kt0 + it;
        mbar_expect_tx(fb, bytes);
        bulk_copy(ring + slot * L::kStage, xs + (static_cast<int64_t>(kb) * m_pad + m0) * 128, L::kXBytes, fb);
      }
    }
    __syncwarp();  // reconverge the producer warp before the (warp-aligned) cluster barrier
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int ct = threadIdx.x - 128;          // consumer thread 0..255
    const int cw = ct >> 5;                    // consumer warp 0..7 = the block's 16-row weight tile
    const int lane = threadIdx.x & 31, gid = lane >> 2, tid = lane & 3;
    constexpr int D = L::kWDepth;
    const int tile = nb0 + cw;  // this warp's 16-row weight tile
    // The lane's weight stream: 16 bytes of each 512-byte tile (tile, kb), consecutive kb contiguous. `wp`, `sp_g`
    // and `zp_g` point at the next stage to load and advance as it is loaded (loop-carried, no per-stage index
    // arithmetic); with g % 64 == 0 a group spans `spg` stages and the scale / zero pointers step once per group.
    const uint4* wp = reinterpret_cast<const uint4*>(static_cast<const unsigned char*>(a.qweight) +
                                                     w4::tile_offset(tile, kt0, a.K)) + lane;
    const uint32_t* sg = a.scales + static_cast<int64_t>(tile) * 8 + gid;  // + grp * N/16 * 8: [K/g][N/16][8] half2
    const uint8_t* zg = reinterpret_cast<const uint8_t*>(a.zeros) + tile * 8 + gid;  // + grp * N/2
    const int64_t s_stride = static_cast<int64_t>(a.N / 16) * 8, z_stride = a.N / 2;
    const int col_lane = SLOTS == 1 ? 0 : 16 * tid;  // a lane's 16 columns lie in one group
    const int spg = SLOTS == 1 ? a.group / w4::kTileK : 1;  // stages per group (SLOTS == 1: g % 64 == 0)
    int lq = SLOTS == 1 ? kt0 % spg : 0;                      // position of the next loaded stage in its group
    const uint32_t* sp_g = sg + static_cast<int64_t>(SLOTS == 1 ? kt0 / spg : 0) * s_stride;
    const uint8_t* zp_g = zg + static_cast<int64_t>(SLOTS == 1 ? kt0 / spg : 0) * z_stride;
    const uint32_t sym_zero = w4::kSymmetricZero | (w4::kSymmetricZero << 4);
    int lit = 0;  // the next stage to load
    auto load_next = [&](uint4& w, uint32_t& sp, uint32_t& zp) {
      w = ld_stream16(wp);
      wp += w4::kTileBytes / 16;
      if constexpr (SLOTS == 1) {
        sp = __ldg(sp_g);
        zp = asym ? static_cast<uint32_t>(__ldg(zp_g)) : sym_zero;
        if (++lq == spg) lq = 0, sp_g += s_stride, zp_g += z_stride;
      } else {
        const int col = (kt0 + lit) * w4::kTileK + col_lane;
        const int grp = a.group_shift >= 0 ? col >> a.group_shift : col / a.group;
        sp = __ldg(sg + grp * s_stride);
        zp = asym ? static_cast<uint32_t>(__ldg(zg + grp * z_stride)) : sym_zero;
      }
      ++lit;
    };
    uint4 rw[D];
    uint32_t rs[D], rz[D];
#pragma unroll
    for (int d = 0; d < D; ++d)
      if (d < n_iter) load_next(rw[d], rs[d], rz[d]);
    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    for (int it0 = 0; it0 < n_iter; it0 += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const int it = it0 + d;
        if (it >= n_iter) break;
        const int slot = it % STAGES;
        mbar_wait(static_cast<uint32_t>(__cvta_generic_to_shared(&full_bar[slot])), (it / STAGES) & 1);
        const TileConsts tc = tile_consts<kBF16, false>(rs[d], rz[d]);
        uint32_t af[4][4];
        dequant_word2<kBF16, false>(rw[d].x, tc, af[0]);
        dequant_word2<kBF16, false>(rw[d].y, tc, af[1]);
        dequant_word2<kBF16, false>(rw[d].z, tc, af[2]);
        dequant_word2<kBF16, false>(rw[d].w, tc, af[3]);
        // The slot's registers are consumed: refill them D stages ahead (loading after the dequantisation lets
        // the load reuse the same registers; loading before it made ptxas copy the ring every stage).
        if (it + D < n_iter) load_next(rw[d], rs[d], rz[d]);
        const uint32_t xaddr = ring + slot * L::kStage;
        fence_operands(acc);
        wgmma_fence();
#pragma unroll
        for (int t = 0; t < 4; ++t) wgmma_step<kBF16, BM>(acc, af[t], smem_desc_sw128(xaddr + 32 * t));
        wgmma_commit();
        // The MMAs read af (registers) asynchronously, and the next stage's dequantisation writes the same
        // registers: wait for this stage's group before going on. (Keeping one group in flight, wait_group 1,
        // gave wrong results on full grids: ptxas does not keep af's registers reserved until the wait.) The
        // other consumer warpgroup's MMAs overlap this one's dequantisation.
        wgmma_wait<0>();
        fence_operands(acc);
        if (lane == 0) mbar_arrive(static_cast<uint32_t>(__cvta_generic_to_shared(&empty_bar[slot])));
      }
    }
    asm volatile("bar.sync 1, %0;" ::"n"(kWgConsumers) : "memory");  // both warpgroups are done with the ring

    // red[m][n]: the block's fp32 tile, batch-major so that the final stores run along n.
    constexpr int RS = L::kRedStride;
    float* red = reinterpret_cast<float*>(smem);
    const int nw = cw * 16 + gid;
#pragma unroll
    for (int i = 0; i < BM / 8; ++i) {
      const int m = 8 * i + 2 * tid;
      red[m * RS + nw] = acc[4 * i + 0];
      red[(m + 1) * RS + nw] = acc[4 * i + 1];
      red[m * RS + nw + 8] = acc[4 * i + 2];
      red[(m + 1) * RS + nw + 8] = acc[4 * i + 3];
    }
  }
  // Every block of the cluster has its tile in shared memory (a plain block barrier when split == 1).
  cluster.sync();
  if (wg != 0) {
    constexpr int RS = L::kRedStride;
    const int ct = threadIdx.x - 128;
    const int rank = static_cast<int>(cluster.block_rank());
    float* red = reinterpret_cast<float*>(smem);
    const float* parts[kWgMaxSplit];
#pragma unroll
    for (int q = 0; q < kWgMaxSplit; ++q) parts[q] = q < split ? cluster.map_shared_rank(red, q) : red;
    const bool y_vec = (reinterpret_cast<uintptr_t>(a.y) & 7u) == 0;
    T* y = static_cast<T*>(a.y);
    constexpr int kQuads = BM * kWgBN / 4;
    const int m_valid = min(BM, a.M - m0);
    const int e0 = rank * kQuads / split, e1 = (rank + 1) * kQuads / split;
    for (int e = e0 + ct; e < e1; e += kWgConsumers) {
      const int m = e / (kWgBN / 4), n = 4 * (e % (kWgBN / 4));
      if (m >= m_valid) continue;
      float4 v = *reinterpret_cast<const float4*>(parts[0] + m * RS + n);
#pragma unroll
      for (int q = 1; q < kWgMaxSplit; ++q) {
        if (q >= split) break;
        const float4 w = *reinterpret_cast<const float4*>(parts[q] + m * RS + n);
        v.x += w.x, v.y += w.y, v.z += w.z, v.w += w.w;
      }
      const int64_t o = static_cast<int64_t>(m0 + m) * a.N + nb0 * 16 + n;
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
    }
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
#endif
}

// 1 when this build's device code for the current device has the wgmma kernels (sm_90a), else 0.
__global__ void w4a16_wgmma_probe_kernel(int* out) { *out = QF_WGMMA_DEVICE; }

template <bool kBF16, int BM, int SLOTS>
cudaError_t launch_one(const WgmmaPlan& plan, const MmaArgs& args, const void* xs, cudaStream_t stream) {
  using L = WgLayout<BM>;
  auto kernel = w4a16_wgmma_kernel<kBF16, BM, SLOTS>;
  static bool attr_set = false;  // per instantiation; a race only sets it twice
  if (!attr_set) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kSmem);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = plan.grid;
  cfg.blockDim = dim3(kWgThreads);
  cfg.dynamicSmemBytes = L::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = plan.grid.z;
  // Programmatic dependent launch on the staging kernel just before: this kernel's blocks start, set up their
  // barriers and load their first weight stages while the staging kernel finishes; the producer waits
  // (griddepcontrol.wait) before its first copy of xs, and y is written only after that. The staging kernel
  // itself is an ordinary launch, so everything before it in the stream has completed, weights included.
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 2;
  return cudaLaunchKernelEx(&cfg, kernel, args, static_cast<const unsigned char*>(xs), plan.m_pad);
}

template <bool kBF16, int BM>
cudaError_t launch_bm(const WgmmaPlan& plan, const MmaArgs& args, const void* xs, cudaStream_t stream) {
  return args.group % w4::kTileK == 0 ? launch_one<kBF16, BM, 1>(plan, args, xs, stream)
                                      : launch_one<kBF16, BM, 4>(plan, args, xs, stream);
}

}  // namespace

bool wgmma_supported(int N, int K, int group) {
  return N > 0 && K > 0 && N % kWgBN == 0 && K % w4::kTileK == 0 && group % 16 == 0;
}

cudaError_t wgmma_available(bool* ok) {
  static int cached = -1;  // the context is bound to one device; so is this answer
  if (cached < 0) {
    int* d = nullptr;
    cudaError_t e = cudaMalloc(&d, sizeof(int));
    if (e != cudaSuccess) return e;
    w4a16_wgmma_probe_kernel<<<1, 1>>>(d);
    int h = 0;
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
    const cudaError_t ef = cudaFree(d);
    if (e != cudaSuccess) return e;
    if (ef != cudaSuccess) return ef;
    cached = h;
  }
  *ok = cached == 1;
  return cudaSuccess;
}

cudaError_t wgmma_plan(int M, int N, int K, int group, int sm_count, WgmmaConfig want, WgmmaPlan* plan) {
  if (!wgmma_supported(N, K, group) || M <= 0) return cudaErrorInvalidValue;
  WgmmaConfig c = want;
  const bool bm_given = c.bm == 64 || c.bm == 128 || c.bm == 192 || c.bm == 256;
  const int bm_fit = M <= 64 ? 64 : M <= 128 ? 128 : M <= 192 ? 192 : 256;  // the smallest block holding M
  if (!bm_given) c.bm = bm_fit;
  const int gx = N / kWgBN;
  const int KT = K / w4::kTileK;
  auto tiles_m = [M](int bm) { return static_cast<int64_t>((M + bm - 1) / bm); };  // batch tiles of bm rows
  // Split K over a cluster only as far as the grid stays within one wave (one block per SM), at most 3 ways and
  // with at least 8 stages per block. A second wave of clusters cost more than the shorter K saved (11008x4096 at
  // M = 64-256: 40-71 us with split 3 = 258 blocks, 30-50 us with split 1 = 86 blocks); clusters of 4 ran 1.3-2x
  // slower than 3 (H100 sweeps, docs/cuda-kernels.md, "Session 10").
  auto best_split = [&](int64_t base) {
    int sp = 1;
    for (int s = 2; s <= kWgAutoMaxSplit && KT / s >= 8; ++s)
      if (base * s <= sm_count) sp = s;
    return sp;
  };
  if (c.split <= 0) c.split = best_split(gx * tiles_m(c.bm));
  if (want.split <= 0 && !bm_given && KT / c.split < 32) {
    // Short blocks (under 32 stages) pay the ring fill, the staging and the cluster reduction on little work, so
    // there a shorter block height that fills more SMs in one wave wins, as long as it pads no more batch rows:
    // 4096x4096 at M = 256 ran 21.1 us as 128-row blocks x split 2 (128 blocks) against 25.1 us as 256-row blocks x
    // split 3 (96), and at M = 96-128 16.4 us as 64-row blocks x split 2 against 17.5. Long blocks keep the block
    // that holds M (4096x11008 at M = 96-128: 64-row blocks were 2-3% slower; 128-row blocks at M = 192, which pad
    // a third more rows, 12% slower).
    const int64_t rows_fit = tiles_m(bm_fit) * bm_fit;
    int64_t best = gx * tiles_m(bm_fit) * c.split;
    for (int bm : {192, 128, 64}) {
      const int64_t base = gx * tiles_m(bm);
      if (bm >= bm_fit || tiles_m(bm) * bm > rows_fit || base > sm_count) continue;
      const int sp = best_split(base);
      if (base * sp > best) best = base * sp, c.bm = bm, c.split = sp;
    }
  }
  const int gy = static_cast<int>(tiles_m(c.bm));
  c.split = std::max(1, std::min({c.split, kWgMaxSplit, KT}));
  plan->cfg = c;
  plan->grid = dim3(gx, gy, c.split);
  plan->m_pad = gy * c.bm;
  plan->xs_bytes = static_cast<size_t>(plan->m_pad) * K * 2;
  if (gy > 65535) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

cudaError_t wgmma_launch(bool bf16, const WgmmaPlan& plan, const MmaArgs& args, const int32_t* perm, void* xs,
                         cudaStream_t stream) {
  const int64_t chunks = static_cast<int64_t>(args.K / 64) * plan.m_pad * 8;
  const int blocks = static_cast<int>(std::min<int64_t>((chunks + 255) / 256, 4096));
  w4a16_xstage_kernel<<<blocks, 256, 0, stream>>>(static_cast<const uint16_t*>(args.x), perm, args.M, args.K,
                                                  plan.m_pad, static_cast<uint4*>(xs));
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (plan.cfg.bm) {
    case 64:
      return bf16 ? launch_bm<true, 64>(plan, args, xs, stream) : launch_bm<false, 64>(plan, args, xs, stream);
    case 128:
      return bf16 ? launch_bm<true, 128>(plan, args, xs, stream) : launch_bm<false, 128>(plan, args, xs, stream);
    case 192:
      return bf16 ? launch_bm<true, 192>(plan, args, xs, stream) : launch_bm<false, 192>(plan, args, xs, stream);
    case 256:
      return bf16 ? launch_bm<true, 256>(plan, args, xs, stream) : launch_bm<false, 256>(plan, args, xs, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qforge::cuda::detail
