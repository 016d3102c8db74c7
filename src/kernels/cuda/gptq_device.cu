// GptqDevice (gptq_cuda.h): the working state of one linear on the GPU, the f64 cuSOLVER factorization and
// the SGEMM trailing update. The sweep kernel is gptq_sweep.cu.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/gptq_common.cuh"

namespace qforge::cuda {

using gptq_detail::DeviceBuffer;

namespace {

// Wp[r, k] = dead[perm[k]] ? 0 : W[r, perm[k]]
__global__ void gather_weight_kernel(const float* __restrict__ W, const int32_t* __restrict__ perm,
                                     const uint8_t* __restrict__ dead, int64_t out, int64_t in,
                                     float* __restrict__ Wp) {
  const int64_t r = blockIdx.y;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < in;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int32_t c = perm[k];
    Wp[r * in + k] = dead[c] ? 0.0f : W[r * in + c];
  }
  (void)out;
}

// Hp[a, b] = a == b ? diag[perm[a]] : H[perm[a], perm[b]]   (f64)
__global__ void gather_hessian_kernel(const float* __restrict__ H, const int32_t* __restrict__ perm,
                                      const double* __restrict__ diag, int64_t in, double* __restrict__ Hp) {
  const int64_t a = blockIdx.y;
  const int64_t pa = perm[a];
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < in;
       b += int64_t(gridDim.x) * blockDim.x)
    Hp[a * in + b] = a == b ? diag[pa] : double(H[pa * in + perm[b]]);
}

__global__ void add_diagonal_kernel(double* __restrict__ A, int64_t n, double damp) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) A[i * n + i] += damp;
}

// U[i, j] = j >= i ? float(A[i, j]) : 0 (row-major upper of A == column-major lower, what potrf 'L' wrote);
// *bad = 1 if any kept value is not finite.
__global__ void upper_to_f32_kernel(const double* __restrict__ A, int64_t n, float* __restrict__ U,
                                    int* bad) {
  const int64_t i = blockIdx.y;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    if (j >= i) {
      const double a = A[i * n + j];
      if (!isfinite(a)) *bad = 1;
      v = float(a);
    }
    U[i * n + j] = v;
  }
}

bool is_device_pointer(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

dim3 row_grid(int64_t rows, int64_t cols) {
  return dim3(unsigned(std::min<int64_t>((cols + 255) / 256, 64)), unsigned(rows));
}

}  // namespace

struct GptqDevice::Impl {
  int device = 0;
  std::string name;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;

  int64_t out = 0, in = 0, n_groups = 0, n_blocks = 0;
  GptqGridRule rule;
  DeviceBuffer w_src, h_src;  // uploads of host W [out, in] / H [in, in] (f32, original order)
  DeviceBuffer wp;            // [out, in] f32 working matrix, processing order
  DeviceBuffer hp;            // [in, in] f64 permuted Hessian, undamped
  DeviceBuffer a;             // [in, in] f64 damped copy factored in place
  DeviceBuffer u;             // [in, in] f32 upper factor
  DeviceBuffer err;           // [out, kGptqCudaMaxBlock] f32 scaled errors of the current block
  DeviceBuffer grids;         // [out, n_groups] GptqGrid
  DeviceBuffer codes;         // [out, in] uint8 processing order
  DeviceBuffer perm, dead, diag, group_of, grid_start;  // [in] int32 / uint8 / f64 / int32 / uint8
  DeviceBuffer losses;                                  // [>= n_blocks, out] f64 per-(block, row) losses
  DeviceBuffer work;                                    // cuSOLVER workspace (f64)
  DeviceBuffer scalars;                                 // int info, int bad, unsigned long long err_key

  int* info() const { return scalars.as<int>(); }
  int* bad() const { return scalars.as<int>() + 1; }
  unsigned long long* err_key() const {
    return reinterpret_cast<unsigned long long*>(scalars.as<char>() + 8);
  }

  ~Impl() {
    if (solver) cusolverDnDestroy(solver);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

  CudaStatus read_int(const int* d, int* h) {
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(h, d, sizeof(int), cudaMemcpyDeviceToHost, stream));
    GPTQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    return CudaStatus::ok();
  }
};

GptqDevice::GptqDevice() : impl_(std::make_unique<Impl>()) {}
GptqDevice::~GptqDevice() {
  if (impl_) cudaSetDevice(impl_->device);
}

CudaStatus GptqDevice::create(int device, std::unique_ptr<GptqDevice>* dst) {
  std::unique_ptr<GptqDevice> d(new GptqDevice());
  Impl& m = *d->impl_;
  m.device = device;
  GPTQ_TRY(gptq_detail::select_device(device, &m.name));
  GPTQ_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  GPTQ_CUBLAS_CHECK(cublasCreate(&m.blas));
  GPTQ_CUBLAS_CHECK(cublasSetStream(m.blas, m.stream));
  // Plain f32 SGEMM: no TF32 (its 10-bit mantissa would flip codes against the CPU).
  GPTQ_CUBLAS_CHECK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));
  GPTQ_CUSOLVER_CHECK(cusolverDnCreate(&m.solver));
  GPTQ_CUSOLVER_CHECK(cusolverDnSetStream(m.solver, m.stream));
  GPTQ_TRY(m.scalars.ensure(16, "GPTQ status words"));
  *dst = std::move(d);
  return CudaStatus::ok();
}

const std::string& GptqDevice::name() const {
  return impl_->name;
}
int64_t GptqDevice::n_blocks() const {
  return impl_->n_blocks;
}
void* GptqDevice::stream() const {
  return impl_->stream;
}

int64_t GptqDevice::bytes() const {
  const Impl& m = *impl_;
  int64_t b = 0;
  for (const DeviceBuffer* x :
       {&m.w_src, &m.h_src, &m.wp, &m.hp, &m.a, &m.u, &m.err, &m.grids, &m.codes, &m.perm, &m.dead, &m.diag,
        &m.group_of, &m.grid_start, &m.losses, &m.work, &m.scalars})
    b += x->bytes;
  return b;
}

CudaStatus GptqDevice::load(const float* W, const float* H, int64_t out, int64_t in, const GptqGridRule& rule,
                            int64_t n_groups, const int64_t* perm, const double* diag, const char* dead,
                            const int32_t* group_of, const char* grid_start, const GptqGrid* grids0) {
  Impl& m = *impl_;
  if (out <= 0 || in <= 0 || out >= gptq_detail::kGptqMaxDim || in >= gptq_detail::kGptqMaxDim ||
      n_groups <= 0)
    return CudaStatus::error("GPTQ load: shape [" + std::to_string(out) + ", " + std::to_string(in) +
                             "] with " + std::to_string(n_groups) +
                             " groups is outside what the CUDA backend takes (1..2^21 each)");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  m.out = out;
  m.in = in;
  m.n_groups = n_groups;
  m.rule = rule;
  m.n_blocks = 0;
  const int64_t on = out * in, nn = in * in;
  GPTQ_TRY(m.wp.ensure(on * 4, "the GPTQ working weights [out, in] f32"));
  GPTQ_TRY(m.hp.ensure(nn * 8, "the permuted Hessian [in, in] f64"));
  GPTQ_TRY(m.a.ensure(nn * 8, "the damped Hessian being factored [in, in] f64"));
  GPTQ_TRY(m.u.ensure(nn * 4, "the inverse-Hessian factor U [in, in] f32"));
  GPTQ_TRY(m.err.ensure(out * kGptqCudaMaxBlock * 4, "the block errors [out, 128] f32"));
  GPTQ_TRY(m.grids.ensure(out * n_groups * int64_t(sizeof(GptqGrid)), "the grids [out, groups]"));
  GPTQ_TRY(m.codes.ensure(on, "the codes [out, in] uint8"));
  GPTQ_TRY(m.perm.ensure(in * 4, "the column permutation"));
  GPTQ_TRY(m.dead.ensure(in, "the dead-column mask"));
  GPTQ_TRY(m.diag.ensure(in * 8, "the Hessian diagonal"));
  GPTQ_TRY(m.group_of.ensure(in * 4, "the column groups"));
  GPTQ_TRY(m.grid_start.ensure(in, "the grid starts"));

  // Host-side conversions; the copies below are synchronous for pageable memory, and the stream is
  // synchronized before returning, so these vectors may die at the end of the call.
  std::vector<int32_t> perm32(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) perm32[size_t(k)] = int32_t(perm[k]);
  const cudaStream_t s = m.stream;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.perm.ptr, perm32.data(), size_t(in) * 4, cudaMemcpyHostToDevice, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.dead.ptr, dead, size_t(in), cudaMemcpyHostToDevice, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.diag.ptr, diag, size_t(in) * 8, cudaMemcpyHostToDevice, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.group_of.ptr, group_of, size_t(in) * 4, cudaMemcpyHostToDevice, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.grid_start.ptr, grid_start, size_t(in), cudaMemcpyHostToDevice, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.grids.ptr, grids0, size_t(out * n_groups) * sizeof(GptqGrid),
                                  cudaMemcpyHostToDevice, s));
  const float* Wd = W;
  if (!is_device_pointer(W)) {
    GPTQ_TRY(m.w_src.ensure(on * 4, "the uploaded weights [out, in] f32"));
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.w_src.ptr, W, size_t(on) * 4, cudaMemcpyHostToDevice, s));
    Wd = m.w_src.as<float>();
  }
  const float* Hd = H;
  if (!is_device_pointer(H)) {
    GPTQ_TRY(m.h_src.ensure(nn * 4, "the uploaded Hessian [in, in] f32"));
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(m.h_src.ptr, H, size_t(nn) * 4, cudaMemcpyHostToDevice, s));
    Hd = m.h_src.as<float>();
  }
  gather_weight_kernel<<<row_grid(out, in), 256, 0, s>>>(Wd, m.perm.as<int32_t>(), m.dead.as<uint8_t>(), out,
                                                         in, m.wp.as<float>());
  GPTQ_CUDA_CHECK(cudaGetLastError());
  gather_hessian_kernel<<<row_grid(in, in), 256, 0, s>>>(Hd, m.perm.as<int32_t>(), m.diag.as<double>(), in,
                                                         m.hp.as<double>());
  GPTQ_CUDA_CHECK(cudaGetLastError());
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.err_key(), 0xff, sizeof(unsigned long long), s));

  // cuSOLVER workspace for potrf and potri on [in, in].
  int lw1 = 0, lw2 = 0;
  GPTQ_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(m.solver, CUBLAS_FILL_MODE_LOWER, int(in), m.a.as<double>(),
                                                  int(in), &lw1));
  GPTQ_CUSOLVER_CHECK(cusolverDnDpotri_bufferSize(m.solver, CUBLAS_FILL_MODE_LOWER, int(in), m.a.as<double>(),
                                                  int(in), &lw2));
  GPTQ_TRY(m.work.ensure(int64_t(std::max(lw1, lw2)) * 8, "the cuSOLVER workspace"));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(s));
  return CudaStatus::ok();
}

CudaStatus GptqDevice::factor(double damp, bool* positive_definite) {
  Impl& m = *impl_;
  *positive_definite = false;
  if (m.in == 0) return CudaStatus::error("GPTQ factor before load");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const int64_t n = m.in;
  const int ni = int(n);
  const cudaStream_t s = m.stream;
  double* A = m.a.as<double>();
  double* work = m.work.as<double>();
  const int lwork = int(m.work.bytes / 8);
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(A, m.hp.ptr, size_t(n * n) * 8, cudaMemcpyDeviceToDevice, s));
  add_diagonal_kernel<<<unsigned((n + 255) / 256), 256, 0, s>>>(A, n, damp);
  GPTQ_CUDA_CHECK(cudaGetLastError());
  // Column-major 'L' on the row-major array == the row-major upper triangle, as the CPU's LAPACKE calls:
  // A = R^T R, A^-1, A^-1 = U^T U.
  for (int step = 0; step < 3; ++step) {
    if (step == 1)
      GPTQ_CUSOLVER_CHECK(
          cusolverDnDpotri(m.solver, CUBLAS_FILL_MODE_LOWER, ni, A, ni, work, lwork, m.info()));
    else
      GPTQ_CUSOLVER_CHECK(
          cusolverDnDpotrf(m.solver, CUBLAS_FILL_MODE_LOWER, ni, A, ni, work, lwork, m.info()));
    int info = 0;
    GPTQ_TRY(m.read_int(m.info(), &info));
    if (info < 0)
      return CudaStatus::error(std::string(step == 1 ? "cusolverDnDpotri" : "cusolverDnDpotrf") +
                               ": invalid parameter " + std::to_string(-info) + " (n = " + std::to_string(n) +
                               ")");
    if (info > 0) return CudaStatus::ok();  // not positive definite: the driver retries with more damping
  }
  GPTQ_CUDA_CHECK(cudaMemsetAsync(m.bad(), 0, sizeof(int), s));
  upper_to_f32_kernel<<<row_grid(n, n), 256, 0, s>>>(A, n, m.u.as<float>(), m.bad());
  GPTQ_CUDA_CHECK(cudaGetLastError());
  int bad = 0;
  GPTQ_TRY(m.read_int(m.bad(), &bad));
  *positive_definite = bad == 0;
  return CudaStatus::ok();
}

CudaStatus GptqDevice::quantize_block(int64_t begin, int64_t end) {
  Impl& m = *impl_;
  if (begin < 0 || end > m.in || end <= begin)
    return CudaStatus::error("GPTQ block [" + std::to_string(begin) + ", " + std::to_string(end) +
                             ") outside [0, " + std::to_string(m.in) + ")");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const int64_t need = (m.n_blocks + 1) * m.out * 8;  // [n_blocks + 1, out] f64 for this layer's shape
  if (need > m.losses.bytes) {                        // grow, keeping this layer's earlier blocks
    DeviceBuffer grown;
    GPTQ_TRY(grown.ensure(std::max<int64_t>(2 * need, 64 * m.out * 8), "the block losses [blocks, out] f64"));
    if (m.n_blocks > 0)
      GPTQ_CUDA_CHECK(cudaMemcpyAsync(grown.ptr, m.losses.ptr, size_t(m.n_blocks * m.out) * 8,
                                      cudaMemcpyDeviceToDevice, m.stream));
    GPTQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    std::swap(grown.ptr, m.losses.ptr);
    std::swap(grown.bytes, m.losses.bytes);
  }
  GPTQ_TRY(gptq_detail::launch_gptq_sweep(
      m.wp.as<float>(), m.out, m.in, begin, end - begin, m.u.as<float>(), m.grids.as<GptqGrid>(), m.n_groups,
      m.group_of.as<int32_t>(), m.grid_start.as<uint8_t>(), m.rule, m.codes.as<uint8_t>(), m.err.as<float>(),
      m.losses.as<double>() + m.n_blocks * m.out, m.err_key(), m.stream));
  ++m.n_blocks;
  return CudaStatus::ok();
}

CudaStatus GptqDevice::trailing_update(int64_t begin, int64_t end) {
  Impl& m = *impl_;
  if (begin < 0 || end >= m.in || end <= begin || end - begin > kGptqCudaMaxBlock)
    return CudaStatus::error("GPTQ trailing update [" + std::to_string(begin) + ", " + std::to_string(end) +
                             ") outside [0, " + std::to_string(m.in) + ")");
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const int64_t count = end - begin, in = m.in;
  const float alpha = -1.0f, beta = 1.0f;
  // Row-major Wp[:, end:] [out, in - end] -= Err [out, count] @ U[begin:end, end:] [count, in - end]; in
  // cuBLAS's column-major view every row-major matrix is its transpose: C^T = U_blk^T Err^T.
  GPTQ_CUBLAS_CHECK(cublasSgemm(m.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(in - end), int(m.out), int(count),
                                &alpha, m.u.as<float>() + begin * in + end, int(in), m.err.as<float>(),
                                int(count), &beta, m.wp.as<float>() + end, int(in)));
  return CudaStatus::ok();
}

CudaStatus GptqDevice::fetch(uint8_t* codes, GptqGrid* grids, double* block_row_loss) {
  Impl& m = *impl_;
  GPTQ_CUDA_CHECK(cudaSetDevice(m.device));
  const cudaStream_t s = m.stream;
  unsigned long long key = 0;
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(&key, m.err_key(), sizeof(key), cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(s));
  if (key != ~0ull) {
    const unsigned long long mask = (1ull << gptq_detail::kGptqKeyShift) - 1;
    const int64_t begin = int64_t(key >> (2 * gptq_detail::kGptqKeyShift));
    const int64_t row = int64_t((key >> gptq_detail::kGptqKeyShift) & mask);
    const int64_t col = begin + int64_t(key & mask);
    std::vector<int32_t> g(1);
    GPTQ_CUDA_CHECK(cudaMemcpy(g.data(), m.group_of.as<int32_t>() + col, 4, cudaMemcpyDeviceToHost));
    return CudaStatus::error("row " + std::to_string(row) + " group " + std::to_string(g[0]) +
                             ": scale overflows fp16 (the group's range exceeds 65504 x " +
                             std::to_string((1 << m.rule.bits) - 1) + ")");
  }
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(codes, m.codes.ptr, size_t(m.out * m.in), cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaMemcpyAsync(grids, m.grids.ptr, size_t(m.out * m.n_groups) * sizeof(GptqGrid),
                                  cudaMemcpyDeviceToHost, s));
  if (m.n_blocks > 0)
    GPTQ_CUDA_CHECK(cudaMemcpyAsync(block_row_loss, m.losses.ptr, size_t(m.n_blocks * m.out) * 8,
                                    cudaMemcpyDeviceToHost, s));
  GPTQ_CUDA_CHECK(cudaStreamSynchronize(s));
  return CudaStatus::ok();
}

}  // namespace qforge::cuda
