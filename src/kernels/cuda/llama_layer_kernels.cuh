// The element-wise / row-wise kernels of the decoder layer on the GPU (llama_layer_kernels.cu); the GEMMs are
// cuBLAS calls in llama_layer_cuda.cu. Each launcher checks its launch and returns the error naming the
// kernel and its shape. Their CPU twins are the ops:: functions named on each (src/ops/ops.cpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/w4a16.h"  // CudaStatus

namespace qforge::cuda::layer_detail {

using bf16 = __nv_bfloat16;

// y[rows, D] = gamma * (x * inv_rms(x)), f32 sum of squares (ops::rms_norm); y16 = bf16(y) when non-null.
CudaStatus launch_rms_norm(const float* x, int64_t rows, int64_t D, const float* gamma, float eps, float* y,
                           bf16* y16, cudaStream_t s);

// From qkv [rows, q_dim + 2 kv_dim] (ld = that width; rows = windows * L, positions t = row % L):
// adds the biases (bias [q_dim + 2 kv_dim] or null), applies RoPE to q and k (ops::rope_apply, tables
// cos/sin [L, hd/2]) and writes head-major q [w, n_heads, L, hd], k and v [w, n_kv, L, hd] as T (float or
// bf16).
template <typename T>
CudaStatus launch_rope_split(const float* qkv, const float* bias, int64_t rows, int64_t L, int64_t n_heads,
                             int64_t n_kv, int64_t hd, const float* cos, const float* sin, T* q, T* k, T* v,
                             cudaStream_t s);

// Causal softmax of the scores S [n_rows, L] f32 (row r is query position r % L) in place, as
// ops::attention_causal: keys <= the query's position, exp(s - max) * (1 / sum), the rest 0.
// P_BF16: writes bf16 P over the same memory, row r at bf16 element offset r * 2L (ld 2L): each row's
// f32 bytes are read into shared memory before its bf16 values overwrite them. Dynamic shared memory L * 4.
template <bool P_BF16>
CudaStatus launch_causal_softmax(float* S, int64_t n_rows, int64_t L, cudaStream_t s);

// out[w * L + t, h * hd + d] = ctx[w, h, t, d] (f32), and out16 = bf16 of it when non-null.
CudaStatus launch_merge_heads(const float* ctx, int64_t windows, int64_t L, int64_t n_heads, int64_t hd,
                              float* out, bf16* out16, cudaStream_t s);

// h[rows, I] = silu(gu[:, :I]) * gu[:, I:] (ops::silu_mul) from gu [rows, 2I]; h16 = bf16(h) when non-null.
CudaStatus launch_silu_mul(const float* gu, int64_t rows, int64_t I, float* h, bf16* h16, cudaStream_t s);

// dst[n] = bf16(src[n]), round to nearest even.
CudaStatus launch_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t s);

// Raises the softmax kernels' dynamic shared-memory limit to L * 4 bytes where L needs more than the default
// 48 KiB, or says that L is too long for this device (the row lives in shared memory).
CudaStatus prepare_causal_softmax(int device, int64_t L);

}  // namespace qforge::cuda::layer_detail
