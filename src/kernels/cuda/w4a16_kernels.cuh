// Internal launchers of the W4A16 kernels (w4a16_mma.cu, w4a16_gemm.cu, w4a16_wgmma.cu, w4a16_dequant.cu, ...);
// w4a16.cu is the only user.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qforge::cuda::detail {

struct MmaArgs {
  const void* qweight = nullptr;   // [N/16][K/64][32] uint4 (w4a16_layout.h)
  const uint32_t* scales = nullptr;  // [K/g][N/16][8] half2 {row gid, row gid+8}
  const uint32_t* zeros = nullptr;   // [K/g][N/8] uint32 = 4 bytes of two 4-bit zeros; null: symmetric
  const void* x = nullptr;         // [M, K] fp16/bf16 in kernel-column order, 16-byte aligned
  void* y = nullptr;               // [M, N] fp16/bf16
  float* partial = nullptr;        // [split, M, N] fp32 when split > 1
  unsigned* counters = nullptr;    // [grid.x * grid.y] zero-initialised, left zero on exit
  int M = 0, N = 0, K = 0, group = 0;
  int group_shift = -1;            // log2(group) when a power of two (shift instead of divide), else -1
};

// Block shape of the mma kernel: nt batch tiles of 8 rows, r output tiles of 16 rows, split-K over blocks.
// warps: warps per block (0 = choose; 8, or 16 for nt <= 2 with r = 2).
// pdl: launch with programmatic dependent launch (1), so the weight prologue overlaps the previous kernel's
// tail; 0 = plain launch. Resolved by the caller (w4a16.cu: only on compute capability >= 9).
struct MmaConfig {
  int nt = 0, r = 0, split = 0;  // 0 = choose
  int warps = 0;
  int pdl = 0;
};

struct MmaPlan {
  MmaConfig cfg;
  dim3 grid;
  int stages = 0;
  size_t smem = 0;
  size_t partial_floats = 0;  // workspace needed (split > 1)
  size_t counters = 0;
};

// Fills in the unset fields of `want` for this problem on `sm_count` multiprocessors.
cudaError_t mma_plan(bool bf16, int M, int N, int K, int sm_count, MmaConfig want, MmaPlan* plan);
cudaError_t mma_launch(bool bf16, const MmaPlan& plan, const MmaArgs& args, cudaStream_t stream);

// Small-batch weight-streaming kernel (w4a16_gemv.cu), M <= gemv_max_m(): one block of `warps` (4 or 8) per
// 16-row tile and K slice, split = K slices over blocks (grid.y), depth = weight tiles in flight per warp
// (4 or 8), pdl = programmatic dependent launch (1 on); 0 = choose.
struct GemvConfig {
  int warps = 0, split = 0, depth = 0, pdl = 0;
};
struct GemvPlan {
  GemvConfig cfg;
  dim3 grid;
  int nt = 1;                 // mma n8 batch tiles (1: M <= 8, 2: M <= 16)
  bool fold = false;          // group % 64 == 0: scales applied once per tile (else per weight)
  size_t partial_floats = 0;  // workspace needed (split > 1)
  size_t counters = 0;
};
int gemv_max_m();
cudaError_t gemv_plan(int M, int N, int K, int group, int sm_count, GemvConfig want, GemvPlan* plan);
cudaError_t gemv_launch(bool bf16, const GemvPlan& plan, const MmaArgs& args, cudaStream_t stream);

// Batch GEMM (w4a16_gemm.cu): a block owns BN output rows x BM batch rows and streams K through one
// block-wide cp.async ring; shape = block shape 1..8 (w4a16_gemm.cu), split = K slices over blocks
// (grid.z); 0 = choose. Needs N % 32 == 0.
struct GemmConfig {
  int shape = 0, split = 0;
};
struct GemmPlan {
  GemmConfig cfg;
  dim3 grid;
  int blocks_per_sm = 0;
  size_t partial_floats = 0;  // workspace needed (split > 1)
  size_t counters = 0;
};
int gemm_block_n(int shape);
cudaError_t gemm_plan(bool bf16, int M, int N, int K, int sm_count, GemmConfig want, GemmPlan* plan);
cudaError_t gemm_launch(bool bf16, const GemmPlan& plan, const MmaArgs& args, cudaStream_t stream);

// Hopper warpgroup-MMA GEMM (w4a16_wgmma.cu, sm_90a only): blocks of 128 output rows x bm (64, 128, 192, 256) batch
// rows, split = K slices over a thread-block cluster (<= 4); 0 = choose. Needs N % 128 == 0. The activations
// are first staged (kernel-column order, wgmma slot order, swizzled, zero-padded to m_pad rows) into a
// workspace of xs_bytes.
struct WgmmaConfig {
  int bm = 0, split = 0;
};
struct WgmmaPlan {
  WgmmaConfig cfg;
  dim3 grid;
  int m_pad = 0;
  size_t xs_bytes = 0;  // activation staging workspace
};
bool wgmma_supported(int N, int K, int group);
// Whether the device code for the current device holds the wgmma kernels (built for sm_90a and running on it).
cudaError_t wgmma_available(bool* ok);
cudaError_t wgmma_plan(int M, int N, int K, int group, int sm_count, WgmmaConfig want, WgmmaPlan* plan);
// perm [K] (act-order gather) or null; xs: workspace of plan.xs_bytes, 16-byte aligned.
cudaError_t wgmma_launch(bool bf16, const WgmmaPlan& plan, const MmaArgs& args, const int32_t* perm, void* xs,
                         cudaStream_t stream);

// w_out [N, K] fp16/bf16 (kernel-column order) = dequant(W).
cudaError_t dequant_launch(bool bf16, const void* qweight, const uint32_t* scales, const uint32_t* zeros, int N,
                           int K, int group, void* w_out, cudaStream_t stream);
// x_out[m, kc] = x[m, perm[kc]] for [M, K] 16-bit activations.
cudaError_t permute_launch(const void* x, const int32_t* perm, int M, int K, void* x_out, cudaStream_t stream);

}  // namespace qforge::cuda::detail
