// AWQ's heavy steps on a CUDA device (the CPU reference is quant/awq.cpp), and the pipeline's per-linear
// error statistics (quant/pipeline.cpp fill_errors). The search drivers (alpha loop, which linears are
// clipped, folding) stay with the caller; this knows nothing of layers: errors name the call, the shape, the
// row and group or the CUDA function, and the caller adds the layer's name.
//
// Plain host C++: no CUDA headers, no fmt (nvcc 13 cannot compile fmt 9). Pointers are DEVICE pointers unless
// marked host; `stream` is a cudaStream_t. A call that returns a host result (or may report a data error)
// waits for its stream before returning; the others only enqueue.
//
// Precision against the CPU reference, and why:
//   mean |x|            bit-identical: one thread per channel adds |x| in f64 in token order, as the CPU does
//                       (AwqAbsSum keeps that order across chunks), then one f64 divide and one rounding.
//   fake quantization   bit-identical: the same f32 operations as awq_fake_quantize_scaled (IEEE-rounded
//                       multiply, divide, the fp16-rounded grid of quant_group_params, code, dequant,
//                       divide).
//   scale columns       bit-identical (one IEEE f32 divide).
//   clip search         the shrink candidates, clamps, grids and codes are bit-identical (diff = w - dequant
//                       is one fused multiply-add, as the CPU build contracts it on FMA targets); the output
//                       error per token x_group . diff is an f32 sum over the group's columns in another
//                       order than OpenBLAS's SGEMM, and its square is summed in f64. So errors differ by
//                       f32 summation order only (bounded by gamma_gs * sum |x||diff| per token), and a
//                       group's choice can differ from the CPU's only where two candidates' errors are that
//                       close.
//   mean squared diff,  f64 sums of the same f64 terms as the CPU in a fixed tree order (deterministic):
//   weight mse          within 2 gamma_n (u = 2^-53) of the CPU's relative to the sum.
//   output error        D H by cuBLAS SGEMM in f32 (CUBLAS_DEFAULT_MATH: no TF32), D = W - Q in f32, then the
//   f64
//                       sum of dh * d: within 2 gamma_in (u = 2^-24) * tr(|D| |H| |D|^T) of the CPU's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/cuda/gptq_cuda.h"  // GptqGridRule
#include "kernels/cuda/w4a16.h"      // CudaStatus

namespace qforge::cuda {

// The clip search's options, as quant::AwqOptions.
struct AwqClipOptions {
  int n_grid = 20;                   // shrink i / n_grid
  double max_shrink = 0.5;           // i < max(1, int(max_shrink * n_grid))
  int64_t clip_sample_tokens = 512;  // token stride max(1, T / clip_sample_tokens)
  // Only orders errors: the CPU walks rows in batches of this many (then group, shrink, row), and the first
  // (row, group) whose grid overflows in that order is the one reported, here as there.
  int64_t clip_batch_rows = 64;
};

// Per-channel sum of |x| in f64 over chunks of rows that arrive one after another (the pipeline's
// calibration windows), for x_mean = sum / tokens. Adding chunk after chunk gives the same bits as one call
// of quant::awq_mean_abs on the rows concatenated.
class AwqAbsSum {
 public:
  // Device buffers for C channels on the current device.
  static CudaStatus create(int64_t C, std::unique_ptr<AwqAbsSum>* dst);
  ~AwqAbsSum();
  AwqAbsSum(const AwqAbsSum&) = delete;
  AwqAbsSum& operator=(const AwqAbsSum&) = delete;
  struct Impl;

  // sum[c] += |x[t, c]| for t in order. x [rows, C] f32 device. Asynchronous; rows == 0 is a no-op.
  // A NaN/Inf is recorded (its index over all rows added so far) and reported by finalize.
  CudaStatus add(const float* x, int64_t rows, void* stream);
  // Waits for the stream. mean_host [C] = float(sum / tokens) (host). *first_bad (host) = the row-major index
  // (row * C + c over every row added) of the first non-finite x, or -1; the mean is then meaningless. An
  // error when no row was added.
  CudaStatus finalize(float* mean_host, int64_t* first_bad, void* stream) const;
  // Back to zero rows (asynchronous).
  CudaStatus reset(void* stream);
  // The f64 sums [C] on the device, for combining the sums of several GPUs (an NCCL all-reduce on `stream`);
  // then set_tokens(the total) before finalize.
  double* sums_device();
  void set_tokens(int64_t tokens);
  int64_t tokens() const;
  int64_t channels() const;

 private:
  AwqAbsSum();
  std::unique_ptr<Impl> impl_;
};

// x[t, c] /= s[c] (f32 IEEE divide) for x [T, C] device, s [C] device: the cached group input after the
// scales were folded into what produced it. Asynchronous.
CudaStatus awq_scale_columns_device(float* x, int64_t T, int64_t C, const float* s, void* stream);

// The AWQ steps that need scratch memory or a cuBLAS handle. Buffers grow to the largest call and are kept;
// one object serves one stream at a time (calls on different streams must not overlap).
class AwqDevice {
 public:
  // Selects `device` (an error naming the device count when there is no usable GPU) and creates the cuBLAS
  // handle.
  static CudaStatus create(int device, std::unique_ptr<AwqDevice>* dst);
  ~AwqDevice();
  AwqDevice(const AwqDevice&) = delete;
  AwqDevice& operator=(const AwqDevice&) = delete;
  struct Impl;

  // "cuda:0 NVIDIA H100 80GB HBM3"
  const std::string& name() const;
  // Device bytes held now.
  int64_t bytes() const;

  // quant::awq_mean_abs: mean_host [C] (host) = float(sum_t |x[t, c]| / T), x [T, C]. *first_bad (host):
  // row-major index of the first non-finite x, or -1. Waits for the stream.
  CudaStatus mean_abs(const float* x, int64_t T, int64_t C, float* mean_host, int64_t* first_bad,
                      void* stream);

  // quant::awq_fake_quantize_scaled: dst [rows, C] = Q(W * s) / s with rule's groups (group_size 0 = the
  // whole row). W [rows, C], s [C] (> 0, finite), dst [rows, C] device. Waits for the stream: a grid whose
  // fp16 scale overflows is an error naming the first such row and group (row-major order, as the CPU) and
  // its range.
  CudaStatus fake_quantize_scaled(const float* W, int64_t rows, int64_t C, const float* s,
                                  const GptqGridRule& rule, float* dst, void* stream);

  // quant::awq_search_clip for W [out, C] fed by x [T, C] (device, the input after the scales were applied).
  // max_val_host [out, n_groups] (host) as the CPU's: per (row, group) the clamp value of the lowest error,
  // the first (least shrink) on ties. err_host [out, n_groups, n_shrink] (host, optional) receives every
  // candidate's error, mean over sampled tokens of (x_group . (W_group - Q(clamp(W_group))))^2. Errors: bad
  // sizes or options, a NaN/Inf in W or x (its [row, column]), a grid overflow (row, group, shrink, range).
  // Waits for the stream. Scratch: 16 * out * n_groups * n_shrink bytes.
  CudaStatus search_clip(const float* W, int64_t out, int64_t C, const float* x, int64_t T,
                         const GptqGridRule& rule, const AwqClipOptions& opt, float* max_val_host,
                         double* err_host, void* stream);

  // *result_host = mean((double(a) - double(b))^2) over n values, the f64 sum in a fixed tree order (the CPU
  // block error of awq_search_scales). Waits for the stream.
  CudaStatus mean_squared_diff(const float* a, const float* b, int64_t n, double* result_host, void* stream);

  // The pipeline's fill_errors for W, Q [out, in] (device): with D = W - Q (f32),
  // *weight_mse (host) = mean(double(D)^2); *output_error (host) = tr(D H D^T) / 2 with D H by cuBLAS SGEMM
  // (f32, no TF32) and the f64 sum of dh * d. H [in, in] symmetric, or null: then *output_error is not
  // written. Scratch: 8 * out * in bytes. Waits for the stream.
  CudaStatus quant_errors(const float* W, const float* Q, const float* H, int64_t out, int64_t in,
                          double* weight_mse, double* output_error, void* stream);

 private:
  AwqDevice();
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge::cuda
