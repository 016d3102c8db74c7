// CPU f32 ops the decoder is built from. Dense matmuls go through BLAS (OpenBLAS, multi-threaded);
// element-wise ops are plain loops the compiler vectorises. Shapes are in comments: row-major.
#pragma once

#include <cstdint>

namespace qforge::ops {

// y[M,N] = x[M,K] @ w[N,K]^T (+ bias[N] if non-null). lda/ldy are row strides in elements.
void linear(const float* x, int64_t M, int64_t K, int64_t ldx, const float* w, int64_t N, const float* bias,
            float* y, int64_t ldy);
// Scalar reference of linear(), for tests.
void linear_ref(const float* x, int64_t M, int64_t K, int64_t ldx, const float* w, int64_t N,
                const float* bias, float* y, int64_t ldy);

// y[M,D] = x / sqrt(mean(x^2) + eps) * gamma[D], per row (float accumulation, as HF's LlamaRMSNorm in fp32).
void rms_norm(const float* x, int64_t M, int64_t D, const float* gamma, float eps, float* y);

// Rotary embedding in the Hugging Face "rotate_half" layout: within each head of size hd, element i
// pairs with i + hd/2. x[T, n_heads*hd] in place; cos/sin[T, hd/2] for the T positions.
void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t hd, const float* cos, const float* sin);

// In-place softmax over each of M rows of length N (row stride ld), max-subtracted for stability.
void softmax_rows(float* x, int64_t M, int64_t N, int64_t ld);

// h[i] = silu(g[i]) * u[i]
void silu_mul(const float* g, const float* u, float* h, int64_t n);

// Number of threads BLAS uses (0 = leave as configured by OPENBLAS_NUM_THREADS / hardware).
void set_num_threads(int n);
int num_threads();

}  // namespace qforge::ops

namespace qforge::ops {

// Causal grouped-query attention for T new queries at positions pos0..pos0+T-1.
// q[T, nh*hd]; k, v[pos0+T, nkv*hd] (the cache, new rows included); out[T, nh*hd].
// Query head h reads kv head h / (nh/nkv). Scores scaled by 1/sqrt(hd), softmax in f32.
void attention_causal(const float* q, int64_t T, int64_t pos0, const float* k, const float* v, int64_t nh,
                      int64_t nkv, int64_t hd, float* out);
// Scalar reference (double accumulation) of attention_causal, for tests.
void attention_causal_ref(const float* q, int64_t T, int64_t pos0, const float* k, const float* v, int64_t nh,
                          int64_t nkv, int64_t hd, float* out);

}  // namespace qforge::ops

namespace qforge::ops {

// log(sum exp(x[i])) of one row of logits (exp vectorised in f32, sums accumulated in f64 every 1024
// elements), and the index of the largest entry (first on ties).
double logsumexp_row(const float* x, int64_t n, int64_t* argmax);
// KL(P || Q) = sum_i p_i (log p_i - log q_i) for two rows of logits with their logsumexps.
double kl_row(const float* p_logits, double p_lse, const float* q_logits, double q_lse, int64_t n);
// Scalar double references of the two, for tests.
double logsumexp_row_ref(const float* x, int64_t n, int64_t* argmax);
double kl_row_ref(const float* p_logits, double p_lse, const float* q_logits, double q_lse, int64_t n);

}  // namespace qforge::ops
