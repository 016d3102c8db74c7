// GPTQ's heavy steps on a CUDA device, and the GPTQ Hessian accumulated there. The algorithm's driver
// (dead columns, act-order, grids, damping retries, the loop over lazy blocks) is quant/gptq.cpp; this is
// the backend it drives through quant::GptqOps (the adapter is quant/cuda/gptq_cuda_ops.cpp), and it
// knows nothing of layers: errors name the call, shape and CUDA function; the adapter adds the layer.
//
// Plain host C++: no CUDA headers, no fmt (nvcc 13 cannot compile fmt 9), so quant/ can include it.
//
// Precision, and why:
//   Hessian   f32 accumulation (cuBLAS: SSYRK for f32 inputs, GemmEx with f32 compute for f16 / bf16 inputs),
//             the running mean of quant/hessian.h: H = n/(n+T) H + 2/(n+T) X^T X.
//   factor    f64 (cuSOLVER potrf, potri, potrf: the CPU backend's LAPACK sequence), rounded to f32 at the
//             end. f64 because (1) the damping retries must agree with the CPU: whether H + damp I is
//             "positive definite" must be a property of H, not of f32 rounding (an f32 Cholesky fails on
//             matrices with condition ~1e7 that the CPU accepts at the first damping); (2) U then agrees
//             with the CPU's to the last f32 bit almost everywhere, so GPU and CPU codes differ only through
//             the summation order of the trailing update. The cost (4/3 in^3 f64 flops: 1.8 TFLOP at
//             in = 11008) is measured in docs/gpu-pipeline.md.
//   sweep     f32 as the CPU (the same expressions, fused the same way: w -= err * u is one FMA on both).
//   trailing  f32 SGEMM (CUBLAS_DEFAULT_MATH, no TF32: TF32's 10-bit mantissa would flip many codes).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/cuda/w4a16.h"  // CudaStatus

namespace qforge::cuda {

// The grid rule of quant::quant_group_params (quant/rtn.h, quant/quant_config.h), restated for the device.
struct GptqGridRule {
  int bits = 4;
  int64_t group_size = 128;  // 0 = per channel (grids given up front, never taken in the sweep)
  bool sym = false;
  bool awq = false;  // QuantGrid::kAwq, else kGptq
};

// One group's grid, laid out as quant::GroupParams.
struct GptqGrid {
  float scale = 1.0f;
  float zero = 0.0f;
};

// Largest lazy block the sweep kernel takes (its U block lives in shared memory).
inline constexpr int64_t kGptqCudaMaxBlock = 128;

// One linear's GPTQ working state on the device, in processing order (column k of the working matrix is
// original column perm[k]). Use: load, factor (until positive definite), then per block quantize_block and
// trailing_update, then fetch. Calls are asynchronous on the object's own stream except factor (which
// reads back whether the factorization succeeded) and fetch.
class GptqDevice {
 public:
  // Handles and a stream on `device`. An error, naming the device count, when there is no usable GPU.
  static CudaStatus create(int device, std::unique_ptr<GptqDevice>* dst);
  ~GptqDevice();
  GptqDevice(const GptqDevice&) = delete;
  GptqDevice& operator=(const GptqDevice&) = delete;
  struct Impl;

  // "cuda:0 NVIDIA H100 80GB HBM3"
  const std::string& name() const;

  // Sizes the buffers for [out, in] (kept across calls of the same or smaller size) and fills:
  //   Wp[r, k] = dead[perm[k]] ? 0 : W[r, perm[k]]              f32 [out, in]
  //   Hp[a, b] = a == b ? diag[perm[a]] : H[perm[a], perm[b]]    f64 [in, in]
  //   grids = grids0                                             [out, n_groups]
  // W [out, in] and H [in, in] (f32, row-major, original order) may be host or device pointers.
  // perm, diag (by original column, dead = 1), dead, group_of, grid_start ([in] each, processing order
  // except diag and dead) and grids0 [out, n_groups] are host arrays; see quant::GptqPlan.
  // An out-of-memory error says how many bytes were asked for.
  CudaStatus load(const float* W, const float* H, int64_t out, int64_t in, const GptqGridRule& rule,
                  int64_t n_groups, const int64_t* perm, const double* diag, const char* dead,
                  const int32_t* group_of, const char* grid_start, const GptqGrid* grids0);
  // U = upper f32 factor with U^T U = (Hp + damp I)^-1, computed in f64. *positive_definite = false (and
  // OK status) when cuSOLVER reports a non-positive pivot or U is not finite.
  CudaStatus factor(double damp, bool* positive_definite);
  // The column sweep of [begin, end), end - begin <= kGptqCudaMaxBlock (quant::GptqOps::quantize_block).
  CudaStatus quantize_block(int64_t begin, int64_t end);
  // Wp[:, end:] -= Err[:, begin:end] @ U[begin:end, end:] (SGEMM), with the Err of the last quantize_block.
  CudaStatus trailing_update(int64_t begin, int64_t end);
  // Waits for the stream and copies out (host): codes [out, in] processing order, grids [out, n_groups],
  // block_row_loss [n_blocks, out] (n_blocks = quantize_block calls since load). A grid that overflowed
  // fp16 during the sweep is an error naming the first row and group (in the CPU backend's order).
  CudaStatus fetch(uint8_t* codes, GptqGrid* grids, double* block_row_loss);
  // Blocks quantized since load.
  int64_t n_blocks() const;
  // Device bytes held now.
  int64_t bytes() const;
  // The object's stream (a cudaStream_t), for benchmarks that time with events.
  void* stream() const;

 private:
  GptqDevice();
  std::unique_ptr<Impl> impl_;
};

// kF32AsBF16: f32 inputs rounded to bf16 (nearest even) on the device first, then the bf16 path: for
// activations that the forward feeds to its linears in bf16 anyway (a bf16 GEMM forward).
enum class HessianInput { kF32, kF16, kBF16, kF32AsBF16 };

// H [in, in] f32 on the device, the running mean of quant::HessianAccumulator:
//   H = n/(n+T) H + 2/(n+T) X^T X,  n += T.
// f32 inputs: SSYRK on the upper triangle (the CPU's BLAS call), then mirrored. f16 / bf16 inputs: GemmEx
// with f32 accumulation on the tensor cores, then the upper triangle mirrored, so H is exactly symmetric.
class HessianDevice {
 public:
  static CudaStatus create(int device, int64_t in, std::unique_ptr<HessianDevice>* dst);
  ~HessianDevice();
  HessianDevice(const HessianDevice&) = delete;
  HessianDevice& operator=(const HessianDevice&) = delete;
  struct Impl;

  // x [T, in] row-major, a DEVICE pointer of `dtype`. Asynchronous on stream() (the inputs must stay valid
  // until it is done). T == 0 is a no-op. Inputs are not checked for NaN/Inf here (the CPU accumulator
  // does; on the GPU path the forward that produced them should).
  CudaStatus add(const void* x, int64_t T, HessianInput dtype);
  const float* H() const;  // device [in, in]
  CudaStatus download(float* H /*host [in, in]*/) const;
  int64_t samples() const;
  int64_t in() const;
  void* stream() const;
  // Runs add / download on `stream` (a cudaStream_t of the same device; nullptr: back to the object's own),
  // so a producer on that stream needs no synchronisation.
  CudaStatus set_stream(void* stream);

 private:
  HessianDevice();
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge::cuda
