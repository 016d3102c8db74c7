// One Llama decoder layer on a CUDA GPU, for the layer-by-layer quantization pipeline: the same computation
// as LlamaModel::decoder_layer (src/model/llama.cpp) over `windows` calibration windows of `seqlen` tokens
// each (positions 0..seqlen-1 in every window), with the inputs of every linear slot handed to a hook.
//
//   x -> rms_norm -> [hook kQKV] -> q/k/v linears (+ biases) -> RoPE (rotate_half) -> causal GQA attention
//     -> [hook kO] -> o_proj -> + x -> rms_norm -> [hook kGateUp] -> gate/up -> silu(gate) * up -> [hook
//     kDown]
//     -> down -> + residual
//
// Plain host C++ (no CUDA headers; streams travel as void*, a cudaStream_t). Errors come back as CudaStatus
// (w4a16.h) naming the call, the shape and the CUDA / cuBLAS error; device out-of-memory is an error that
// says how many bytes were wanted for what, never a crash.
//
// Precision (LayerGemm): every GEMM goes through cuBLAS with f32 accumulation and f32 outputs.
//   kF32  - f32 operands, plain SGEMM arithmetic (CUBLAS_COMPUTE_32F, no TF32): matches the CPU's OpenBLAS
//           path up to the summation order.
//   kTF32 - f32 storage, TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32): operands lose 13 mantissa bits
//           inside the product.
//   kBF16 - bf16 copies of the weights and of every GEMM input (normed x, attention output, silu(g)*u, and
//           in the attention q, k, v and the probabilities P), rounded to nearest; f32 accumulation.
// Whatever the mode, RMSNorm, RoPE, the softmax (scores are f32 GEMM outputs), silu*mul and the residual adds
// are f32 and follow the CPU's expressions (ops.cpp), and the hooks see f32 tensors.
//
// Work is done in chunks of whole windows: chunk_windows() windows at a time. Unless create() is given a
// chunk size, it is the largest count <= kLayerChunkRows / seqlen (at least 1) whose workspace stays within
// kLayerWorkspaceBudget; the workspace is allocated in create() (bytes() reports it, with the inputs and
// weights). Per window it holds: the normed x / attention output [L, max(H, q_dim)] f32, the q|k|v / gate|up
// GEMM output [L, max(q_dim + 2 kv_dim, 2 I)] f32, the scores [n_heads, L, L] f32 (also silu(g)*u [L, I]),
// q/k/v in head-major layout, the residual [L, H] f32 and, for kBF16, the bf16 GEMM inputs [L, max(H, q, I)].
// For Llama-2-7B widths and seqlen 2048 that is ~0.9 GB per window, dominated by the scores (512 MiB), so
// chunks of 8 windows; with 128 windows the device holds 11.9 GiB in kBF16 (inputs 4 GiB, weights 1.2 GB,
// workspace).
//
// Attention: per chunk, two strided-batched GEMMs over (window, kv head). The query heads that share a kv
// head (GQA, head h reads kv head h / (n_heads / n_kv_heads)) are stacked into one [group * L, head_dim]
// operand, so one batch entry computes S = Q_stack K^T * 1/sqrt(hd) [group * L, L], a kernel masks (causal)
// and softmaxes each row in f32 in place, and a second batch computes P V. The full L x L product is computed
// (the masked half is wasted work: simple, and the GEMMs run at tensor-core rate).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "kernels/cuda/w4a16.h"  // CudaStatus

namespace qforge::cuda {

enum class LayerGemm { kF32, kTF32, kBF16 };
const char* layer_gemm_name(LayerGemm g);  // "f32" | "tf32" | "bf16"

struct LlamaLayerDims {
  int64_t hidden = 0;        // H
  int64_t intermediate = 0;  // I
  int64_t n_heads = 0;       // query heads; q_dim = n_heads * head_dim
  int64_t n_kv_heads = 0;    // divides n_heads; kv_dim = n_kv_heads * head_dim
  int64_t head_dim = 0;      // even
  float rms_eps = 1e-5f;
  bool attention_bias = false;  // q/k/v biases (Qwen2)
  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
};

// The linear input slots, in the order of qforge::LinearInput (model/llama.h).
enum class LayerSlot { kQKV, kO, kGateUp, kDown };

// One layer's weights on the host, f32 row-major [out, in] as in LayerWeights (model/llama.h).
struct LayerWeightsHost {
  const float* attn_norm = nullptr;  // [H]
  const float* wq = nullptr;         // [q_dim, H]
  const float* wk = nullptr;         // [kv_dim, H]
  const float* wv = nullptr;         // [kv_dim, H]
  const float* wo = nullptr;         // [H, q_dim]
  const float* bq = nullptr;         // [q_dim]   attention_bias only, else null
  const float* bk = nullptr;         // [kv_dim]  attention_bias only, else null
  const float* bv = nullptr;         // [kv_dim]  attention_bias only, else null
  const float* mlp_norm = nullptr;   // [H]
  const float* w_gate = nullptr;     // [I, H]
  const float* w_up = nullptr;       // [I, H]
  const float* w_down = nullptr;     // [H, I]
};

// Target rows per chunk (GEMMs with M >= 16384 rows run at full rate) and the workspace cap used to pick the
// chunk size when create() is not given one.
inline constexpr int64_t kLayerChunkRows = 16384;
inline constexpr int64_t kLayerWorkspaceBudget = int64_t(8) << 30;

// Milliseconds spent per phase by forward() since the last reset (CUDA events; profiling only).
struct LayerProfile {
  double norm_ms = 0;     // both RMSNorms (with the bf16 copies)
  double qkv_ms = 0;      // q|k|v GEMM
  double rope_ms = 0;     // bias + RoPE + head-major split
  double scores_ms = 0;   // S = Q K^T (batched)
  double softmax_ms = 0;  // causal mask + softmax
  double pv_ms = 0;       // P V (batched)
  double merge_ms = 0;    // heads back to [rows, q_dim] (+ bf16 copy)
  double o_ms = 0;        // o_proj GEMM (+ residual, fused as beta = 1)
  double gate_up_ms = 0;  // gate|up GEMM
  double silu_ms = 0;     // silu(g) * u (+ bf16 copy)
  double down_ms = 0;     // down GEMM (+ residual)
  double other_ms = 0;    // residual copies, hooks' own work on the stream
  double gemm_ms() const { return qkv_ms + o_ms + gate_up_ms + down_ms; }
  double attention_ms() const { return rope_ms + scores_ms + softmax_ms + pv_ms + merge_ms; }
  double total_ms() const { return norm_ms + gemm_ms() + attention_ms() + silu_ms + other_ms; }
};

class LlamaLayerDevice {
 public:
  // windows x seqlen tokens; rope_cos / rope_sin [seqlen, head_dim / 2] host tables for positions 0..seqlen-1
  // (LlamaModel::rope_tables(0, seqlen, ...)). chunk_windows: windows per chunk, 0 = chosen as above.
  // Allocates the inputs, the weights and the workspace; uploads the tables.
  static CudaStatus create(int device, const LlamaLayerDims& dims, LayerGemm gemm, int64_t windows,
                           int64_t seqlen, const float* rope_cos, const float* rope_sin,
                           std::unique_ptr<LlamaLayerDevice>* dst, int64_t chunk_windows = 0);
  ~LlamaLayerDevice();
  LlamaLayerDevice(const LlamaLayerDevice&) = delete;
  LlamaLayerDevice& operator=(const LlamaLayerDevice&) = delete;

  CudaStatus set_inputs(const float* x_host);         // [windows * seqlen, H] f32
  CudaStatus get_inputs(float* x_host) const;         // [windows * seqlen, H] f32
  float* inputs_dev() const;                          // [windows * seqlen, H] f32 device, on stream()
  // Copies (again) the whole layer in (bf16 copies too). The pointers may be host memory (pinned for speed) or
  // device memory of this GPU (a layer uploaded ahead on another stream: a device-to-device copy).
  CudaStatus set_weights(const LayerWeightsHost& w);
  // Uploads again only the linears that read `slot` (q/k/v, o, gate/up or down; their bf16 copies too), after
  // set_weights: what GPTQ changed when it quantized that slot. The other pointers of w are not read.
  CudaStatus update_linears(LayerSlot slot, const LayerWeightsHost& w);

  // Runs the layer over all windows, chunk by chunk. For every chunk, in slot order, calls
  //   hook(slot, x_dev [rows, width] f32 device, row0 = global first row of the chunk, rows, width)
  // with the input of that slot (width H, q_dim, H, I); x_dev is valid until the hook returns and the work
  // that reads it is enqueued on stream() (a hook that uses another stream must synchronise). A non-ok status
  // from the hook stops the run and is returned, its message prefixed with the chunk's windows. hook may be
  // empty.
  // stop_after: -1 for none, else int(LayerSlot): each chunk ends right after that slot's hook.
  // update_inputs: x <- layer(x) (only without stop_after); else the inputs are left unchanged.
  // forward() and the module calls below return once their work is enqueued (the hooks aside, nothing waits):
  // synchronise stream() before reading their results from the host.
  using Hook =
      std::function<CudaStatus(LayerSlot, const float* x_dev, int64_t row0, int64_t rows, int64_t width)>;
  //
  // Resuming (GPTQ's true-sequential passes, which change one slot's linears between forwards): with keep = true
  // the forward also saves, for every row, the attention output, the residual x + o_proj(attn) and silu(g) * u
  // (those it computes; reserve_kept() first), and a later forward may start from them instead of the input:
  //   kAttentionKept  o_proj onward (the hooks from kGateUp on): valid while x, attn_norm and q/k/v are unchanged
  //   kResidualKept   the MLP onward (hooks kGateUp, kDown): ... and o_proj unchanged
  //   kDownKept       down_proj only (no hook): ... and mlp_norm, gate/up unchanged
  // The caller tracks what it changed; a resumed forward computes exactly what a full one would (the same
  // kernels on the same values; bf16 copies are re-rounded from the kept f32, as the forward rounds them).
  enum class LayerStart { kInput, kAttentionKept, kResidualKept, kDownKept };
  CudaStatus forward(const Hook& hook, int stop_after, bool update_inputs, LayerStart start = LayerStart::kInput,
                     bool keep = false);
  // Allocates the kept buffers ((q_dim + H + I) * 4 bytes per row); an out-of-memory error leaves none.
  CudaStatus reserve_kept();
  void release_kept();

  // Module forwards for AWQ's search with candidate weights: device f32 pointers [out, in] as in
  // LayerWeightsHost, nullptr = the layer's own. Inputs and outputs are device f32; run on stream().
  // out[rows, H] = o_proj(attention(q/k/v(xn) + the layer's biases)); xn [windows_used * seqlen, H], whole
  // windows at positions 0..seqlen-1 (as LlamaModel::attention_forward per window).
  CudaStatus attention_module(const float* xn_dev, int64_t windows_used, const float* wq, const float* wk,
                              const float* wv, const float* wo, float* out_dev);
  // out[rows, H] = down(silu(gate xn) * up xn); xn [rows, H].
  CudaStatus mlp_module(const float* xn_dev, int64_t rows, const float* w_gate, const float* w_up,
                        const float* w_down, float* out_dev);
  // y[rows, N] = x[rows, K] W^T in this engine's LayerGemm (kBF16: x and W rounded to bf16); W [N, K].
  CudaStatus linear(const float* x_dev, int64_t rows, int64_t K, const float* w_dev, int64_t N, float* y_dev);

  // The device f32 copy of linear `which` as last uploaded (0..6: q, k, v, o, gate, up, down, the order of
  // model/layer_spec.h kLlamaLinears), [out, in] row-major; null before set_weights.
  const float* linear_dev(int which) const;

  void* stream() const;   // everything runs on this stream (a cudaStream_t)
  int64_t bytes() const;  // device bytes held
  int64_t chunk_windows() const;
  const LlamaLayerDims& dims() const;
  LayerGemm gemm() const;
  const char* device_name() const;  // "cuda:0 NVIDIA H100 80GB HBM3"

  void set_profiling(bool on);  // records CUDA events between phases of forward() (synchronises per chunk)
  LayerProfile profile() const;
  void reset_profile();

  struct Impl;

 private:
  LlamaLayerDevice();
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge::cuda
