// AWQ on the GPU (awq_cuda.h): mean |x|, fake quantization Q(W s) / s, the column scaling of the cached
// input, the clip search, and the pipeline's error statistics. Every expression that the CPU reference
// (quant/awq.cpp, quant/rtn.cpp, quant/pipeline.cpp) rounds is written here with explicit IEEE intrinsics
// (__fmul_rn, __fdiv_rn, __dadd_rn, ...), so nvcc's contraction cannot change a rounding behind our back;
// where the CPU build contracts (diff = w - dequant in the clip search), __fmaf_rn says so.
//
// The clip search is a GEMM per quant group g: E[t, (r, i)] = sum_k x[t, g gs + k] D_i[r, k] with
// D_i = W_g - Q(clamp(W_g, m_i)), then err[r, g, i] = mean_t E^2. One thread block owns 128 (row, shrink)
// columns of one group and loops over all sampled tokens in tiles of 128, the group's columns in chunks of
// 16 (x and D staged in shared memory, double buffered, D computed from W and the candidate's grid as it is
// staged); each thread keeps an 8 x 8 f32 tile of E and adds the squares of its finished tile to f64
// per-column sums, which are combined across the block in a fixed order. The grids of all candidates come
// from a small kernel before, the argmin (first minimum) from one after.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/awq_cuda.h"
#include "kernels/cuda/gptq_common.cuh"

namespace qforge::cuda {

using gptq_detail::DeviceBuffer;
using gptq_detail::grid_from_range;

namespace {

struct DevRule {
  int maxq;
  bool sym;
  bool awq;
};

constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned long long kNoKey = ~0ull;


// quant_code as a float: clamp(rint(w / scale) + zero, 0, maxq) (the uint8 conversion of the CPU is exact).
__device__ __forceinline__ float code_of(float w, float scale, float zero, float maxq) {
  return fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(w, scale)), zero), 0.0f), maxq);
}

__device__ __forceinline__ void warp_min_max(float* mn, float* mx) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    *mn = fminf(*mn, __shfl_xor_sync(kFullMask, *mn, o));
    *mx = fmaxf(*mx, __shfl_xor_sync(kFullMask, *mx, o));
  }
}

// ---- mean |x| ----------------------------------------------------------------------------------------

constexpr int kAbsSumThreads = 32;  // C / 32 blocks: spread over the SMs, each warp streaming its columns
constexpr int kAbsSumUnroll = 16;   // loads in flight per thread

// sum[c] += |x[t, c]| in token order (f64, as awq_mean_abs); *bad = min row-major index of a NaN/Inf, counted
// from row0.
__global__ void __launch_bounds__(kAbsSumThreads)
    abs_sum_kernel(const float* __restrict__ x, int64_t rows, int64_t C, int64_t row0,
                   double* __restrict__ sum, unsigned long long* __restrict__ bad) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s = sum[c];
  bool seen = false;
  int64_t t = 0;
  for (; t + kAbsSumUnroll <= rows; t += kAbsSumUnroll) {
    float v[kAbsSumUnroll];
#pragma unroll
    for (int u = 0; u < kAbsSumUnroll; ++u) v[u] = __ldg(x + (t + u) * C + c);
#pragma unroll
    for (int u = 0; u < kAbsSumUnroll; ++u) {
      if (!seen && !isfinite(v[u])) {
        seen = true;
        atomicMin(bad, static_cast<unsigned long long>((row0 + t + u) * C + c));
      }
      s = __dadd_rn(s, fabs(double(v[u])));
    }
  }
  for (; t < rows; ++t) {
    const float v = __ldg(x + t * C + c);
    if (!seen && !isfinite(v)) {
      seen = true;
      atomicMin(bad, static_cast<unsigned long long>((row0 + t) * C + c));
    }
    s = __dadd_rn(s, fabs(double(v)));
  }
  sum[c] = s;
}

// ---- fake quantization, column scaling -------------------------------------------------------------------

// One warp per (row, group): dst = Q(W * s) / s (awq_fake_quantize_scaled). *bad = the first row * ng + g
// whose grid overflows.
__global__ void fake_quant_kernel(const float* __restrict__ W, int64_t rows, int64_t C, int64_t gs,
                                  const float* __restrict__ s, DevRule rule, float* __restrict__ dst,
                                  unsigned long long* __restrict__ bad) {
  const int64_t ng = C / gs;
  const int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (item >= rows * ng) return;  // uniform across the warp
  const int64_t r = item / ng, g = item - r * ng;
  const float* w = W + r * C + g * gs;
  const float* sg = s + g * gs;
  float* d = dst + r * C + g * gs;
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t k = lane; k < gs; k += 32) {
    const float v = __fmul_rn(w[k], sg[k]);
    mn = fminf(mn, v);
    mx = fmaxf(mx, v);
  }
  warp_min_max(&mn, &mx);
  float sc, z;
  if (!grid_from_range(mn, mx, rule.maxq, rule.sym, rule.awq, &sc, &z)) {
    if (lane == 0) atomicMin(bad, static_cast<unsigned long long>(item));
    return;
  }
  const float maxq = float(rule.maxq);
  for (int64_t k = lane; k < gs; k += 32) {
    const float v = __fmul_rn(w[k], sg[k]);
    const float q = __fmul_rn(__fsub_rn(code_of(v, sc, z, maxq), z), sc);
    d[k] = __fdiv_rn(q, sg[k]);
  }
}

__global__ void scale_columns_kernel(float* __restrict__ x, int64_t T, int64_t C,
                                     const float* __restrict__ s) {
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y)
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
         c += int64_t(gridDim.x) * blockDim.x)
      x[t * C + c] = __fdiv_rn(x[t * C + c], s[c]);
}

dim3 row_grid(int64_t rows, int64_t cols) {
  return dim3(unsigned(std::min<int64_t>((cols + 255) / 256, 64)), unsigned(std::min<int64_t>(rows, 65535)));
}

// ---- f64 sums in a fixed order ---------------------------------------------------------------------------

constexpr int kSumThreads = 256;
constexpr int kSumBlocks = 1024;  // fixed, so a sum's order depends on n only

enum class SumMode { kDiffSquared, kProduct };

__device__ __forceinline__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int o = kSumThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) red[threadIdx.x] = __dadd_rn(red[threadIdx.x], red[threadIdx.x + o]);
    __syncthreads();
  }
  return red[0];
}

// partial[block] = sum over this block's share of (double(a) - double(b))^2 or double(a) * double(b).
template <SumMode M>
__global__ void __launch_bounds__(kSumThreads)
    partial_sum_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t n,
                       double* __restrict__ partial) {
  __shared__ double red[kSumThreads];
  double acc = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * kSumThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kSumThreads) {
    if constexpr (M == SumMode::kDiffSquared) {
      const double d = __dsub_rn(double(a[i]), double(b[i]));
      acc = __dadd_rn(acc, __dmul_rn(d, d));
    } else {
      acc = __dadd_rn(acc, __dmul_rn(double(a[i]), double(b[i])));  // exact product of two floats
    }
  }
  const double s = block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kSumThreads)
    final_sum_kernel(const double* __restrict__ partial, int n, double* __restrict__ result) {
  __shared__ double red[kSumThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += kSumThreads) acc = __dadd_rn(acc, partial[i]);
  const double s = block_sum(acc, red);
  if (threadIdx.x == 0) *result = s;
}

__global__ void diff_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t n,
                            float* __restrict__ d) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    d[i] = __fsub_rn(a[i], b[i]);
}

// ---- clip search -------------------------------------------------------------------------------------

// A clip candidate's grid and clamp value: (scale, zero, m, unused).
using ClipCand = float4;

// One warp per (row, group): amax, and for every shrink i the clamp value m_i and the grid of the clamped
// group. min/max commute with the monotone clamp, so the clamped group's range is the clamped range.
// *bad = the CPU's loop order key (batch, group, shrink, row in batch) of the first overflowing grid.
__global__ void clip_params_kernel(const float* __restrict__ W, int64_t out, int64_t C, int64_t gs, int ns,
                                   int n_grid, DevRule rule, int64_t batch_rows, ClipCand* __restrict__ cand,
                                   float* __restrict__ amax_out, unsigned long long* __restrict__ bad) {
  const int64_t ng = C / gs;
  const int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (item >= out * ng) return;
  const int64_t r = item / ng, g = item - r * ng;
  const float* w = W + r * C + g * gs;
  float mn = INFINITY, mx = -INFINITY;
  for (int64_t k = lane; k < gs; k += 32) {
    mn = fminf(mn, w[k]);
    mx = fmaxf(mx, w[k]);
  }
  warp_min_max(&mn, &mx);
  // max |w| (fabsf: +0 for an all-zero group, as the CPU's running max from 0).
  const float amax = fabsf(fmaxf(-mn, mx));
  if (lane == 0) amax_out[item] = amax;
  for (int i = lane; i < ns; i += 32) {
    const double shrink = __dsub_rn(1.0, __ddiv_rn(double(i), double(n_grid)));
    const float m = __double2float_rn(__dmul_rn(double(amax), shrink));
    float sc = 1.0f, z = 0.0f;
    if (!grid_from_range(fminf(fmaxf(mn, -m), m), fminf(fmaxf(mx, -m), m), rule.maxq, rule.sym, rule.awq, &sc, &z)) {
      const int64_t b = r / batch_rows, rb = r - b * batch_rows;
      atomicMin(bad, static_cast<unsigned long long>(((b * ng + g) * ns + i) * batch_rows + rb));
      sc = 1.0f, z = 0.0f;
    }
    cand[item * ns + i] = make_float4(sc, z, m, 0.0f);
  }
}

constexpr int kClipBM = 128;          // sampled tokens per tile
constexpr int kClipBN = 128;          // (row, shrink) columns per block
constexpr int kClipBK = 16;           // group columns per stage
constexpr int kClipLd = kClipBM + 4;  // padded shared rows (float4-aligned, fewer bank conflicts)
constexpr int kClipThreads = 256;
static_assert(kClipBM == kClipBN && kClipThreads == 256, "the thread mappings below assume 128 x 128 / 256");

struct ClipArgs {
  const float* x;  // [T, C]
  int64_t C, step, ts;
  const float* W;  // [out, C]
  int64_t out, gs, ng;
  int ns;
  float maxq;
  const ClipCand* cand;  // [out, ng, ns]
  double* err;           // [out, ng, ns]
};

// Shared memory of clip_error_kernel: x and D stages, double buffered, and the f64 per-column sums.
struct ClipSmem {
  float xs[2][kClipBK][kClipLd];  // [stage][k][token]
  float ds[2][kClipBK][kClipLd];  // [stage][k][column]
  double sq[16][kClipBN];         // [thread row][column] sum of e^2 over this thread row's tokens
};

// err[r, g, i] = mean over the ts sampled tokens of (x_g . D_i[r])^2; see the file comment.
__global__ void __launch_bounds__(kClipThreads, 2) clip_error_kernel(ClipArgs a) {
  extern __shared__ __align__(16) unsigned char clip_smem_raw[];
  ClipSmem& sm = *reinterpret_cast<ClipSmem*>(clip_smem_raw);
  const int tid = threadIdx.x;
  const int64_t g = blockIdx.y;
  const int64_t ncols = a.out * a.ns;

  // Staging roles. D: column dc, group columns dk..dk+7 of the chunk. x: group column xk of the chunk, tokens
  // xt + 16 q.
  const int dc = tid >> 1, dk = (tid & 1) * 8;
  const int64_t col = int64_t(blockIdx.x) * kClipBN + dc;
  const bool col_ok = col < ncols;
  const int64_t dr = col_ok ? col / a.ns : 0;
  const int di = col_ok ? int(col - dr * a.ns) : 0;
  const ClipCand p = col_ok ? a.cand[(dr * a.ng + g) * a.ns + di] : make_float4(1.0f, 0.0f, 0.0f, 0.0f);
  const float* wg = a.W + dr * a.C + g * a.gs;
  const int xk = tid & 15, xt = tid >> 4;
  const float* xg = a.x + g * a.gs;
  const int64_t xstride = a.step * a.C;  // between sampled tokens
  // Compute role: tokens ty*4+{0..3} and 64+ty*4+{0..3}, columns tx*4+{0..3} and 64+tx*4+{0..3}.
  const int ty = tid >> 4, tx = tid & 15;
  for (int j = tid; j < 16 * kClipBN; j += kClipThreads) (&sm.sq[0][0])[j] = 0.0;

  const int64_t nk = (a.gs + kClipBK - 1) / kClipBK;
  const int64_t total = (a.ts + kClipBM - 1) / kClipBM * nk;
  float xr[8], wr[8];
  auto load = [&](int64_t it) {
    const int64_t tt = it / nk, k = (it - tt * nk) * kClipBK;
    const bool k_ok = k + xk < a.gs;
    const float* src = xg + (tt * kClipBM + xt) * xstride + k + xk;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int64_t t = tt * kClipBM + xt + 16 * q;
      xr[q] = (t < a.ts && k_ok) ? __ldg(src + 16 * q * xstride) : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < 8; ++q) wr[q] = (col_ok && k + dk + q < a.gs) ? __ldg(wg + k + dk + q) : 0.0f;
  };
  auto store = [&](int64_t it, int buf) {
    const int64_t k0 = (it % nk) * kClipBK;
#pragma unroll
    for (int q = 0; q < 8; ++q) sm.xs[buf][xk][xt + 16 * q] = xr[q];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const float w = wr[q];
      const float wc = fminf(fmaxf(w, -p.z), p.z);
      const float c = code_of(wc, p.x, p.y, a.maxq);
      // w - (code - zero) * scale, one rounding: the CPU build contracts this into an FMA (vfnmadd).
      const float d = __fmaf_rn(-__fsub_rn(c, p.y), p.x, w);
      sm.ds[buf][dk + q][dc] = (col_ok && k0 + dk + q < a.gs) ? d : 0.0f;
    }
  };

  float acc[8][8];
  load(0);
  store(0, 0);
  __syncthreads();
  for (int64_t it = 0; it < total; ++it) {
    const int buf = int(it & 1);
    const int64_t kc = it % nk;
    if (kc == 0) {
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    }
    if (it + 1 < total) load(it + 1);
#pragma unroll
    for (int kk = 0; kk < kClipBK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&sm.xs[buf][kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&sm.xs[buf][kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&sm.ds[buf][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&sm.ds[buf][kk][64 + tx * 4]);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = __fmaf_rn(av[i], bv[j], acc[i][j]);
    }
    if (kc == nk - 1) {  // this token tile's E is complete: add its squares (padded tokens give 0)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        double* cell = &sm.sq[ty][j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4];  // this thread's own cell
        double s = *cell;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const double e = double(acc[i][j]);
          s = __fma_rn(e, e, s);
        }
        *cell = s;
      }
    }
    if (it + 1 < total) store(it + 1, buf ^ 1);
    __syncthreads();
  }

  // Combine the 16 thread rows of each column in a fixed order (the loop's last barrier ordered the cells).
  if (tid < kClipBN) {
    const int64_t c = int64_t(blockIdx.x) * kClipBN + tid;
    if (c < ncols) {
      double s = 0.0;
      for (int y = 0; y < 16; ++y) s = __dadd_rn(s, sm.sq[y][tid]);
      const int64_t r = c / a.ns;
      const int64_t i = c - r * a.ns;
      a.err[(r * a.ng + g) * a.ns + i] = __ddiv_rn(s, double(a.ts));
    }
  }
}

// max_val[r, g] = m of the first candidate with the lowest error (amax when none is below +inf, as the CPU).
__global__ void clip_argmin_kernel(const double* __restrict__ err, const ClipCand* __restrict__ cand,
                                   const float* __restrict__ amax, int64_t n, int ns,
                                   float* __restrict__ max_val) {
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= n) return;
  double best = INFINITY;
  float mv = amax[item];
  for (int i = 0; i < ns; ++i) {
    const double e = err[item * ns + i];
    if (e < best) {  // strict: ties keep the smaller shrink
      best = e;
      mv = cand[item * ns + i].z;
    }
  }
  max_val[item] = mv;
}

// First (lowest row-major index) NaN/Inf of M [n].
__global__ void first_nonfinite_kernel(const float* __restrict__ M, int64_t n,
                                       unsigned long long* __restrict__ bad) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    if (!isfinite(M[i])) {
      atomicMin(bad, static_cast<unsigned long long>(i));
      return;  // later indices of this thread are larger
    }
}

// ---- host helpers ----------------------------------------------------------------------------------------

std::string num(double v) {
  char b[48];
  std::snprintf(b, sizeof(b), "%.9g", v);
  return b;
}

std::string shape2(int64_t a, int64_t b) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + "]";
}

// The rule's group size for C columns, or an error naming the call.
CudaStatus group_size_of(const char* what, const GptqGridRule& rule, int64_t C, int64_t* gs) {
  if (rule.bits < 2 || rule.bits > 8)
    return CudaStatus::error(std::string(what) + ": " + std::to_string(rule.bits) + " bits; need 2..8");
  if (rule.group_size < 0 || (rule.group_size > 0 && C % rule.group_size != 0))
    return CudaStatus::error(std::string(what) + ": group size " + std::to_string(rule.group_size) +
                             " does not divide " + std::to_string(C) + " columns");
  *gs = rule.group_size == 0 ? C : rule.group_size;
  return CudaStatus::ok();
}

DevRule dev_rule(const GptqGridRule& r) {
  return DevRule{(1 << r.bits) - 1, r.sym, r.awq};
}

unsigned warp_blocks(int64_t warps) {  // 8 warps per 256-thread block
  return unsigned((warps + 7) / 8);
}

CudaStatus select(int device) {
  GPTQ_CUDA_CHECK(cudaSetDevice(device));
  return CudaStatus::ok();
}

// Enqueues the f64 sum of M over a, b [n] into *result_dev (partial [kSumBlocks] is scratch).
template <SumMode M>
CudaStatus enqueue_sum(const float* a, const float* b, int64_t n, double* partial, double* result_dev,
                       cudaStream_t s) {
  partial_sum_kernel<M><<<kSumBlocks, kSumThreads, 0, s>>>(a, b, n, partial);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  final_sum_kernel<<<1, kSumThreads, 0, s>>>(partial, kSumBlocks, result_dev);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  return CudaStatus::ok();
}

}  // namespace

// ---- AwqAbsSum ---------------------------------------------------------------------------------------

struct AwqAbsSum::Impl {
  int device = 0;
  int64_t C = 0, tokens = 0;
  DeviceBuffer sum;  // [C] f64
  DeviceBuffer bad;  // [1] u64
};

AwqAbsSum::AwqAbsSum() : impl_(std::make_unique<Impl>()) {}
AwqAbsSum::~AwqAbsSum() = default;

CudaStatus AwqAbsSum::create(int64_t C, std::unique_ptr<AwqAbsSum>* dst) {
  if (C <= 0) return CudaStatus::error("AWQ mean |x|: " + std::to_string(C) + " channels; need at least one");
  std::unique_ptr<AwqAbsSum> a(new AwqAbsSum());
  Impl& m = *a->impl_;
  GPTQ_CUDA_CHECK(cudaGetDevice(&m.device));
  m.C = C;
  GPTQ_TRY(m.sum.ensure(C * 8, "the AWQ |x| sums [C] f64"));
  GPTQ_TRY(m.bad.ensure(8, "the AWQ non-finite index"));
  GPTQ_TRY(a->reset(nullptr));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  *dst = std::move(a);
  return CudaStatus::ok();
}

CudaStatus AwqAbsSum::reset(void* stream) {
  Impl& m = *impl_;
  GPTQ_TRY(select(m.device));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.sum.ptr, 0, size_t(m.C) * 8, s));
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.bad.ptr, 0xff, 8, s));
  m.tokens = 0;
  return CudaStatus::ok();
}

CudaStatus AwqAbsSum::add(const float* x, int64_t rows, void* stream) {
  Impl& m = *impl_;
  if (rows < 0) return CudaStatus::error("AWQ mean |x|: chunk of " + std::to_string(rows) + " rows");
  if (rows == 0) return CudaStatus::ok();
  GPTQ_TRY(select(m.device));
  abs_sum_kernel<<<unsigned((m.C + kAbsSumThreads - 1) / kAbsSumThreads), kAbsSumThreads, 0,
                   static_cast<cudaStream_t>(stream)>>>(x, rows, m.C, m.tokens, m.sum.as<double>(),
                                                        m.bad.as<unsigned long long>());
  GPTQ_CUDA_CHECK(cudaGetLastError());
  m.tokens += rows;
  return CudaStatus::ok();
}

CudaStatus AwqAbsSum::finalize(float* mean_host, int64_t* first_bad, void* stream) const {
  const Impl& m = *impl_;
  if (m.tokens == 0) return CudaStatus::error("AWQ mean |x|: no rows were added");
  GPTQ_TRY(select(m.device));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  std::vector<double> sum(static_cast<size_t>(m.C));
  unsigned long long bad = 0;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(sum.data(), m.sum.ptr, size_t(m.C) * 8, cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(&bad, m.bad.ptr, 8, cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(s));
  for (int64_t c = 0; c < m.C; ++c)
    mean_host[c] = float(sum[size_t(c)] / double(m.tokens));  // as awq_mean_abs
  *first_bad = bad == kNoKey ? -1 : int64_t(bad);
  return CudaStatus::ok();
}

double* AwqAbsSum::sums_device() {
  return impl_->sum.as<double>();
}
void AwqAbsSum::set_tokens(int64_t tokens) {
  impl_->tokens = tokens;
}

int64_t AwqAbsSum::tokens() const {
  return impl_->tokens;
}
int64_t AwqAbsSum::channels() const {
  return impl_->C;
}

// ---- column scaling ----------------------------------------------------------------------------------

CudaStatus awq_scale_columns_device(float* x, int64_t T, int64_t C, const float* s, void* stream) {
  if (T < 0 || C <= 0) return CudaStatus::error("AWQ scale columns: x is " + shape2(T, C));
  if (T == 0) return CudaStatus::ok();
  scale_columns_kernel<<<row_grid(T, C), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, T, C, s);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  return CudaStatus::ok();
}

// ---- AwqDevice -----------------------------------------------------------------------------------------

struct AwqDevice::Impl {
  int device = 0;
  std::string name;
  cublasHandle_t blas = nullptr;
  DeviceBuffer sum;      // mean_abs: [C] f64
  DeviceBuffer keys;     // [4] u64 error keys
  DeviceBuffer partial;  // [kSumBlocks + 2] f64: partial sums, then two results
  DeviceBuffer cand;     // clip: [out, ng, ns] ClipCand
  DeviceBuffer err;      // clip: [out, ng, ns] f64
  DeviceBuffer amax;     // clip: [out, ng] f32
  DeviceBuffer max_val;  // clip: [out, ng] f32
  DeviceBuffer d;        // quant_errors: D [out, in] f32
  DeviceBuffer dh;       // quant_errors: D H [out, in] f32
  ~Impl() {
    if (blas) cublasDestroy(blas);
  }
  unsigned long long* key(int i) const { return keys.as<unsigned long long>() + i; }
};

AwqDevice::AwqDevice() : impl_(std::make_unique<Impl>()) {}
AwqDevice::~AwqDevice() = default;

CudaStatus AwqDevice::create(int device, std::unique_ptr<AwqDevice>* dst) {
  std::unique_ptr<AwqDevice> a(new AwqDevice());
  Impl& m = *a->impl_;
  GPTQ_TRY(gptq_detail::select_device(device, &m.name));
  m.device = device;
  GPTQ_CUBLAS_CHECK(cublasCreate(&m.blas));
  GPTQ_CUBLAS_CHECK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));  // no TF32: the CPU's f32 SGEMM
  GPTQ_TRY(m.keys.ensure(4 * 8, "the AWQ error keys"));
  GPTQ_TRY(m.partial.ensure((kSumBlocks + 2) * 8, "the f64 partial sums"));
  *dst = std::move(a);
  return CudaStatus::ok();
}

const std::string& AwqDevice::name() const {
  return impl_->name;
}

int64_t AwqDevice::bytes() const {
  const Impl& m = *impl_;
  int64_t b = 0;
  for (const DeviceBuffer* x :
       {&m.sum, &m.keys, &m.partial, &m.cand, &m.err, &m.amax, &m.max_val, &m.d, &m.dh})
    b += x->bytes;
  return b;
}

CudaStatus AwqDevice::mean_abs(const float* x, int64_t T, int64_t C, float* mean_host, int64_t* first_bad,
                               void* stream) {
  Impl& m = *impl_;
  if (T <= 0 || C <= 0)
    return CudaStatus::error("AWQ mean |x|: calibration input is " + shape2(T, C) +
                             "; need at least one token and channel");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  GPTQ_TRY(m.sum.ensure(C * 8, "the AWQ |x| sums [C] f64"));
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.sum.ptr, 0, size_t(C) * 8, s));
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.key(0), 0xff, 8, s));
  abs_sum_kernel<<<unsigned((C + kAbsSumThreads - 1) / kAbsSumThreads), kAbsSumThreads, 0, s>>>(
      x, T, C, 0, m.sum.as<double>(), m.key(0));
  GPTQ_CUDA_CHECK(cudaGetLastError());
  std::vector<double> sum(static_cast<size_t>(C));
  unsigned long long bad = 0;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(sum.data(), m.sum.ptr, size_t(C) * 8, cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(&bad, m.key(0), 8, cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(s));
  for (int64_t c = 0; c < C; ++c) mean_host[c] = float(sum[size_t(c)] / double(T));  // as awq_mean_abs
  *first_bad = bad == kNoKey ? -1 : int64_t(bad);
  return CudaStatus::ok();
}

CudaStatus AwqDevice::fake_quantize_scaled(const float* W, int64_t rows, int64_t C, const float* s,
                                           const GptqGridRule& rule, float* dst, void* stream) {
  Impl& m = *impl_;
  if (rows <= 0 || C <= 0) return CudaStatus::error("AWQ fake quantization: W is " + shape2(rows, C));
  int64_t gs = 0;
  GPTQ_TRY(group_size_of("AWQ fake quantization", rule, C, &gs));
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t ng = C / gs;
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.key(0), 0xff, 8, st));
  fake_quant_kernel<<<warp_blocks(rows * ng), 256, 0, st>>>(W, rows, C, gs, s, dev_rule(rule), dst, m.key(0));
  GPTQ_CUDA_CHECK(cudaGetLastError());
  unsigned long long bad = 0;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(&bad, m.key(0), 8, cudaMemcpyDeviceToHost, st));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(st));
  if (bad == kNoKey) return CudaStatus::ok();
  // Say which group, and its range after scaling, from the group's values.
  const int64_t r = int64_t(bad) / ng, g = int64_t(bad) % ng;
  std::vector<float> w(static_cast<size_t>(gs)), sv(static_cast<size_t>(gs));
  GPTQ_CUDA_CHECK(cudaMemcpy(w.data(), W + r * C + g * gs, size_t(gs) * 4, cudaMemcpyDeviceToHost));
  GPTQ_CUDA_CHECK(cudaMemcpy(sv.data(), s + g * gs, size_t(gs) * 4, cudaMemcpyDeviceToHost));
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t k = 0; k < gs; ++k) {
    const float v = w[size_t(k)] * sv[size_t(k)];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  return CudaStatus::error("AWQ fake quantization: row " + std::to_string(r) + " group " + std::to_string(g) +
                           ": scale overflows fp16 (group range [" + num(lo) + ", " + num(hi) +
                           "] after scaling, " + std::to_string(rule.bits) + " bits)");
}

CudaStatus AwqDevice::search_clip(const float* W, int64_t out, int64_t C, const float* x, int64_t T,
                                  const GptqGridRule& rule, const AwqClipOptions& opt, float* max_val_host,
                                  double* err_host, void* stream) {
  Impl& m = *impl_;
  const char* what = "AWQ clip search";
  if (out <= 0 || C <= 0 || T <= 0)
    return CudaStatus::error(std::string(what) + ": W is " + shape2(out, C) + " and x " + shape2(T, C) +
                             "; need at least one row, column and token");
  if (opt.n_grid < 1 || opt.clip_sample_tokens < 1 || opt.clip_batch_rows < 1 || !(opt.max_shrink >= 0) ||
      opt.max_shrink > 1)
    return CudaStatus::error(std::string(what) + ": bad options (n_grid " + std::to_string(opt.n_grid) +
                             ", max_shrink " + num(opt.max_shrink) + ", sample tokens " +
                             std::to_string(opt.clip_sample_tokens) + ", batch rows " +
                             std::to_string(opt.clip_batch_rows) + ")");
  int64_t gs = 0;
  GPTQ_TRY(group_size_of(what, rule, C, &gs));
  const int64_t ng = C / gs;
  if (ng > 65535)
    return CudaStatus::error(std::string(what) + ": " + std::to_string(ng) + " groups; at most 65535");
  const int ns = std::max(1, int(opt.max_shrink * opt.n_grid));  // as the CPU: int() truncates
  const int64_t step = std::max<int64_t>(1, T / opt.clip_sample_tokens);
  const int64_t ts = (T + step - 1) / step;
  const int64_t batch_rows = std::min(out, opt.clip_batch_rows);
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t n_items = out * ng, n_cand = n_items * ns;
  GPTQ_TRY(m.cand.ensure(n_cand * int64_t(sizeof(ClipCand)), "the clip candidates [out, groups, shrinks]"));
  GPTQ_TRY(m.err.ensure(n_cand * 8, "the clip errors [out, groups, shrinks] f64"));
  GPTQ_TRY(m.amax.ensure(n_items * 4, "the group maxima [out, groups] f32"));
  GPTQ_TRY(m.max_val.ensure(n_items * 4, "the clip values [out, groups] f32"));

  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.keys.ptr, 0xff, 3 * 8, st));
  first_nonfinite_kernel<<<1024, 256, 0, st>>>(W, out * C, m.key(0));
  GPTQ_CUDA_CHECK(cudaGetLastError());
  first_nonfinite_kernel<<<1024, 256, 0, st>>>(x, T * C, m.key(1));
  GPTQ_CUDA_CHECK(cudaGetLastError());
  clip_params_kernel<<<warp_blocks(n_items), 256, 0, st>>>(W, out, C, gs, ns, opt.n_grid, dev_rule(rule),
                                                           batch_rows, m.cand.as<ClipCand>(),
                                                           m.amax.as<float>(), m.key(2));
  GPTQ_CUDA_CHECK(cudaGetLastError());
  ClipArgs args{x,
                C,
                step,
                ts,
                W,
                out,
                gs,
                ng,
                ns,
                float((1 << rule.bits) - 1),
                m.cand.as<ClipCand>(),
                m.err.as<double>()};
  const dim3 grid(unsigned((out * ns + kClipBN - 1) / kClipBN), unsigned(ng));
  GPTQ_CUDA_CHECK(cudaFuncSetAttribute(clip_error_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(sizeof(ClipSmem))));
  clip_error_kernel<<<grid, kClipThreads, sizeof(ClipSmem), st>>>(args);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  clip_argmin_kernel<<<unsigned((n_items + 255) / 256), 256, 0, st>>>(
      m.err.as<double>(), m.cand.as<ClipCand>(), m.amax.as<float>(), n_items, ns, m.max_val.as<float>());
  GPTQ_CUDA_CHECK(cudaGetLastError());
  unsigned long long keys[3] = {0, 0, 0};
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(keys, m.keys.ptr, 3 * 8, cudaMemcpyDeviceToHost, st));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(st));
  for (int k = 0; k < 2; ++k) {  // the CPU checks W, then x
    if (keys[k] == kNoKey) continue;
    const float* M = k == 0 ? W : x;
    const int64_t i = int64_t(keys[k]);
    float v = 0;
    GPTQ_CUDA_CHECK(cudaMemcpy(&v, M + i, 4, cudaMemcpyDeviceToHost));
    return CudaStatus::error(std::string(what) + ": " + (k == 0 ? "weight" : "calibration input") + "[" +
                             std::to_string(i / C) + ", " + std::to_string(i % C) + "] is " + num(v));
  }
  if (keys[2] != kNoKey) {
    int64_t key = int64_t(keys[2]);
    const int64_t rb = key % batch_rows;
    key /= batch_rows;
    const int64_t i = key % ns;
    key /= ns;
    const int64_t g = key % ng, r = key / ng * batch_rows + rb;
    std::vector<float> w(static_cast<size_t>(gs));
    GPTQ_CUDA_CHECK(cudaMemcpy(w.data(), W + r * C + g * gs, size_t(gs) * 4, cudaMemcpyDeviceToHost));
    float amax = 0;
    for (float v : w) amax = std::max(amax, std::fabs(v));
    const float mc = float(double(amax) * (1.0 - double(i) / double(opt.n_grid)));
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (float v : w) {
      lo = std::min(lo, std::clamp(v, -mc, mc));
      hi = std::max(hi, std::clamp(v, -mc, mc));
    }
    return CudaStatus::error(std::string(what) + ": row " + std::to_string(r) + " group " +
                             std::to_string(g) + " shrink " + std::to_string(i) +
                             ": scale overflows fp16 (group range [" + num(lo) + ", " + num(hi) + "], " +
                             std::to_string(rule.bits) + " bits)");
  }
  GPTQ_CUDA_CHECK(
      cudaMemcpyAsync(max_val_host, m.max_val.ptr, size_t(n_items) * 4, cudaMemcpyDeviceToHost, st));
  if (err_host)
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(err_host, m.err.ptr, size_t(n_cand) * 8, cudaMemcpyDeviceToHost, st));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(st));
  return CudaStatus::ok();
}

CudaStatus AwqDevice::mean_squared_diff(const float* a, const float* b, int64_t n, double* result_host,
                                        void* stream) {
  Impl& m = *impl_;
  if (n <= 0) return CudaStatus::error("mean squared difference of " + std::to_string(n) + " values");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  double* partial = m.partial.as<double>();
  GPTQ_TRY(enqueue_sum<SumMode::kDiffSquared>(a, b, n, partial, partial + kSumBlocks, st));
  double sum = 0;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(&sum, partial + kSumBlocks, 8, cudaMemcpyDeviceToHost, st));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(st));
  *result_host = sum / double(n);
  return CudaStatus::ok();
}

CudaStatus AwqDevice::quant_errors(const float* W, const float* Q, const float* H, int64_t out, int64_t in,
                                   double* weight_mse, double* output_error, void* stream) {
  Impl& m = *impl_;
  if (out <= 0 || in <= 0 || in > std::numeric_limits<int>::max() || out > std::numeric_limits<int>::max())
    return CudaStatus::error("quant errors: W is " + shape2(out, in));
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t n = out * in;
  GPTQ_TRY(m.d.ensure(n * 4, "the weight error D = W - Q [out, in] f32"));
  diff_kernel<<<1024, 256, 0, st>>>(W, Q, n, m.d.as<float>());
  GPTQ_CUDA_CHECK(cudaGetLastError());
  double* partial = m.partial.as<double>();
  GPTQ_TRY(
      enqueue_sum<SumMode::kProduct>(m.d.as<float>(), m.d.as<float>(), n, partial, partial + kSumBlocks, st));
  if (H) {
    GPTQ_TRY(m.dh.ensure(n * 4, "D H [out, in] f32"));
    GPTQ_CUBLAS_CHECK(cublasSetStream(m.blas, st));
    const float one = 1.0f, zero = 0.0f;
    // Row-major DH [out, in] with DH[o, j] = sum_k D[o, k] H[j, k] (the CPU's linear(): D @ H^T).
    // Column-major, DH^T [in, out] = op(H_cm) D_cm with H_cm = H^T, so op = T; D_cm [in, out] is D^T as
    // stored.
    GPTQ_CUBLAS_CHECK(cublasSgemm(m.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(in), int(out), int(in), &one, H,
                                  int(in), m.d.as<float>(), int(in), &zero, m.dh.as<float>(), int(in)));
    GPTQ_TRY(enqueue_sum<SumMode::kProduct>(m.dh.as<float>(), m.d.as<float>(), n, partial,
                                            partial + kSumBlocks + 1, st));
  }
  double sums[2] = {0, 0};
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(sums, partial + kSumBlocks, (H ? 2 : 1) * 8, cudaMemcpyDeviceToHost, st));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(st));
  *weight_mse = sums[0] / double(n);
  if (H) *output_error = sums[1] / 2.0;
  return CudaStatus::ok();
}

}  // namespace qforge::cuda
