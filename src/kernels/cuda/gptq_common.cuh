// Shared by gptq_device.cu, gptq_sweep.cu and gptq_hessian.cu: status checks that return CudaStatus, and a
// device buffer that says what it was for when it cannot be had.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/gptq_cuda.h"

namespace qforge::cuda::gptq_detail {

inline std::string mib(int64_t bytes) {
  return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB";
}

inline CudaStatus cuda_error(const char* call, cudaError_t e) {
  return CudaStatus::error(std::string(call) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                           ")");
}

// Every CUDA runtime call and every launch (GPTQ_CUDA_CHECK(cudaGetLastError())) goes through one of these.
#define GPTQ_CUDA_CHECK(call)                                                                   \
  do {                                                                                          \
    const cudaError_t gptq_e_ = (call);                                                         \
    if (gptq_e_ != cudaSuccess) return ::qforge::cuda::gptq_detail::cuda_error(#call, gptq_e_); \
  } while (0)

#define GPTQ_CUBLAS_CHECK(call)                                                                           \
  do {                                                                                                    \
    const cublasStatus_t gptq_s_ = (call);                                                                \
    if (gptq_s_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      return ::qforge::cuda::CudaStatus::error(std::string(#call) + ": " + cublasGetStatusName(gptq_s_) + \
                                               " (" + cublasGetStatusString(gptq_s_) + ")");              \
  } while (0)

#define GPTQ_CUSOLVER_CHECK(call)                                                     \
  do {                                                                                \
    const cusolverStatus_t gptq_s_ = (call);                                          \
    if (gptq_s_ != CUSOLVER_STATUS_SUCCESS)                                           \
      return ::qforge::cuda::CudaStatus::error(                                       \
          std::string(#call) + ": cusolverStatus_t " + std::to_string(int(gptq_s_)) + \
          (gptq_s_ == CUSOLVER_STATUS_ALLOC_FAILED ? " (out of memory)" : ""));       \
  } while (0)

#define GPTQ_TRY(expr)                            \
  do {                                            \
    ::qforge::cuda::CudaStatus gptq_st_ = (expr); \
    if (!gptq_st_.is_ok()) return gptq_st_;       \
  } while (0)

// A device allocation that only grows. ensure() names what it is for in its out-of-memory error, with the
// device's free and total memory, so the caller can say what to lower.
struct DeviceBuffer {
  void* ptr = nullptr;
  int64_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }
  void release() {
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
  }
  CudaStatus ensure(int64_t want, const char* what) {
    if (want <= bytes) return CudaStatus::ok();
    release();
    const cudaError_t e = cudaMalloc(&ptr, size_t(want));
    if (e != cudaSuccess) {
      ptr = nullptr;
      cudaGetLastError();  // an allocation error is not sticky: clear it so later launch checks do not see it
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      return CudaStatus::error(std::string("cannot allocate ") + mib(want) + " on the GPU for " + what +
                               ": " + cudaGetErrorString(e) + " (" + mib(int64_t(free_b)) + " free of " +
                               mib(int64_t(total_b)) + ")");
    }
    bytes = want;
    return CudaStatus::ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

// Selects `device`, or explains why there is none.
inline CudaStatus select_device(int device, std::string* name) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    return CudaStatus::error(std::string("no usable CUDA device (cudaGetDeviceCount: ") +
                             cudaGetErrorString(e) + ", " + std::to_string(n) + " devices)");
  }
  if (device < 0 || device >= n)
    return CudaStatus::error("CUDA device " + std::to_string(device) + " does not exist (" +
                             std::to_string(n) + " devices)");
  GPTQ_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  GPTQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (name) *name = "cuda:" + std::to_string(device) + " " + prop.name;
  return CudaStatus::ok();
}

// The sweep kernel's launch (gptq_sweep.cu). row_loss [out] receives this block's per-row losses;
// err_key the smallest (block, row, column) key of a grid that overflowed fp16.
CudaStatus launch_gptq_sweep(const float* Wp, int64_t out, int64_t in, int64_t begin, int64_t count,
                             const float* U, GptqGrid* grids, int64_t n_groups, const int32_t* group_of,
                             const uint8_t* grid_start, const GptqGridRule& rule, uint8_t* codes, float* err,
                             double* row_loss, unsigned long long* err_key, cudaStream_t stream);

// Error keys: (begin << 42) | (row << 21) | (column - begin); in, out < 2^21.
inline constexpr int kGptqKeyShift = 21;
inline constexpr int64_t kGptqMaxDim = int64_t(1) << kGptqKeyShift;

// quant::quant_group_params from the group's min and max (rtn.cpp), in the same f32 operations.
// Returns false when the scale overflows fp16. Shared by the GPTQ sweep and the AWQ kernels.
__device__ __forceinline__ bool grid_from_range(float wmin, float wmax, int maxq_i, bool sym, bool awq, float* scale,
                                                float* zero) {
  const float maxq = float(maxq_i);
  const float half = float((maxq_i + 1) / 2);  // 2^(b-1)
  constexpr float kAwqMinRange = 1e-5f;
  float raw = 0.0f, xmin = 0.0f;
  if (!awq) {
    float xmax = fmaxf(wmax, 0.0f);
    xmin = fminf(wmin, 0.0f);
    if (sym) {
      xmax = fmaxf(-xmin, xmax);
      xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;
    raw = __fdiv_rn(__fsub_rn(xmax, xmin), maxq);
  } else if (sym) {
    raw = __fdiv_rn(fmaxf(fmaxf(-wmin, wmax), kAwqMinRange), half - 1.0f);
  } else {
    raw = __fdiv_rn(fmaxf(__fsub_rn(wmax, wmin), kAwqMinRange), maxq);
  }
  float s = __half2float(__float2half_rn(raw));  // round to nearest even, overflow to inf: as f32_to_fp16
  if (isinf(s)) return false;
  if (s == 0.0f) s = 5.9604644775390625e-8f;  // 2^-24, the smallest fp16 subnormal
  float z;
  if (sym) {
    z = half;
  } else if (!awq) {
    z = fminf(fmaxf(rintf(__fdiv_rn(-xmin, s)), 0.0f), maxq) + 0.0f;
  } else {
    z = fminf(fmaxf(-rintf(__fdiv_rn(wmin, s)), 0.0f), maxq) + 0.0f;
  }
  *scale = s;
  *zero = z;
  return true;
}

}  // namespace qforge::cuda::gptq_detail
