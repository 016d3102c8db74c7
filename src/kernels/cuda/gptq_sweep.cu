// The GPTQ column sweep of one lazy block (quant::GptqOps::quantize_block) on the GPU.
//
// One warp per weight row, kSweepWarps rows per thread block; the block's U [count, count] is staged in
// shared memory once per thread block and read by all its rows. Lane l owns the block columns j = 32 s + l (s
// < NS) in registers. Columns go in order: the owner's value is broadcast with one shuffle, every lane
// quantizes it identically (grid and U[k, k] from shared memory), and each lane applies the error to its
// own later columns: w_j -= err * U[k, j], the CPU's expression (one FMA on both). So the sweep adds no
// rounding difference of its own: GPU and CPU codes differ only where U or the block's start state do.
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/gptq_common.cuh"

namespace qforge::cuda::gptq_detail {
namespace {

constexpr int kSweepWarps = 16;  // rows per thread block
constexpr unsigned kFullMask = 0xffffffffu;

struct DevRule {
  int maxq;
  int group_size;
  bool sym;
  bool awq;
};

template <int NS>
__global__ void __launch_bounds__(kSweepWarps * 32)
    gptq_sweep_kernel(const float* __restrict__ Wp,  // [out, in] block-start state
                      int64_t out, int64_t in, int64_t begin, int count,
                      const float* __restrict__ U,                     // [in, in] upper
                      GptqGrid* __restrict__ grids, int64_t n_groups,  // [out, n_groups]
                      const int32_t* __restrict__ group_of,            // [in]
                      const uint8_t* __restrict__ grid_start,          // [in]
                      DevRule rule,
                      uint8_t* __restrict__ codes,    // [out, in]
                      float* __restrict__ err_out,    // [out, count]
                      double* __restrict__ row_loss,  // [out]
                      unsigned long long* __restrict__ err_key) {
  extern __shared__ float smem[];
  float* Us = smem;  // [count, count] U[begin:end, begin:end]
  float2* grid_s =
      reinterpret_cast<float2*>(Us + count * count);  // [kSweepWarps, count] (scale, zero) per column
  for (int idx = threadIdx.x; idx < count * count; idx += blockDim.x) {
    const int i = idx / count, j = idx - i * count;
    Us[idx] = U[(begin + i) * in + begin + j];
  }
  __syncthreads();  // the only block-wide barrier: warps run independently from here

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kSweepWarps + warp;
  if (r >= out) return;
  const float* wrow = Wp + r * in;
  GptqGrid* grow = grids + r * n_groups;
  float2* gcol = grid_s + warp * count;

  // Grids taken in this block, from the block-start state (possibly reaching past the block's end).
  for (int i = 0; i < count; ++i) {
    if (!grid_start[begin + i]) continue;
    float mn = INFINITY, mx = -INFINITY;
    for (int q = lane; q < rule.group_size; q += 32) {
      const float v = wrow[begin + i + q];
      mn = fminf(mn, v);
      mx = fmaxf(mx, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      mn = fminf(mn, __shfl_xor_sync(kFullMask, mn, o));
      mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, o));
    }
    float s, z;
    if (!grid_from_range(mn, mx, rule.maxq, rule.sym, rule.awq, &s, &z)) {
      if (lane == 0)
        atomicMin(err_key, (static_cast<unsigned long long>(begin) << (2 * kGptqKeyShift)) |
                               (static_cast<unsigned long long>(r) << kGptqKeyShift) |
                               static_cast<unsigned long long>(i));
      s = 1.0f, z = 0.0f;  // keep going; fetch reports the error
    }
    if (lane == 0) grow[group_of[begin + i]] = GptqGrid{s, z};
  }
  __syncwarp();  // orders lane 0's grid stores before the loads below
  for (int i = lane; i < count; i += 32) {
    const GptqGrid p = grow[group_of[begin + i]];
    gcol[i] = make_float2(p.scale, p.zero);
  }
  float w[NS], e[NS];
  uint8_t c[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const int j = s * 32 + lane;
    w[s] = j < count ? wrow[begin + j] : 0.0f;
    e[s] = 0.0f;
    c[s] = 0;
  }
  __syncwarp();

  const float maxq = float(rule.maxq);
  double loss = 0.0;
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int i = s * 32 + l;
      if (i >= count) break;  // uniform across the warp
      const float wi = __shfl_sync(kFullMask, w[s], l);
      const float2 p = gcol[i];
      const float d = Us[i * count + i];
      // quant_code, quant_dequant and the error of GptqOps::quantize_block, expression for expression.
      const float t = fminf(fmaxf(rintf(__fdiv_rn(wi, p.x)) + p.y, 0.0f), maxq);
      const uint8_t code = uint8_t(t);
      const float diff = wi - (float(code) - p.y) * p.x;
      loss += double(diff) * double(diff) / (double(d) * double(d)) / 2.0;
      const float er = __fdiv_rn(diff, d);
      if (lane == l) {
        e[s] = er;
        c[s] = code;
      }
      const float* urow = Us + i * count;
#pragma unroll
      for (int t2 = s; t2 < NS; ++t2) {
        const int j = t2 * 32 + lane;
        if (j > i && j < count) w[t2] -= er * urow[j];
      }
    }
  }
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const int j = s * 32 + lane;
    if (j < count) {
      codes[r * in + begin + j] = c[s];
      err_out[r * count + j] = e[s];
    }
  }
  if (lane == 0) row_loss[r] = loss;
}

template <int NS>
CudaStatus launch_ns(const float* Wp, int64_t out, int64_t in, int64_t begin, int count, const float* U,
                     GptqGrid* grids, int64_t n_groups, const int32_t* group_of, const uint8_t* grid_start,
                     const DevRule& rule, uint8_t* codes, float* err, double* row_loss,
                     unsigned long long* err_key, cudaStream_t stream) {
  const size_t smem = size_t(count) * count * sizeof(float) + size_t(kSweepWarps) * count * sizeof(float2);
  GPTQ_CUDA_CHECK(
      cudaFuncSetAttribute(gptq_sweep_kernel<NS>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned((out + kSweepWarps - 1) / kSweepWarps));
  gptq_sweep_kernel<NS><<<grid, kSweepWarps * 32, smem, stream>>>(Wp, out, in, begin, count, U, grids,
                                                                  n_groups, group_of, grid_start, rule, codes,
                                                                  err, row_loss, err_key);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  return CudaStatus::ok();
}

}  // namespace

CudaStatus launch_gptq_sweep(const float* Wp, int64_t out, int64_t in, int64_t begin, int64_t count,
                             const float* U, GptqGrid* grids, int64_t n_groups, const int32_t* group_of,
                             const uint8_t* grid_start, const GptqGridRule& rule, uint8_t* codes, float* err,
                             double* row_loss, unsigned long long* err_key, cudaStream_t stream) {
  if (count < 1 || count > kGptqCudaMaxBlock)
    return CudaStatus::error("GPTQ sweep: block of " + std::to_string(count) +
                             " columns; the CUDA backend takes 1.." + std::to_string(kGptqCudaMaxBlock));
  const DevRule dr{(1 << rule.bits) - 1, int(rule.group_size), rule.sym, rule.awq};
  const int c = int(count);
  if (c <= 32)
    return launch_ns<1>(Wp, out, in, begin, c, U, grids, n_groups, group_of, grid_start, dr, codes, err,
                        row_loss, err_key, stream);
  if (c <= 64)
    return launch_ns<2>(Wp, out, in, begin, c, U, grids, n_groups, group_of, grid_start, dr, codes, err,
                        row_loss, err_key, stream);
  if (c <= 96)
    return launch_ns<3>(Wp, out, in, begin, c, U, grids, n_groups, group_of, grid_start, dr, codes, err,
                        row_loss, err_key, stream);
  return launch_ns<4>(Wp, out, in, begin, c, U, grids, n_groups, group_of, grid_start, dr, codes, err,
                      row_loss, err_key, stream);
}

}  // namespace qforge::cuda::gptq_detail
