// HessianDevice (gptq_cuda.h): the GPTQ Hessian's running mean accumulated on the GPU with cuBLAS.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/gptq_common.cuh"

namespace qforge::cuda {

using gptq_detail::DeviceBuffer;

namespace {

constexpr int kTile = 32;

// H[i, j] = H[j, i] for i > j (row-major): the lower triangle from the upper, through a shared tile so both
// the reads and the writes are coalesced. Grid: (n/32 tiles) x (n/32 tiles); only tiles with bi >= bj work.
__global__ void mirror_upper_kernel(float* __restrict__ H, int64_t n) {
  __shared__ float tile[kTile][kTile + 1];
  const int64_t bi = blockIdx.y, bj = blockIdx.x;  // destination tile rows bi, cols bj (lower: bi >= bj)
  if (bi < bj) return;
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  for (int y = ty; y < kTile; y += 8) {          // read source tile rows bj, cols bi (upper)
    const int64_t r = bj * kTile + y, c = bi * kTile + tx;
    if (r < n && c < n) tile[y][tx] = H[r * n + c];
  }
  __syncthreads();
  for (int y = ty; y < kTile; y += 8) {
    const int64_t r = bi * kTile + y, c = bj * kTile + tx;
    if (r < n && c < n && r > c) H[r * n + c] = tile[tx][y];
  }
}

// dst[i] = bf16(src[i]), round to nearest even.
__global__ void f32_to_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace

struct HessianDevice::Impl {
  int device = 0;
  int64_t in = 0, n = 0;
  cudaStream_t stream = nullptr;  // own
  cudaStream_t work = nullptr;    // where the work goes: `stream`, or the caller's (set_stream)
  cublasHandle_t blas = nullptr;
  DeviceBuffer h;  // [in, in] f32
  DeviceBuffer x16;  // kF32AsBF16: the bf16 copy of the input
  ~Impl() {
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }
};

HessianDevice::HessianDevice() : impl_(std::make_unique<Impl>()) {}
HessianDevice::~HessianDevice() = default;

CudaStatus HessianDevice::create(int device, int64_t in, std::unique_ptr<HessianDevice>* dst) {
  if (in <= 0 || in > (int64_t(1) << 30))
    return CudaStatus::error("Hessian: in_features " + std::to_string(in) + " out of range");
  std::unique_ptr<HessianDevice> d(new HessianDevice());
  Impl& m = *d->impl_;
  m.device = device;
  m.in = in;
  GPTQ_TRY(gptq_detail::select_device(device, nullptr));
  GPTQ_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  m.work = m.stream;
  GPTQ_CUBLAS_CHECK(cublasCreate(&m.blas));
  GPTQ_CUBLAS_CHECK(cublasSetStream(m.blas, m.stream));
  GPTQ_CUBLAS_CHECK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));  // f32 inputs: true f32, no TF32
  GPTQ_TRY(m.h.ensure(in * in * 4, "the Hessian [in, in] f32"));
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.h.ptr, 0, size_t(in * in) * 4, m.stream));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  *dst = std::move(d);
  return CudaStatus::ok();
}

CudaStatus HessianDevice::add(const void* x, int64_t T, HessianInput dtype) {
  Impl& m = *impl_;
  if (T < 0) return CudaStatus::error("Hessian: negative sample count " + std::to_string(T));
  if (T == 0) return CudaStatus::ok();
  if (x == nullptr) return CudaStatus::error("Hessian: null input for " + std::to_string(T) + " samples");
  if (T > (int64_t(1) << 31) - 1)
    return CudaStatus::error("Hessian: " + std::to_string(T) + " samples in one call; split them (< 2^31)");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const int64_t n_new = m.n + T;
  // The CPU accumulator's f32 coefficients (quant/hessian.cpp).
  const float beta = float(double(m.n) / double(n_new));
  const float alpha = float(2.0 / double(n_new));
  const int in = int(m.in), t = int(T);
  float* H = m.h.as<float>();
  // Row-major x [T, in] is column-major M = x^T [in, T]; H = alpha M M^T + beta H. Column-major lower ==
  // row-major upper, the triangle the CPU computes.
  if (dtype == HessianInput::kF32AsBF16) {
    GPTQ_TRY(m.x16.ensure(T * m.in * 2, "the bf16 copy of the Hessian's input [T, in]"));
    const int64_t n = T * m.in;
    const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 65535));
    f32_to_bf16_kernel<<<blocks, 256, 0, m.work>>>(static_cast<const float*>(x), m.x16.as<__nv_bfloat16>(), n);
    GPTQ_CUDA_CHECK(cudaGetLastError());
    x = m.x16.ptr;
    dtype = HessianInput::kBF16;
  }
  if (dtype == HessianInput::kF32) {
    GPTQ_CUBLAS_CHECK(cublasSsyrk(m.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, in, t, &alpha,
                                  static_cast<const float*>(x), in, &beta, H, in));
  } else {
    const cudaDataType_t type = dtype == HessianInput::kF16 ? CUDA_R_16F : CUDA_R_16BF;
    GPTQ_CUBLAS_CHECK(cublasGemmEx(m.blas, CUBLAS_OP_N, CUBLAS_OP_T, in, in, t, &alpha, x, type, in, x, type,
                                   in, &beta, H, CUDA_R_32F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  const unsigned tiles = unsigned((m.in + kTile - 1) / kTile);
  mirror_upper_kernel<<<dim3(tiles, tiles), dim3(kTile, 8), 0, m.work>>>(H, m.in);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  m.n = n_new;
  return CudaStatus::ok();
}

const float* HessianDevice::H() const {
  return impl_->h.as<float>();
}
int64_t HessianDevice::samples() const {
  return impl_->n;
}
int64_t HessianDevice::in() const {
  return impl_->in;
}
void* HessianDevice::stream() const {
  return impl_->work;
}

CudaStatus HessianDevice::set_stream(void* stream) {
  Impl& m = *impl_;
  m.work = stream ? static_cast<cudaStream_t>(stream) : m.stream;
  GPTQ_CUBLAS_CHECK(cublasSetStream(m.blas, m.work));
  return CudaStatus::ok();
}

CudaStatus HessianDevice::download(float* H) const {
  const Impl& m = *impl_;
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(H, m.h.ptr, size_t(m.in * m.in) * 4, cudaMemcpyDeviceToHost, m.work));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.work));
  return CudaStatus::ok();
}

}  // namespace qforge::cuda
