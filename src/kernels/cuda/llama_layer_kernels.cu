// Element-wise and row-wise kernels of the decoder layer (declared in llama_layer_kernels.cuh). They are
// memory-bound and small next to the GEMMs: one block per row where a row reduction or a row permutation is
// needed, grid-stride loops otherwise. Arithmetic follows the CPU's expressions in ops.cpp; products that the
// CPU rounds separately are rounded separately here too (__fmul_rn), so nvcc does not contract them into
// FMAs.
#include <cfloat>
#include <string>

#include "kernels/cuda/llama_layer_kernels.cuh"

namespace qforge::cuda::layer_detail {

namespace {

constexpr int kRowThreads = 256;  // threads per row-block; rows are >= 64 wide for every real model

std::string shape_str(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  bool first = true;
  for (int64_t d : dims) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

CudaStatus check_launch(const char* kernel, const std::string& shape) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return CudaStatus::ok();
  return CudaStatus::error(std::string("launch of ") + kernel + " on " + shape + ": " + cudaGetErrorName(e) +
                           " (" + cudaGetErrorString(e) + ")");
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return unsigned(blocks < (int64_t(1) << 20) ? (blocks > 0 ? blocks : 1) : (int64_t(1) << 20));
}

// Sum / max over the block; every thread gets the result. red [32] shared scratch, reusable right after.
__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, n_warps = int(blockDim.x) >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < n_warps ? red[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, n_warps = int(blockDim.x) >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < n_warps ? red[lane] : -FLT_MAX;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One block per row.
__global__ void rms_norm_kernel(const float* __restrict__ x, int64_t D, const float* __restrict__ gamma,
                                float eps, float* __restrict__ y, bf16* __restrict__ y16) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * D;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss = __fadd_rn(ss, __fmul_rn(xr[d], xr[d]));
  ss = block_sum(ss, red);
  const float inv = 1.0f / sqrtf(ss / float(D) + eps);
  float* yr = y + r * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = __fmul_rn(gamma[d], __fmul_rn(xr[d], inv));
    yr[d] = v;
    if (y16) y16[r * D + d] = __float2bfloat16_rn(v);
  }
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) {
  return __float2bfloat16_rn(v);
}

// One block per token row r = w * L + t. Work items: (head, i) pairs of q and k heads (i < hd/2), then the v
// elements.
template <typename T>
__global__ void rope_split_kernel(const float* __restrict__ qkv, const float* __restrict__ bias, int64_t L,
                                  int64_t n_heads, int64_t n_kv, int64_t hd, const float* __restrict__ cos_t,
                                  const float* __restrict__ sin_t, T* __restrict__ q, T* __restrict__ k,
                                  T* __restrict__ v) {
  const int64_t r = blockIdx.x, w = r / L, t = r % L, half = hd / 2;
  const int64_t Q = n_heads * hd, KV = n_kv * hd, width = Q + 2 * KV;
  const float* row = qkv + r * width;
  const int64_t n_pairs = (n_heads + n_kv) * half;
  for (int64_t idx = threadIdx.x; idx < n_pairs + KV; idx += blockDim.x) {
    if (idx < n_pairs) {
      const int64_t head = idx / half, i = idx % half, col = head * hd + i;
      float a = row[col], b = row[col + half];
      if (bias) {
        a = __fadd_rn(a, bias[col]);
        b = __fadd_rn(b, bias[col + half]);
      }
      const float c = cos_t[t * half + i], s = sin_t[t * half + i];
      const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
      const float rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
      T* dst = head < n_heads ? q + ((w * n_heads + head) * L + t) * hd
                              : k + ((w * n_kv + (head - n_heads)) * L + t) * hd;
      dst[i] = from_f32<T>(ra);
      dst[i + half] = from_f32<T>(rb);
    } else {
      const int64_t j = idx - n_pairs, g = j / hd, d = j % hd;
      float val = row[Q + KV + j];
      if (bias) val = __fadd_rn(val, bias[Q + KV + j]);
      v[((w * n_kv + g) * L + t) * hd + d] = from_f32<T>(val);
    }
  }
}

// One block per score row; the visible part of the row is staged in shared memory (row [L] floats).
// VEC4 (L % 4 == 0, so every row is 16-byte aligned): 16-byte loads of the visible part and 16- / 8-byte
// stores.
template <bool P_BF16, bool VEC4>
__global__ void causal_softmax_kernel(float* __restrict__ S, int64_t L) {
  extern __shared__ float row[];
  __shared__ float red[32];
  const int64_t r = blockIdx.x, n = r % L + 1;
  float* sr = S + r * L;
  float mx = -FLT_MAX;
  if constexpr (VEC4) {
    for (int64_t c = threadIdx.x; 4 * c < n; c += blockDim.x) {
      const float4 v = reinterpret_cast<const float4*>(sr)[c];
      reinterpret_cast<float4*>(row)[c] = v;
      mx = fmaxf(mx, v.x);  // 4c < n: the first is visible
      if (4 * c + 1 < n) mx = fmaxf(mx, v.y);
      if (4 * c + 2 < n) mx = fmaxf(mx, v.z);
      if (4 * c + 3 < n) mx = fmaxf(mx, v.w);
    }
  } else {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float v = sr[j];
      row[j] = v;
      mx = fmaxf(mx, v);
    }
  }
  mx = block_max(mx, red);  // after its barrier every global read of this row is done
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float e = expf(fmaxf(__fsub_rn(row[j], mx), -FLT_MAX));
    row[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);  // its barriers also make every row[] write visible to the whole block
  const float inv = 1.0f / sum;
  if constexpr (VEC4) {
    for (int64_t c = threadIdx.x; 4 * c < L; c += blockDim.x) {
      float p[4];
      for (int k = 0; k < 4; ++k) p[k] = 4 * c + k < n ? __fmul_rn(row[4 * c + k], inv) : 0.0f;
      if constexpr (P_BF16) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(p[0], p[1]), hi = __floats2bfloat162_rn(p[2], p[3]);
        uint2 packed;
        packed.x = *reinterpret_cast<unsigned*>(&lo);
        packed.y = *reinterpret_cast<unsigned*>(&hi);
        reinterpret_cast<uint2*>(reinterpret_cast<bf16*>(S) + r * 2 * L)[c] = packed;
      } else {
        reinterpret_cast<float4*>(sr)[c] = make_float4(p[0], p[1], p[2], p[3]);
      }
    }
  } else if constexpr (P_BF16) {
    bf16* pr = reinterpret_cast<bf16*>(S) + r * 2 * L;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
      pr[j] = __float2bfloat16_rn(j < n ? __fmul_rn(row[j], inv) : 0.0f);
  } else {
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) sr[j] = j < n ? __fmul_rn(row[j], inv) : 0.0f;
  }
}

// One block per token row r = w * L + t.
__global__ void merge_heads_kernel(const float* __restrict__ ctx, int64_t L, int64_t n_heads, int64_t hd,
                                   float* __restrict__ out, bf16* __restrict__ out16) {
  const int64_t r = blockIdx.x, w = r / L, t = r % L, Q = n_heads * hd;
  for (int64_t j = threadIdx.x; j < Q; j += blockDim.x) {
    const int64_t h = j / hd, d = j % hd;
    const float v = ctx[((w * n_heads + h) * L + t) * hd + d];
    out[r * Q + j] = v;
    if (out16) out16[r * Q + j] = __float2bfloat16_rn(v);
  }
}

__global__ void silu_mul_kernel(const float* __restrict__ gu, int64_t rows, int64_t I, float* __restrict__ h,
                                bf16* __restrict__ h16) {
  const int64_t n = rows * I;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / I, c = i % I;
    const float g = gu[r * 2 * I + c], u = gu[r * 2 * I + I + c];
    const float v = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
    h[i] = v;
    if (h16) h16[i] = __float2bfloat16_rn(v);
  }
}

__global__ void to_bf16_kernel(const float* __restrict__ src, int64_t n, bf16* __restrict__ dst) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace

CudaStatus launch_rms_norm(const float* x, int64_t rows, int64_t D, const float* gamma, float eps, float* y,
                           bf16* y16, cudaStream_t s) {
  if (rows <= 0) return CudaStatus::ok();
  rms_norm_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(x, D, gamma, eps, y, y16);
  return check_launch("rms_norm_kernel", shape_str({rows, D}));
}

template <typename T>
CudaStatus launch_rope_split(const float* qkv, const float* bias, int64_t rows, int64_t L, int64_t n_heads,
                             int64_t n_kv, int64_t hd, const float* cos, const float* sin, T* q, T* k, T* v,
                             cudaStream_t s) {
  if (rows <= 0) return CudaStatus::ok();
  rope_split_kernel<T>
      <<<unsigned(rows), kRowThreads, 0, s>>>(qkv, bias, L, n_heads, n_kv, hd, cos, sin, q, k, v);
  return check_launch("rope_split_kernel", shape_str({rows, (n_heads + 2 * n_kv) * hd}));
}
template CudaStatus launch_rope_split<float>(const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                             int64_t, const float*, const float*, float*, float*, float*,
                                             cudaStream_t);
template CudaStatus launch_rope_split<bf16>(const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                            int64_t, const float*, const float*, bf16*, bf16*, bf16*,
                                            cudaStream_t);

template <bool P_BF16>
CudaStatus launch_causal_softmax(float* S, int64_t n_rows, int64_t L, cudaStream_t s) {
  if (n_rows <= 0) return CudaStatus::ok();
  const size_t smem = size_t((L + 3) / 4 * 4) * sizeof(float);
  if (L % 4 == 0)
    causal_softmax_kernel<P_BF16, true><<<unsigned(n_rows), kRowThreads, smem, s>>>(S, L);
  else
    causal_softmax_kernel<P_BF16, false><<<unsigned(n_rows), kRowThreads, smem, s>>>(S, L);
  return check_launch(P_BF16 ? "causal_softmax_kernel<bf16 P>" : "causal_softmax_kernel<f32 P>",
                      shape_str({n_rows, L}));
}
template CudaStatus launch_causal_softmax<false>(float*, int64_t, int64_t, cudaStream_t);
template CudaStatus launch_causal_softmax<true>(float*, int64_t, int64_t, cudaStream_t);

CudaStatus launch_merge_heads(const float* ctx, int64_t windows, int64_t L, int64_t n_heads, int64_t hd,
                              float* out, bf16* out16, cudaStream_t s) {
  const int64_t rows = windows * L;
  if (rows <= 0) return CudaStatus::ok();
  merge_heads_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(ctx, L, n_heads, hd, out, out16);
  return check_launch("merge_heads_kernel", shape_str({windows, n_heads, L, hd}));
}

CudaStatus launch_silu_mul(const float* gu, int64_t rows, int64_t I, float* h, bf16* h16, cudaStream_t s) {
  if (rows * I <= 0) return CudaStatus::ok();
  silu_mul_kernel<<<grid_for(rows * I, 256), 256, 0, s>>>(gu, rows, I, h, h16);
  return check_launch("silu_mul_kernel", shape_str({rows, 2 * I}));
}

CudaStatus launch_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t s) {
  if (n <= 0) return CudaStatus::ok();
  to_bf16_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, n, dst);
  return check_launch("to_bf16_kernel", shape_str({n}));
}

CudaStatus prepare_causal_softmax(int device, int64_t L) {
  constexpr int64_t kDefaultDynamicSmem = 48 << 10;
  const int64_t want = (L + 3) / 4 * 4 * int64_t(sizeof(float));
  if (want <= kDefaultDynamicSmem) return CudaStatus::ok();
  int optin = 0;
  cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess)
    return CudaStatus::error(std::string("cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin): ") +
                             cudaGetErrorString(e));
  const int64_t usable =
      int64_t(optin) - 32 * int64_t(sizeof(float));  // the kernels' static reduction scratch
  if (want > usable)
    return CudaStatus::error("seqlen " + std::to_string(L) +
                             " is too long for the causal softmax kernel: a row of " + std::to_string(want) +
                             " bytes of shared memory, the device allows " + std::to_string(usable) +
                             " (seqlen <= " + std::to_string(usable / 4) + ")");
  const cudaFuncAttribute a = cudaFuncAttributeMaxDynamicSharedMemorySize;
  if (e == cudaSuccess) e = cudaFuncSetAttribute(causal_softmax_kernel<false, false>, a, int(want));
  if (e == cudaSuccess) e = cudaFuncSetAttribute(causal_softmax_kernel<false, true>, a, int(want));
  if (e == cudaSuccess) e = cudaFuncSetAttribute(causal_softmax_kernel<true, false>, a, int(want));
  if (e == cudaSuccess) e = cudaFuncSetAttribute(causal_softmax_kernel<true, true>, a, int(want));
  if (e != cudaSuccess)
    return CudaStatus::error("cudaFuncSetAttribute(causal_softmax_kernel, MaxDynamicSharedMemorySize, " +
                             std::to_string(want) + "): " + cudaGetErrorString(e));
  return CudaStatus::ok();
}

}  // namespace qforge::cuda::layer_detail
