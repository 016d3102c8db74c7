// LlamaLayerDevice (llama_layer_cuda.h): buffers, the cuBLAS GEMMs and the order of the layer's steps; the
// element-wise kernels are in llama_layer_kernels.cu.
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/gptq_common.cuh"  // DeviceBuffer, the CUDA / cuBLAS status checks, select_device
#include "kernels/cuda/llama_layer_cuda.h"
#include "kernels/cuda/llama_layer_kernels.cuh"

namespace qforge::cuda {

using gptq_detail::DeviceBuffer;
using layer_detail::bf16;

const char* layer_gemm_name(LayerGemm g) {
  switch (g) {
    case LayerGemm::kF32:
      return "f32";
    case LayerGemm::kTF32:
      return "tf32";
    case LayerGemm::kBF16:
      return "bf16";
  }
  return "?";
}

namespace {

std::string str(int64_t v) {
  return std::to_string(v);
}
std::string shape(int64_t a, int64_t b) {
  return "[" + str(a) + ", " + str(b) + "]";
}

// a * b * ... without int64 overflow, or false.
bool mul_ok(std::initializer_list<int64_t> f, int64_t* out) {
  int64_t p = 1;
  for (int64_t v : f)
    if (__builtin_mul_overflow(p, v, &p)) return false;
  *out = p;
  return true;
}

bool is_device_pointer(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

CudaStatus require_device(const void* p, const char* call, const char* what) {
  if (p && is_device_pointer(p)) return CudaStatus::ok();
  return CudaStatus::error(std::string(call) + ": " + what + (p ? " is not a device pointer" : " is null"));
}

// Profile buckets (LayerProfile's fields, in order).
enum Phase { kNorm, kQkv, kRope, kScores, kSoftmax, kPv, kMerge, kO, kGateUp, kSilu, kDown, kOther, kPhases };
constexpr int kMaxMarks = 32;

}  // namespace

struct LlamaLayerDevice::Impl {
  int device = -1;  // set once select_device succeeded
  std::string name;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;

  LlamaLayerDims d;
  LayerGemm mode = LayerGemm::kF32;
  int64_t windows = 0, L = 0, cw = 0;            // windows, seqlen, windows per chunk
  int64_t H = 0, I = 0, Q = 0, KV = 0, QKV = 0;  // QKV = q_dim + 2 kv_dim

  DeviceBuffer x;         // [windows * L, H] f32
  DeviceBuffer cos, sin;  // [L, hd/2] f32
  DeviceBuffer w_qkv, w_o, w_gu,
      w_down;  // f32 [QKV, H] (wq | wk | wv rows), [H, Q], [2I, H] (gate | up), [H, I]
  DeviceBuffer attn_norm, mlp_norm, b_qkv;        // [H], [H], [QKV] (attention_bias only)
  DeviceBuffer w16_qkv, w16_o, w16_gu, w16_down;  // kBF16: bf16 copies of the four above
  DeviceBuffer wscr16;  // kBF16: one candidate weight converted to bf16, [max part out * in]
  // Workspace, per chunk of R = cw * L rows:
  DeviceBuffer xn;     // [R, max(H, Q)] f32: normed x; later the attention output [R, Q]
  DeviceBuffer act16;  // kBF16: [R, max(H, Q, I)] bf16: the current GEMM input
  DeviceBuffer s1;     // [R, max(QKV, 2I)] f32: q|k|v GEMM output, then the head-major P V output; gate|up
  DeviceBuffer s2;     // [max(cw * n_heads * L * L, R * I)] f32: scores / P; silu(g) * u
  DeviceBuffer heads;  // [R, QKV] f32 or bf16: q [w, n_heads, L, hd], k and v [w, n_kv, L, hd]
  DeviceBuffer resid;  // [R, H] f32: the residual stream when the inputs are not updated
  // reserve_kept(): for every row, what a keep = true forward saw (LayerStart): the attention output [rows, Q],
  // the residual x + o_proj(attn) [rows, H], silu(g) * u [rows, I], all f32.
  DeviceBuffer keep_attn, keep_res, keep_h;
  DeviceBuffer lin16;  // kBF16 linear(): bf16 x rows, grown on demand
  bool weights_set = false;

  bool profiling = false;
  double phase_ms[kPhases] = {};
  cudaEvent_t events[kMaxMarks] = {};
  int mark_phase[kMaxMarks] = {};
  int n_marks = 0;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    for (cudaEvent_t& e : events)
      if (e) cudaEventDestroy(e);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

  // Every public entry: this device, and no stale non-sticky error left by someone else's failed call (a
  // launch check reads cudaGetLastError; a sticky error shows up again at the next call and is reported
  // there).
  CudaStatus enter() const {
    GPTQ_CUDA_CHECK(cudaSetDevice(device));
    cudaGetLastError();
    return CudaStatus::ok();
  }

  bool bf16_mode() const { return mode == LayerGemm::kBF16; }
  cudaDataType in_type() const { return bf16_mode() ? CUDA_R_16BF : CUDA_R_32F; }
  cublasComputeType_t compute() const {
    return mode == LayerGemm::kTF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }
  int64_t chunk_rows() const { return cw * L; }

  CudaStatus mark(int phase) {
    if (!profiling || n_marks >= kMaxMarks) return CudaStatus::ok();
    mark_phase[n_marks] = phase;
    GPTQ_CUDA_CHECK(cudaEventRecord(events[n_marks++], stream));
    return CudaStatus::ok();
  }
  CudaStatus flush_marks() {
    if (!profiling || n_marks == 0) return CudaStatus::ok();
    GPTQ_CUDA_CHECK(cudaEventSynchronize(events[n_marks - 1]));
    for (int i = 1; i < n_marks; ++i) {
      float ms = 0;
      GPTQ_CUDA_CHECK(cudaEventElapsedTime(&ms, events[i - 1], events[i]));
      phase_ms[mark_phase[i]] += ms;
    }
    n_marks = 0;
    return CudaStatus::ok();
  }

  // y[rows, N] (ld ldy) = a[rows, K] (ld lda) W[N, K]^T (ld ldw) + beta y, operands of in_type().
  CudaStatus gemm(const char* what, const void* a, int64_t lda, int64_t rows, int64_t K, const void* w,
                  int64_t ldw, int64_t N, float* y, int64_t ldy, float beta) {
    if (rows <= 0) return CudaStatus::ok();
    if (rows > INT_MAX || N > INT_MAX || K > INT_MAX)
      return CudaStatus::error(std::string("GEMM ") + what + ": " + shape(rows, K) + " x " + shape(N, K) +
                               "^T exceeds cuBLAS's int dimensions");
    const float one = 1.0f;
    const cublasStatus_t s =
        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(rows), int(K), &one, w, in_type(), int(ldw),
                     a, in_type(), int(lda), &beta, y, CUDA_R_32F, int(ldy), compute(), CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
      return CudaStatus::error(std::string("cublasGemmEx (") + what + ", " + layer_gemm_name(mode) + ": y" +
                               shape(rows, N) + " = x" + shape(rows, K) + " W" + shape(N, K) +
                               "^T): " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
    return CudaStatus::ok();
  }

  // The B operand of a GEMM: the layer's own weight (f32 `own` or its bf16 copy `own16`), or a candidate
  // (`cand`, device f32; converted into wscr16 for kBF16, which the caller must consume before the next
  // call).
  CudaStatus weight_operand(const float* cand, const float* own, const bf16* own16, int64_t N, int64_t K,
                            const void** op) {
    if (!bf16_mode()) {
      *op = cand ? cand : own;
      return CudaStatus::ok();
    }
    if (!cand) {
      *op = own16;
      return CudaStatus::ok();
    }
    GPTQ_TRY(layer_detail::launch_to_bf16(cand, N * K, wscr16.as<bf16>(), stream));
    *op = wscr16.as<bf16>();
    return CudaStatus::ok();
  }

  // y[rows, sum of parts' N] (ld = that sum) = a W^T for weights stacked by rows, each either the layer's own
  // (the slice of the fused `own`) or a candidate. One GEMM when no part is a candidate.
  CudaStatus fused_gemm(const char* what, const void* a, int64_t lda, int64_t rows, int64_t K,
                        std::initializer_list<std::pair<const float*, int64_t>> parts,
                        const DeviceBuffer& own, const DeviceBuffer& own16, float* y) {
    int64_t total = 0;
    bool any = false;
    for (const auto& p : parts) {
      total += p.second;
      any = any || p.first;
    }
    if (!any) {
      const void* w = bf16_mode() ? own16.ptr : own.ptr;
      return gemm(what, a, lda, rows, K, w, K, total, y, total, 0.0f);
    }
    int64_t off = 0;
    for (const auto& p : parts) {
      const void* w = nullptr;
      GPTQ_TRY(weight_operand(p.first, own.as<float>() + off * K,
                              bf16_mode() ? own16.as<bf16>() + off * K : nullptr, p.second, K, &w));
      GPTQ_TRY(gemm(what, a, lda, rows, K, w, K, p.second, y + off, total, 0.0f));
      off += p.second;
    }
    return CudaStatus::ok();
  }

  // The GEMM input for `rows` rows of device f32 x [rows, width]: x itself, or its bf16 copy in act16.
  CudaStatus activation(const float* x_rows, int64_t rows, int64_t width, const void** op) {
    if (!bf16_mode()) {
      *op = x_rows;
      return CudaStatus::ok();
    }
    GPTQ_TRY(layer_detail::launch_to_bf16(x_rows, rows * width, act16.as<bf16>(), stream));
    *op = act16.ptr;
    return CudaStatus::ok();
  }

  // From the GEMM input a [nw * L, H] (f32 or bf16 as in_type()): q|k|v, RoPE, causal attention; leaves the
  // attention output [nw * L, Q] f32 in xn (and its bf16 copy in act16).
  CudaStatus attention_core(const void* a, int64_t nw, const float* wq, const float* wk, const float* wv) {
    const int64_t R = nw * L, hd = d.head_dim, nh = d.n_heads, nkv = d.n_kv_heads, group = nh / nkv;
    GPTQ_TRY(fused_gemm("q|k|v projections", a, H, R, H, {{wq, Q}, {wk, KV}, {wv, KV}}, w_qkv, w16_qkv,
                        s1.as<float>()));
    GPTQ_TRY(mark(kQkv));
    const float* bias = d.attention_bias ? b_qkv.as<float>() : nullptr;
    void *qh, *kh, *vh;
    if (bf16_mode()) {
      bf16* q = heads.as<bf16>();
      GPTQ_TRY(layer_detail::launch_rope_split<bf16>(s1.as<float>(), bias, R, L, nh, nkv, hd, cos.as<float>(),
                                                     sin.as<float>(), q, q + R * Q, q + R * (Q + KV),
                                                     stream));
      qh = q, kh = q + R * Q, vh = q + R * (Q + KV);
    } else {
      float* q = heads.as<float>();
      GPTQ_TRY(layer_detail::launch_rope_split<float>(s1.as<float>(), bias, R, L, nh, nkv, hd,
                                                      cos.as<float>(), sin.as<float>(), q, q + R * Q,
                                                      q + R * (Q + KV), stream));
      qh = q, kh = q + R * Q, vh = q + R * (Q + KV);
    }
    GPTQ_TRY(mark(kRope));

    // Batch entry b = (window, kv head g): the `group` query heads of g stacked, [gL, hd] with gL = group *
    // L.
    const int64_t gL = group * L, batch = nw * nkv;
    const float scale = 1.0f / std::sqrt(float(hd)), one = 1.0f, zero = 0.0f;
    float* S = s2.as<float>();
    const std::string bshape = " (batch " + str(batch) + " = " + str(nw) + " windows x " + str(nkv) +
                               " kv heads, " + str(group) + " query heads each, L = " + str(L) +
                               ", hd = " + str(hd) + ", " + layer_gemm_name(mode) + ")";
    // S^T (column-major [L, gL]) = K (op T of column-major [hd, L]) x Q_stack^T (column-major [hd, gL]).
    cublasStatus_t st =
        cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(L), int(gL), int(hd), &scale, kh,
                                   in_type(), int(hd), L * hd, qh, in_type(), int(hd), gL * hd, &zero, S,
                                   CUDA_R_32F, int(L), gL * L, int(batch), compute(), CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      return CudaStatus::error("cublasGemmStridedBatchedEx (attention scores S = Q K^T" + bshape +
                               "): " + cublasGetStatusName(st) + " (" + cublasGetStatusString(st) + ")");
    GPTQ_TRY(mark(kScores));
    if (bf16_mode())
      GPTQ_TRY(layer_detail::launch_causal_softmax<true>(S, batch * gL, L, stream));
    else
      GPTQ_TRY(layer_detail::launch_causal_softmax<false>(S, batch * gL, L, stream));
    GPTQ_TRY(mark(kSoftmax));
    // ctx^T (column-major [hd, gL]) = V^T (column-major [hd, L]) x P^T (column-major [L, gL], ld pld);
    // ctx lands head-major [w, n_heads, L, hd] in s1.
    const int64_t pld = bf16_mode() ? 2 * L : L;
    st = cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, int(hd), int(gL), int(L), &one, vh,
                                    in_type(), int(hd), L * hd, S, in_type(), int(pld), gL * pld, &zero,
                                    s1.as<float>(), CUDA_R_32F, int(hd), gL * hd, int(batch), compute(),
                                    CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      return CudaStatus::error("cublasGemmStridedBatchedEx (attention output P V" + bshape +
                               "): " + cublasGetStatusName(st) + " (" + cublasGetStatusString(st) + ")");
    GPTQ_TRY(mark(kPv));
    GPTQ_TRY(layer_detail::launch_merge_heads(s1.as<float>(), nw, L, nh, hd, xn.as<float>(),
                                              bf16_mode() ? act16.as<bf16>() : nullptr, stream));
    return mark(kMerge);
  }

  // From the GEMM input a [rows, H]: gate|up GEMM and silu(g) * u, left in s2 [rows, I] f32 (and act16).
  CudaStatus gate_up_silu(const void* a, int64_t rows, const float* w_gate, const float* w_up) {
    GPTQ_TRY(fused_gemm("gate|up projections", a, H, rows, H, {{w_gate, I}, {w_up, I}}, w_gu, w16_gu,
                        s1.as<float>()));
    GPTQ_TRY(mark(kGateUp));
    GPTQ_TRY(layer_detail::launch_silu_mul(s1.as<float>(), rows, I, s2.as<float>(),
                                           bf16_mode() ? act16.as<bf16>() : nullptr, stream));
    return mark(kSilu);
  }

  CudaStatus o_proj(int64_t rows, const float* wo, float* y, float beta) {
    const void* w = nullptr;
    GPTQ_TRY(weight_operand(wo, w_o.as<float>(), w16_o.as<bf16>(), H, Q, &w));
    GPTQ_TRY(gemm("o_proj", bf16_mode() ? act16.ptr : xn.ptr, Q, rows, Q, w, Q, H, y, H, beta));
    return mark(kO);
  }
  CudaStatus down_proj(int64_t rows, const float* wd, float* y, float beta) {
    const void* w = nullptr;
    GPTQ_TRY(weight_operand(wd, w_down.as<float>(), w16_down.as<bf16>(), H, I, &w));
    GPTQ_TRY(gemm("down_proj", bf16_mode() ? act16.ptr : s2.ptr, I, rows, I, w, I, H, y, H, beta));
    return mark(kDown);
  }

  CudaStatus norm(const float* x_rows, int64_t rows, const DeviceBuffer& gamma) {
    GPTQ_TRY(layer_detail::launch_rms_norm(x_rows, rows, H, gamma.as<float>(), d.rms_eps, xn.as<float>(),
                                           bf16_mode() ? act16.as<bf16>() : nullptr, stream));
    return mark(kNorm);
  }

  CudaStatus run_chunk(const Hook& hook, int64_t w0, int64_t nw, int stop_after, bool update, LayerStart start,
                       bool keep) {
    const int64_t R = nw * L, row0 = w0 * L;
    float* xc = x.as<float>() + row0 * H;
    float* res = update ? xc : resid.as<float>();
    auto call = [&](LayerSlot slot, const float* p, int64_t width) -> CudaStatus {
      if (!hook) return CudaStatus::ok();
      GPTQ_TRY(hook(slot, p, row0, R, width));
      return mark(kOther);
    };
    auto copy = [&](void* dst, const void* src, int64_t floats) -> CudaStatus {
      GPTQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(floats) * 4, cudaMemcpyDeviceToDevice, stream));
      return CudaStatus::ok();
    };
    GPTQ_TRY(mark(kOther));
    if (start == LayerStart::kInput) {
      GPTQ_TRY(norm(xc, R, attn_norm));
      GPTQ_TRY(call(LayerSlot::kQKV, xn.as<float>(), H));
      if (stop_after == int(LayerSlot::kQKV)) return CudaStatus::ok();
      GPTQ_TRY(attention_core(bf16_mode() ? act16.ptr : xn.ptr, nw, nullptr, nullptr, nullptr));
      if (keep) GPTQ_TRY(copy(keep_attn.as<float>() + row0 * Q, xn.ptr, R * Q));
      GPTQ_TRY(call(LayerSlot::kO, xn.as<float>(), Q));
      if (stop_after == int(LayerSlot::kO)) return CudaStatus::ok();
    } else if (start == LayerStart::kAttentionKept) {
      GPTQ_TRY(copy(xn.ptr, keep_attn.as<float>() + row0 * Q, R * Q));
      if (bf16_mode()) GPTQ_TRY(layer_detail::launch_to_bf16(xn.as<float>(), R * Q, act16.as<bf16>(), stream));
    }
    if (start == LayerStart::kInput || start == LayerStart::kAttentionKept) {
      if (!update) GPTQ_TRY(copy(res, xc, R * H));
      GPTQ_TRY(o_proj(R, nullptr, res, 1.0f));  // res = x + o_proj(attn)
      if (keep) GPTQ_TRY(copy(keep_res.as<float>() + row0 * H, res, R * H));
    } else {
      GPTQ_TRY(copy(res, keep_res.as<float>() + row0 * H, R * H));
    }
    if (start != LayerStart::kDownKept) {
      GPTQ_TRY(norm(res, R, mlp_norm));
      GPTQ_TRY(call(LayerSlot::kGateUp, xn.as<float>(), H));
      if (stop_after == int(LayerSlot::kGateUp)) return CudaStatus::ok();
      GPTQ_TRY(gate_up_silu(bf16_mode() ? act16.ptr : xn.ptr, R, nullptr, nullptr));
      if (keep) GPTQ_TRY(copy(keep_h.as<float>() + row0 * I, s2.ptr, R * I));
      GPTQ_TRY(call(LayerSlot::kDown, s2.as<float>(), I));
      if (stop_after == int(LayerSlot::kDown)) return CudaStatus::ok();
    } else {
      GPTQ_TRY(copy(s2.ptr, keep_h.as<float>() + row0 * I, R * I));
      if (bf16_mode()) GPTQ_TRY(layer_detail::launch_to_bf16(s2.as<float>(), R * I, act16.as<bf16>(), stream));
    }
    return down_proj(R, nullptr, res, 1.0f);  // res += down(silu(g) * u)
  }

  // Workspace bytes for chunks of `n` windows, or -1 on overflow.
  int64_t workspace_bytes(int64_t n) const {
    const int64_t e16 = bf16_mode() ? 2 : 4;
    int64_t R, a, b, c, s, sc, h, r, total = 0;
    if (!mul_ok({n, L}, &R)) return -1;
    if (!mul_ok({R, std::max(H, Q), 4}, &a)) return -1;
    if (!mul_ok({R, std::max(QKV, 2 * I), 4}, &b)) return -1;
    if (!mul_ok({n, d.n_heads, L, L, 4}, &sc) || !mul_ok({R, I, 4}, &s)) return -1;
    if (!mul_ok({R, QKV, e16}, &h) || !mul_ok({R, H, 4}, &r)) return -1;
    if (!mul_ok({R, std::max({H, Q, I}), 2}, &c)) return -1;
    for (int64_t v : {a, b, std::max(s, sc), h, r, bf16_mode() ? c : int64_t(0)})
      if (__builtin_add_overflow(total, v, &total)) return -1;
    return total;
  }

  CudaStatus allocate(int64_t n_chunk) {
    const int64_t e16 = bf16_mode() ? 2 : 4, R = n_chunk * L;
    int64_t xbytes = 0;
    if (!mul_ok({windows, L, H, 4}, &xbytes))
      return CudaStatus::error("the layer inputs x [" + str(windows) + " windows * " + str(L) + " tokens, " +
                               str(H) + "] f32 overflow a 64-bit byte count");
    GPTQ_TRY(x.ensure(xbytes, ("the layer inputs x [" + str(windows * L) + ", " + str(H) + "] f32").c_str()));
    GPTQ_CUDA_CHECK(cudaMemsetAsync(x.ptr, 0, size_t(xbytes), stream));
    const int64_t half = d.head_dim / 2;
    GPTQ_TRY(cos.ensure(L * half * 4, "the RoPE cos table [seqlen, head_dim/2] f32"));
    GPTQ_TRY(sin.ensure(L * half * 4, "the RoPE sin table [seqlen, head_dim/2] f32"));
    GPTQ_TRY(w_qkv.ensure(QKV * H * 4, "the q|k|v weights [q_dim + 2 kv_dim, H] f32"));
    GPTQ_TRY(w_o.ensure(H * Q * 4, "the o_proj weight [H, q_dim] f32"));
    GPTQ_TRY(w_gu.ensure(2 * I * H * 4, "the gate|up weights [2 I, H] f32"));
    GPTQ_TRY(w_down.ensure(H * I * 4, "the down_proj weight [H, I] f32"));
    GPTQ_TRY(attn_norm.ensure(H * 4, "the attention norm [H] f32"));
    GPTQ_TRY(mlp_norm.ensure(H * 4, "the MLP norm [H] f32"));
    if (d.attention_bias) GPTQ_TRY(b_qkv.ensure(QKV * 4, "the q|k|v biases [q_dim + 2 kv_dim] f32"));
    if (bf16_mode()) {
      GPTQ_TRY(w16_qkv.ensure(QKV * H * 2, "the q|k|v weights [q_dim + 2 kv_dim, H] bf16"));
      GPTQ_TRY(w16_o.ensure(H * Q * 2, "the o_proj weight [H, q_dim] bf16"));
      GPTQ_TRY(w16_gu.ensure(2 * I * H * 2, "the gate|up weights [2 I, H] bf16"));
      GPTQ_TRY(w16_down.ensure(H * I * 2, "the down_proj weight [H, I] bf16"));
      GPTQ_TRY(wscr16.ensure(std::max({Q, KV, I, H}) * std::max({H, Q, I}) * 2,
                             "one candidate weight converted to bf16"));
      GPTQ_TRY(act16.ensure(R * std::max({H, Q, I}) * 2,
                            ("the bf16 GEMM inputs of a chunk [" + str(R) + ", max(H, q_dim, I)]").c_str()));
    }
    GPTQ_TRY(xn.ensure(
        R * std::max(H, Q) * 4,
        ("the normed x / attention output of a chunk [" + str(R) + ", max(H, q_dim)] f32").c_str()));
    GPTQ_TRY(s1.ensure(R * std::max(QKV, 2 * I) * 4, ("the q|k|v and gate|up GEMM outputs of a chunk [" +
                                                      str(R) + ", max(q_dim + 2 kv_dim, 2 I)] f32")
                                                         .c_str()));
    GPTQ_TRY(s2.ensure(std::max(n_chunk * d.n_heads * L * L, R * I) * 4,
                       ("the attention scores of a chunk [" + str(n_chunk) + " windows, " + str(d.n_heads) +
                        " heads, " + str(L) + ", " + str(L) + "] f32")
                           .c_str()));
    GPTQ_TRY(heads.ensure(R * QKV * e16, ("q, k, v of a chunk in head-major layout [" + str(R) + ", " +
                                          str(QKV) + "] " + (bf16_mode() ? "bf16" : "f32"))
                                             .c_str()));
    GPTQ_TRY(resid.ensure(R * H * 4,
                          ("the residual stream of a chunk [" + str(R) + ", " + str(H) + "] f32").c_str()));
    return CudaStatus::ok();
  }
};

LlamaLayerDevice::LlamaLayerDevice() : impl_(std::make_unique<Impl>()) {}
LlamaLayerDevice::~LlamaLayerDevice() {
  if (impl_ && impl_->device >= 0) cudaSetDevice(impl_->device);
}

CudaStatus LlamaLayerDevice::create(int device, const LlamaLayerDims& dims, LayerGemm gemm, int64_t windows,
                                    int64_t seqlen, const float* rope_cos, const float* rope_sin,
                                    std::unique_ptr<LlamaLayerDevice>* dst, int64_t chunk_windows) {
  const LlamaLayerDims& D = dims;
  const std::string what = "LlamaLayerDevice: hidden " + str(D.hidden) + ", intermediate " +
                           str(D.intermediate) + ", " + str(D.n_heads) + " heads, " + str(D.n_kv_heads) +
                           " kv heads, head_dim " + str(D.head_dim);
  constexpr int64_t kMaxWidth = int64_t(1) << 24;  // keeps every per-row product well inside int64 and int
  if (D.hidden <= 0 || D.intermediate <= 0 || D.n_heads <= 0 || D.n_kv_heads <= 0 || D.head_dim <= 0 ||
      D.head_dim % 2 != 0 || D.n_heads % D.n_kv_heads != 0 || D.hidden > kMaxWidth ||
      D.intermediate > kMaxWidth || D.n_heads * D.head_dim > kMaxWidth || !(D.rms_eps >= 0.0f))
    return CudaStatus::error(
        what +
        ": invalid dimensions (all positive, head_dim even, n_kv_heads dividing n_heads, "
        "widths <= 2^24)");
  if (windows <= 0 || seqlen <= 0 || seqlen > kMaxWidth || chunk_windows < 0)
    return CudaStatus::error(what + ": invalid " + str(windows) + " windows x " + str(seqlen) +
                             " tokens (chunk " + str(chunk_windows) + ")");
  if (!rope_cos || !rope_sin) return CudaStatus::error(what + ": the RoPE tables are null");

  std::unique_ptr<LlamaLayerDevice> dev(new LlamaLayerDevice());
  Impl& m = *dev->impl_;
  m.d = dims;
  m.mode = gemm;
  m.windows = windows;
  m.L = seqlen;
  m.H = D.hidden;
  m.I = D.intermediate;
  m.Q = D.q_dim();
  m.KV = D.kv_dim();
  m.QKV = m.Q + 2 * m.KV;
  GPTQ_TRY(gptq_detail::select_device(device, &m.name));
  m.device = device;
  cudaGetLastError();
  GPTQ_TRY(layer_detail::prepare_causal_softmax(device, seqlen));
  GPTQ_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  GPTQ_CUBLAS_CHECK(cublasCreate(&m.blas));
  GPTQ_CUBLAS_CHECK(cublasSetStream(m.blas, m.stream));
  // The compute type of each call says TF32 or not; the default math mode adds nothing to it.
  GPTQ_CUBLAS_CHECK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));

  int64_t cw = chunk_windows;
  if (cw == 0) {
    cw = std::min(windows, std::max<int64_t>(1, kLayerChunkRows / seqlen));
    while (cw > 1 && (m.workspace_bytes(cw) < 0 || m.workspace_bytes(cw) > kLayerWorkspaceBudget)) --cw;
  }
  cw = std::min(cw, windows);
  if (m.workspace_bytes(cw) < 0 || cw * seqlen > INT_MAX)
    return CudaStatus::error(what + ": a chunk of " + str(cw) + " windows x " + str(seqlen) +
                             " tokens is too large to address");
  m.cw = cw;
  if (const CudaStatus st = m.allocate(cw); !st) return CudaStatus::error(what + ": " + st.message());
  const int64_t half_bytes = seqlen * (D.head_dim / 2) * 4;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.cos.ptr, rope_cos, size_t(half_bytes), cudaMemcpyHostToDevice, m.stream));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.sin.ptr, rope_sin, size_t(half_bytes), cudaMemcpyHostToDevice, m.stream));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  *dst = std::move(dev);
  return CudaStatus::ok();
}

CudaStatus LlamaLayerDevice::set_inputs(const float* x_host) {
  Impl& m = *impl_;
  if (!x_host) return CudaStatus::error("set_inputs: x is null");
  GPTQ_TRY(m.enter());
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.x.ptr, x_host, size_t(m.x.bytes), cudaMemcpyHostToDevice, m.stream));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return CudaStatus::ok();
}

CudaStatus LlamaLayerDevice::get_inputs(float* x_host) const {
  const Impl& m = *impl_;
  if (!x_host) return CudaStatus::error("get_inputs: x is null");
  GPTQ_TRY(m.enter());
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(x_host, m.x.ptr, size_t(m.x.bytes), cudaMemcpyDeviceToHost, m.stream));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return CudaStatus::ok();
}

float* LlamaLayerDevice::inputs_dev() const {
  return impl_->x.as<float>();
}

CudaStatus LlamaLayerDevice::set_weights(const LayerWeightsHost& w) {
  Impl& m = *impl_;
  const int64_t H = m.H, I = m.I, Q = m.Q, KV = m.KV;
  struct Part {
    const float* src;
    const char* name;
    DeviceBuffer* dst;
    int64_t offset, count;  // floats
  };
  const std::vector<Part> parts = {
      {w.attn_norm, "attn_norm [H]", &m.attn_norm, 0, H},
      {w.wq, "wq [q_dim, H]", &m.w_qkv, 0, Q * H},
      {w.wk, "wk [kv_dim, H]", &m.w_qkv, Q * H, KV * H},
      {w.wv, "wv [kv_dim, H]", &m.w_qkv, (Q + KV) * H, KV * H},
      {w.wo, "wo [H, q_dim]", &m.w_o, 0, H * Q},
      {w.mlp_norm, "mlp_norm [H]", &m.mlp_norm, 0, H},
      {w.w_gate, "w_gate [I, H]", &m.w_gu, 0, I * H},
      {w.w_up, "w_up [I, H]", &m.w_gu, I * H, I * H},
      {w.w_down, "w_down [H, I]", &m.w_down, 0, H * I},
  };
  for (const Part& p : parts)
    if (!p.src) return CudaStatus::error(std::string("set_weights: ") + p.name + " is null");
  const bool any_bias = w.bq || w.bk || w.bv;
  if (m.d.attention_bias && !(w.bq && w.bk && w.bv))
    return CudaStatus::error("set_weights: attention_bias is on but bq, bk or bv is null");
  if (!m.d.attention_bias && any_bias)
    return CudaStatus::error("set_weights: q/k/v biases given but attention_bias is off");
  GPTQ_TRY(m.enter());
  m.weights_set = false;
  // cudaMemcpyDefault: the direction from the pointers (unified addressing), host or device sources alike.
  for (const Part& p : parts)
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(p.dst->as<float>() + p.offset, p.src, size_t(p.count) * 4, cudaMemcpyDefault,
                                    m.stream));
  if (m.d.attention_bias) {
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.b_qkv.as<float>(), w.bq, size_t(Q) * 4, cudaMemcpyDefault, m.stream));
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.b_qkv.as<float>() + Q, w.bk, size_t(KV) * 4, cudaMemcpyDefault, m.stream));
    GPTQ_CUDA_CHECK(
        cudaMemcpyAsync(m.b_qkv.as<float>() + Q + KV, w.bv, size_t(KV) * 4, cudaMemcpyDefault, m.stream));
  }
  if (m.bf16_mode()) {
    GPTQ_TRY(layer_detail::launch_to_bf16(m.w_qkv.as<float>(), m.QKV * H, m.w16_qkv.as<bf16>(), m.stream));
    GPTQ_TRY(layer_detail::launch_to_bf16(m.w_o.as<float>(), H * Q, m.w16_o.as<bf16>(), m.stream));
    GPTQ_TRY(layer_detail::launch_to_bf16(m.w_gu.as<float>(), 2 * I * H, m.w16_gu.as<bf16>(), m.stream));
    GPTQ_TRY(layer_detail::launch_to_bf16(m.w_down.as<float>(), H * I, m.w16_down.as<bf16>(), m.stream));
  }
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  m.weights_set = true;
  return CudaStatus::ok();
}

const float* LlamaLayerDevice::linear_dev(int which) const {
  const Impl& m = *impl_;
  if (!m.weights_set) return nullptr;
  const int64_t H = m.H, I = m.I, Q = m.Q, KV = m.KV;
  switch (which) {
    case 0: return m.w_qkv.as<float>();
    case 1: return m.w_qkv.as<float>() + Q * H;
    case 2: return m.w_qkv.as<float>() + (Q + KV) * H;
    case 3: return m.w_o.as<float>();
    case 4: return m.w_gu.as<float>();
    case 5: return m.w_gu.as<float>() + I * H;
    case 6: return m.w_down.as<float>();
    default: return nullptr;
  }
}

CudaStatus LlamaLayerDevice::update_linears(LayerSlot slot, const LayerWeightsHost& w) {
  Impl& m = *impl_;
  if (!m.weights_set) return CudaStatus::error("update_linears: set_weights was not called");
  const int64_t H = m.H, I = m.I, Q = m.Q, KV = m.KV;
  struct Part {
    const float* src;
    const char* name;
    DeviceBuffer* dst;
    int64_t offset, count;  // floats
  };
  std::vector<Part> parts;
  DeviceBuffer* f32 = nullptr;
  DeviceBuffer* b16 = nullptr;
  int64_t n = 0;
  switch (slot) {
    case LayerSlot::kQKV:
      parts = {{w.wq, "wq [q_dim, H]", &m.w_qkv, 0, Q * H},
               {w.wk, "wk [kv_dim, H]", &m.w_qkv, Q * H, KV * H},
               {w.wv, "wv [kv_dim, H]", &m.w_qkv, (Q + KV) * H, KV * H}};
      f32 = &m.w_qkv, b16 = &m.w16_qkv, n = m.QKV * H;
      break;
    case LayerSlot::kO:
      parts = {{w.wo, "wo [H, q_dim]", &m.w_o, 0, H * Q}};
      f32 = &m.w_o, b16 = &m.w16_o, n = H * Q;
      break;
    case LayerSlot::kGateUp:
      parts = {{w.w_gate, "w_gate [I, H]", &m.w_gu, 0, I * H}, {w.w_up, "w_up [I, H]", &m.w_gu, I * H, I * H}};
      f32 = &m.w_gu, b16 = &m.w16_gu, n = 2 * I * H;
      break;
    case LayerSlot::kDown:
      parts = {{w.w_down, "w_down [H, I]", &m.w_down, 0, H * I}};
      f32 = &m.w_down, b16 = &m.w16_down, n = H * I;
      break;
  }
  for (const Part& p : parts)
    if (!p.src) return CudaStatus::error(std::string("update_linears: ") + p.name + " is null");
  GPTQ_TRY(m.enter());
  for (const Part& p : parts)
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(p.dst->as<float>() + p.offset, p.src, size_t(p.count) * 4,
                                    cudaMemcpyHostToDevice, m.stream));
  if (m.bf16_mode()) GPTQ_TRY(layer_detail::launch_to_bf16(f32->as<float>(), n, b16->as<bf16>(), m.stream));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return CudaStatus::ok();
}

CudaStatus LlamaLayerDevice::reserve_kept() {
  Impl& m = *impl_;
  GPTQ_TRY(m.enter());
  const int64_t rows = m.windows * m.L;
  GPTQ_TRY(m.keep_attn.ensure(rows * m.Q * 4, "the kept attention outputs [rows, q_dim] f32"));
  if (const CudaStatus st = m.keep_res.ensure(rows * m.H * 4, "the kept residual stream x + o_proj [rows, H] f32");
      !st) {
    m.keep_attn.release();
    return st;
  }
  const CudaStatus st = m.keep_h.ensure(rows * m.I * 4, "the kept MLP products silu(g) * u [rows, I] f32");
  if (!st) {
    m.keep_attn.release();
    m.keep_res.release();
  }
  return st;
}

void LlamaLayerDevice::release_kept() {
  Impl& m = *impl_;
  (void)m.enter();
  m.keep_attn.release();
  m.keep_res.release();
  m.keep_h.release();
}

CudaStatus LlamaLayerDevice::forward(const Hook& hook, int stop_after, bool update_inputs, LayerStart start,
                                     bool keep) {
  Impl& m = *impl_;
  if (stop_after < -1 || stop_after > int(LayerSlot::kDown))
    return CudaStatus::error("forward: stop_after " + str(stop_after) + " is not -1 or a LayerSlot");
  if (stop_after >= 0 && update_inputs)
    return CudaStatus::error("forward: update_inputs needs the whole layer, but stop_after is set");
  if (!m.weights_set) return CudaStatus::error("forward: set_weights was not called");
  // A start after the input reads what a keep = true forward kept; the slots before the start cannot be hooked.
  const int first_slot = start == LayerStart::kInput ? 0 : start == LayerStart::kAttentionKept ? 1
                       : start == LayerStart::kResidualKept ? 2 : 4;
  if (start != LayerStart::kInput && !m.keep_attn.ptr)
    return CudaStatus::error("forward: a start after the input needs reserve_kept() and a keep = true forward");
  if (stop_after >= 0 && stop_after < first_slot)
    return CudaStatus::error("forward: stop_after " + str(stop_after) + " comes before the start");
  if (keep && !m.keep_attn.ptr) return CudaStatus::error("forward: keep = true needs reserve_kept()");
  GPTQ_TRY(m.enter());
  for (int64_t w0 = 0; w0 < m.windows; w0 += m.cw) {
    const int64_t nw = std::min(m.cw, m.windows - w0);
    const CudaStatus run = m.run_chunk(hook, w0, nw, stop_after, update_inputs, start, keep);
    const CudaStatus st = run ? m.flush_marks() : run;
    if (!st) {
      m.n_marks = 0;
      return CudaStatus::error("forward, windows " + str(w0) + ".." + str(w0 + nw - 1) + " of " +
                               str(m.windows) + ": " + st.message());
    }
  }
  return CudaStatus::ok();
}

CudaStatus LlamaLayerDevice::attention_module(const float* xn_dev, int64_t windows_used, const float* wq,
                                              const float* wk, const float* wv, const float* wo,
                                              float* out_dev) {
  Impl& m = *impl_;
  const char* call = "attention_module";
  if (windows_used <= 0)
    return CudaStatus::error("attention_module: windows_used " + str(windows_used) + " <= 0");
  if (!m.weights_set) return CudaStatus::error("attention_module: set_weights was not called");
  GPTQ_TRY(m.enter());
  GPTQ_TRY(require_device(xn_dev, call, "xn"));
  GPTQ_TRY(require_device(out_dev, call, "out"));
  for (const float* p : {wq, wk, wv, wo})
    if (p) GPTQ_TRY(require_device(p, call, "a candidate weight"));
  for (int64_t w0 = 0; w0 < windows_used; w0 += m.cw) {
    const int64_t nw = std::min(m.cw, windows_used - w0), R = nw * m.L, row0 = w0 * m.L;
    const void* a = nullptr;
    GPTQ_TRY(m.activation(xn_dev + row0 * m.H, R, m.H, &a));
    GPTQ_TRY(m.attention_core(a, nw, wq, wk, wv));
    GPTQ_TRY(m.o_proj(R, wo, out_dev + row0 * m.H, 0.0f));
  }
  m.n_marks = 0;
  return CudaStatus::ok();
}

CudaStatus LlamaLayerDevice::mlp_module(const float* xn_dev, int64_t rows, const float* w_gate,
                                        const float* w_up, const float* w_down, float* out_dev) {
  Impl& m = *impl_;
  const char* call = "mlp_module";
  if (rows <= 0) return CudaStatus::error("mlp_module: rows " + str(rows) + " <= 0");
  if (!m.weights_set) return CudaStatus::error("mlp_module: set_weights was not called");
  GPTQ_TRY(m.enter());
  GPTQ_TRY(require_device(xn_dev, call, "xn"));
  GPTQ_TRY(require_device(out_dev, call, "out"));
  for (const float* p : {w_gate, w_up, w_down})
    if (p) GPTQ_TRY(require_device(p, call, "a candidate weight"));
  const int64_t step = m.chunk_rows();
  for (int64_t r0 = 0; r0 < rows; r0 += step) {
    const int64_t R = std::min(step, rows - r0);
    const void* a = nullptr;
    GPTQ_TRY(m.activation(xn_dev + r0 * m.H, R, m.H, &a));
    GPTQ_TRY(m.gate_up_silu(a, R, w_gate, w_up));
    GPTQ_TRY(m.down_proj(R, w_down, out_dev + r0 * m.H, 0.0f));
  }
  m.n_marks = 0;
  return CudaStatus::ok();
}

CudaStatus LlamaLayerDevice::linear(const float* x_dev, int64_t rows, int64_t K, const float* w_dev,
                                    int64_t N, float* y_dev) {
  Impl& m = *impl_;
  const char* call = "linear";
  if (rows <= 0 || K <= 0 || N <= 0 || K > INT_MAX || N > INT_MAX)
    return CudaStatus::error("linear: invalid shape x" + shape(rows, K) + " W" + shape(N, K));
  GPTQ_TRY(m.enter());
  GPTQ_TRY(require_device(x_dev, call, "x"));
  GPTQ_TRY(require_device(w_dev, call, "W"));
  GPTQ_TRY(require_device(y_dev, call, "y"));
  const int64_t step = std::min<int64_t>(std::max<int64_t>(m.chunk_rows(), 1), INT_MAX);
  const void* w = w_dev;
  if (m.bf16_mode()) {
    int64_t wbytes = 0, xbytes = 0;
    if (!mul_ok({N, K, 2}, &wbytes) || !mul_ok({std::min(rows, step), K, 2}, &xbytes))
      return CudaStatus::error("linear: x" + shape(rows, K) + " W" + shape(N, K) + " overflow a byte count");
    GPTQ_TRY(m.lin16.ensure(wbytes + xbytes, ("linear(): bf16 copies of W" + shape(N, K) + " and of " +
                                              str(std::min(rows, step)) + " rows of x")
                                                 .c_str()));
    GPTQ_TRY(layer_detail::launch_to_bf16(w_dev, N * K, m.lin16.as<bf16>(), m.stream));
    w = m.lin16.as<bf16>();
  }
  for (int64_t r0 = 0; r0 < rows; r0 += step) {
    const int64_t R = std::min(step, rows - r0);
    const void* a = x_dev + r0 * K;
    if (m.bf16_mode()) {
      bf16* xa = m.lin16.as<bf16>() + N * K;
      GPTQ_TRY(layer_detail::launch_to_bf16(x_dev + r0 * K, R * K, xa, m.stream));
      a = xa;
    }
    GPTQ_TRY(m.gemm("linear", a, K, R, K, w, K, N, y_dev + r0 * N, N, 0.0f));
  }
  return CudaStatus::ok();
}

void* LlamaLayerDevice::stream() const {
  return impl_->stream;
}

int64_t LlamaLayerDevice::bytes() const {
  const Impl& m = *impl_;
  int64_t b = 0;
  for (const DeviceBuffer* p :
       {&m.x,        &m.cos,   &m.sin,     &m.w_qkv, &m.w_o,    &m.w_gu,     &m.w_down, &m.attn_norm,
        &m.mlp_norm, &m.b_qkv, &m.w16_qkv, &m.w16_o, &m.w16_gu, &m.w16_down, &m.wscr16, &m.xn,
        &m.act16,    &m.s1,    &m.s2,      &m.heads, &m.resid,  &m.lin16})
    b += p->bytes;
  return b;
}

int64_t LlamaLayerDevice::chunk_windows() const {
  return impl_->cw;
}
const LlamaLayerDims& LlamaLayerDevice::dims() const {
  return impl_->d;
}
LayerGemm LlamaLayerDevice::gemm() const {
  return impl_->mode;
}
const char* LlamaLayerDevice::device_name() const {
  return impl_->name.c_str();
}

void LlamaLayerDevice::set_profiling(bool on) {
  Impl& m = *impl_;
  if (on && !m.events[0]) {
    cudaSetDevice(m.device);
    for (cudaEvent_t& e : m.events)
      if (cudaEventCreate(&e) != cudaSuccess) {
        cudaGetLastError();
        return;  // profiling stays off: no events
      }
  }
  m.profiling = on;
  m.n_marks = 0;
}

LayerProfile LlamaLayerDevice::profile() const {
  const double* t = impl_->phase_ms;
  LayerProfile p;
  p.norm_ms = t[kNorm];
  p.qkv_ms = t[kQkv];
  p.rope_ms = t[kRope];
  p.scores_ms = t[kScores];
  p.softmax_ms = t[kSoftmax];
  p.pv_ms = t[kPv];
  p.merge_ms = t[kMerge];
  p.o_ms = t[kO];
  p.gate_up_ms = t[kGateUp];
  p.silu_ms = t[kSilu];
  p.down_ms = t[kDown];
  p.other_ms = t[kOther];
  return p;
}

void LlamaLayerDevice::reset_profile() {
  for (double& v : impl_->phase_ms) v = 0;
}

}  // namespace qforge::cuda
