// W4A16 public API (w4a16.h): device weights, the per-stream context, shape checks and path choice.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/w4a16.h"
#include "kernels/cuda/w4a16_kernels.cuh"
#include "kernels/cuda/w4a16_layout.h"

namespace qforge::cuda {
namespace {

std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line) + ": "; }

#define CUDA_CHECK(expr)                                                                                  \
  do {                                                                                                    \
    const cudaError_t e_ = (expr);                                                                        \
    if (e_ != cudaSuccess)                                                                                \
      return CudaStatus::error(where(__FILE__, __LINE__) + #expr + ": " + cudaGetErrorName(e_) + " (" +   \
                               cudaGetErrorString(e_) + ")");                                             \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                                \
  do {                                                                                                    \
    const cublasStatus_t e_ = (expr);                                                                     \
    if (e_ != CUBLAS_STATUS_SUCCESS)                                                                      \
      return CudaStatus::error(where(__FILE__, __LINE__) + #expr + ": " + cublasGetStatusName(e_) + " (" + \
                               cublasGetStatusString(e_) + ")");                                          \
  } while (0)

#define QF_RETURN_IF_CUDA_ERROR(expr)      \
  do {                                     \
    CudaStatus s_ = (expr);                \
    if (!s_.is_ok()) return s_;            \
  } while (0)

std::string shape(int64_t a, int64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + "]"; }

CudaStatus upload_bytes(const void* src, size_t bytes, void** dst) {
  if (bytes == 0) return CudaStatus::ok();
  CUDA_CHECK(cudaMalloc(dst, bytes));
  CUDA_CHECK(cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice));
  return CudaStatus::ok();
}

}  // namespace

// ---- W4A16DeviceWeight ----

W4A16DeviceWeight::~W4A16DeviceWeight() { release(); }

W4A16DeviceWeight::W4A16DeviceWeight(W4A16DeviceWeight&& o) noexcept { *this = std::move(o); }

W4A16DeviceWeight& W4A16DeviceWeight::operator=(W4A16DeviceWeight&& o) noexcept {
  if (this == &o) return *this;
  release();
  out = o.out, in = o.in, group_size = o.group_size, symmetric = o.symmetric, bytes = o.bytes;
  qweight = o.qweight, scales = o.scales, zeros = o.zeros, perm = o.perm;
  o.qweight = o.scales = o.zeros = o.perm = nullptr;
  o.out = o.in = 0;
  return *this;
}

void W4A16DeviceWeight::release() {
  // Destructors cannot report errors; a failing cudaFree here means the context is already broken.
  for (void** p : {&qweight, &scales, &zeros, &perm}) {
    if (*p) (void)cudaFree(*p);
    *p = nullptr;
  }
}

CudaStatus W4A16DeviceWeight::upload(const W4A16Packed& w, W4A16DeviceWeight* dst) {
  if (!dst) return CudaStatus::error("W4A16DeviceWeight::upload: dst is null");
  const int64_t G = w.n_groups();
  if (w.out <= 0 || w.in <= 0 || w.out % w4::kTileN || w.in % w4::kTileK || G <= 0 ||
      static_cast<int64_t>(w.qweight.size()) != w.out * w.in / 2 ||
      static_cast<int64_t>(w.scales.size()) != w.out * G ||
      (!w.symmetric && static_cast<int64_t>(w.zeros.size()) != w.out * G / 2) ||
      (!w.perm.empty() && static_cast<int64_t>(w.perm.size()) != w.in))
    return CudaStatus::error("W4A16DeviceWeight::upload: packed weight " + shape(w.out, w.in) +
                             " has inconsistent buffer sizes (use w4a16_repack)");
  W4A16DeviceWeight d;
  d.out = w.out, d.in = w.in, d.group_size = w.group_size, d.symmetric = w.symmetric, d.bytes = w.bytes();
  QF_RETURN_IF_CUDA_ERROR(upload_bytes(w.qweight.data(), w.qweight.size(), &d.qweight));
  QF_RETURN_IF_CUDA_ERROR(upload_bytes(w.scales.data(), w.scales.size() * 2, &d.scales));
  if (!w.symmetric) QF_RETURN_IF_CUDA_ERROR(upload_bytes(w.zeros.data(), w.zeros.size(), &d.zeros));
  if (!w.perm.empty()) QF_RETURN_IF_CUDA_ERROR(upload_bytes(w.perm.data(), w.perm.size() * 4, &d.perm));
  *dst = std::move(d);
  return CudaStatus::ok();
}

// ---- W4A16Context ----

struct W4A16Context::Impl {
  cublasHandle_t cublas = nullptr;
  int device = -1;
  int sm_count = 0;
  int cc_major = 0;
  MmaTuning tuning;
  GemvTuning gemv_tuning;
  GemmTuning gemm_tuning;
  WgmmaTuning wgmma_tuning;
  bool wgmma_ok = false;  // sm_90a device code on a cc 9.0 device (w4a16_wgmma.cu)
  struct Buffer {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  Buffer partial, counters, xperm, wdeq, xstage;

  ~Impl() {
    for (Buffer* b : {&partial, &counters, &xperm, &wdeq, &xstage})
      if (b->ptr) (void)cudaFree(b->ptr);
    if (cublas) (void)cublasDestroy(cublas);
  }

  CudaStatus init() {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    if (dev == device) return CudaStatus::ok();
    if (device >= 0) return CudaStatus::error("W4A16Context: used on device " + std::to_string(dev) +
                                              " after device " + std::to_string(device) + "; use one context per device");
    CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, dev));
    int major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cc_major = major;
    if (major < 8) return CudaStatus::error("W4A16: needs compute capability 8.0 or newer (mma.sync bf16, cp.async)");
    if (major == 9) {
      int minor = 0;
      CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
      if (minor == 0) CUDA_CHECK(detail::wgmma_available(&wgmma_ok));  // sm_90a code is for cc 9.0 only
    }
    CUBLAS_CHECK(cublasCreate(&cublas));
    device = dev;
    return CudaStatus::ok();
  }

  // Grows b to at least `bytes`; zero-filled (on `stream`) when `zero`. Not allowed during graph capture.
  // The mma launch configuration asked for by the tuning hook (zeros = choose).
  detail::MmaConfig mma_want() const {
    detail::MmaConfig c{tuning.nt, tuning.r, tuning.split, tuning.warps, 0};
    // PDL needs sm_90 (griddepcontrol); before init() (describe) assume it will be available.
    const bool can_pdl = cc_major == 0 || cc_major >= 9;
    c.pdl = can_pdl && (tuning.pdl < 0 ? kW4MmaPdlDefault : tuning.pdl > 0) ? 1 : 0;
    return c;
  }

  // The gemv launch configuration asked for by the tuning hook (zeros = choose).
  detail::GemvConfig gemv_want() const {
    const GemvTuning& t = gemv_tuning;
    detail::GemvConfig c{t.warps, t.split, t.depth, 0};
    const bool can_pdl = cc_major == 0 || cc_major >= 9;
    c.pdl = can_pdl && (t.pdl < 0 ? kW4GemvPdlDefault : t.pdl > 0) ? 1 : 0;
    return c;
  }

  CudaStatus grow(Buffer* b, size_t bytes, bool zero, cudaStream_t stream) {
    if (b->bytes >= bytes) return CudaStatus::ok();
    if (b->ptr) {
      CUDA_CHECK(cudaStreamSynchronize(stream));
      CUDA_CHECK(cudaFree(b->ptr));
      b->ptr = nullptr;
      b->bytes = 0;
    }
    CUDA_CHECK(cudaMalloc(&b->ptr, bytes));
    b->bytes = bytes;
    if (zero) CUDA_CHECK(cudaMemsetAsync(b->ptr, 0, bytes, stream));
    return CudaStatus::ok();
  }
};

W4A16Context::W4A16Context() : impl_(std::make_unique<Impl>()) {}
W4A16Context::~W4A16Context() = default;

void W4A16Context::set_mma_tuning(MmaTuning t) { impl_->tuning = t; }
void W4A16Context::set_gemv_tuning(GemvTuning t) { impl_->gemv_tuning = t; }
void W4A16Context::set_gemm_tuning(GemmTuning t) { impl_->gemm_tuning = t; }
void W4A16Context::set_wgmma_tuning(WgmmaTuning t) { impl_->wgmma_tuning = t; }
bool W4A16Context::wgmma_available() { return impl_->init().is_ok() && impl_->wgmma_ok; }

W4Path W4A16Context::auto_path(const W4A16DeviceWeight& w, int64_t M) const {
  if (M <= kW4GemvCrossoverM) return W4Path::kGemv;
  const int64_t weights = w.out * w.in;
  const bool wgmma_big = M >= kW4WgmmaMinM && weights >= kW4WgmmaMinWeights;
  const bool wgmma_small = M >= kW4WgmmaMinMSmall && weights >= kW4WgmmaMinWeightsSmall;
  if (impl_->wgmma_ok && (wgmma_big || wgmma_small) &&
      detail::wgmma_supported(static_cast<int>(w.out), static_cast<int>(w.in), static_cast<int>(w.group_size)))
    return W4Path::kWgmma;
  if (M > kW4CublasCrossoverM) return W4Path::kCublas;
  const bool gemm_ok = w.out % 32 == 0 && w.out * w.in >= kW4GemmMinWeights;
  return M >= kW4GemmMinM && gemm_ok ? W4Path::kGemm : W4Path::kMma;
}

std::string W4A16Context::describe(const W4A16DeviceWeight& w, int64_t M, ActType act, W4Path path) const {
  if (path == W4Path::kAuto) path = auto_path(w, M);
  if (path == W4Path::kCublas) return "dequant+cublas";
  const int sms = impl_->sm_count > 0 ? impl_->sm_count : 132;
  if (path == W4Path::kWgmma) {
    detail::WgmmaPlan wp;
    const detail::WgmmaConfig want{impl_->wgmma_tuning.bm, impl_->wgmma_tuning.split};
    if (detail::wgmma_plan(static_cast<int>(M), static_cast<int>(w.out), static_cast<int>(w.in),
                           static_cast<int>(w.group_size), sms, want, &wp) != cudaSuccess)
      return "wgmma (no plan)";
    return "wgmma bm=" + std::to_string(wp.cfg.bm) + " split=" + std::to_string(wp.cfg.split) + " grid=" +
           std::to_string(wp.grid.x) + "x" + std::to_string(wp.grid.y) + "x" + std::to_string(wp.grid.z);
  }
  if (path == W4Path::kGemm) {
    detail::GemmPlan gp;
    const detail::GemmConfig want{impl_->gemm_tuning.shape, impl_->gemm_tuning.split};
    if (detail::gemm_plan(act == ActType::kBF16, static_cast<int>(M), static_cast<int>(w.out),
                          static_cast<int>(w.in), sms, want, &gp) != cudaSuccess)
      return "gemm (no plan)";
    return "gemm shape=" + std::to_string(gp.cfg.shape) + " bn=" + std::to_string(detail::gemm_block_n(gp.cfg.shape)) +
           " split=" + std::to_string(gp.cfg.split) + " grid=" + std::to_string(gp.grid.x) + "x" +
           std::to_string(gp.grid.y) + "x" + std::to_string(gp.grid.z);
  }
  if (path == W4Path::kGemv) {
    detail::GemvPlan gp;
    if (detail::gemv_plan(static_cast<int>(M), static_cast<int>(w.out), static_cast<int>(w.in),
                          static_cast<int>(w.group_size), sms, impl_->gemv_want(), &gp) != cudaSuccess)
      return "gemv (no plan)";
    return std::string("gemv nt=") + std::to_string(gp.nt) + " warps=" + std::to_string(gp.cfg.warps) +
           " depth=" + std::to_string(gp.cfg.depth) + " split=" + std::to_string(gp.cfg.split) +
           (gp.fold ? " fold" : " unfolded") + " grid=" + std::to_string(gp.grid.x) + "x" +
           std::to_string(gp.grid.y) + (gp.cfg.pdl ? " pdl" : "");
  }
  detail::MmaPlan plan;
  const detail::MmaConfig want = impl_->mma_want();
  if (detail::mma_plan(act == ActType::kBF16, static_cast<int>(M), static_cast<int>(w.out), static_cast<int>(w.in),
                       sms, want, &plan) != cudaSuccess)
    return "mma (no plan)";
  return "mma nt=" + std::to_string(plan.cfg.nt) + " r=" + std::to_string(plan.cfg.r) +
         " split=" + std::to_string(plan.cfg.split) + " grid=" + std::to_string(plan.grid.x) + "x" +
         std::to_string(plan.grid.y) + "x" + std::to_string(plan.grid.z) +
         " warps=" + std::to_string(plan.cfg.warps) +
         (plan.cfg.pdl ? " pdl" : "");
}

CudaStatus W4A16Context::linear(const W4A16DeviceWeight& w, const void* x, int64_t M, ActType act, void* y,
                                void* stream_ptr, W4Path path) {
  const std::string what = "w4a16 linear: x [" + std::to_string(M) + ", " + std::to_string(w.in) + "] @ W^T " +
                           shape(w.out, w.in);
  if (!w.qweight || !w.scales) return CudaStatus::error(what + ": weight not uploaded");
  if (M <= 0 || M > (int64_t{1} << 24)) return CudaStatus::error(what + ": batch M must be in [1, 2^24]");
  if (w.out > (int64_t{1} << 30) || w.in > (int64_t{1} << 30) || M * w.in > (int64_t{1} << 40))
    return CudaStatus::error(what + ": too large");
  if (!x || !y) return CudaStatus::error(what + ": x and y must be non-null device pointers");
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0)
    return CudaStatus::error(what + ": x must be 16-byte aligned (rows of in = " + std::to_string(w.in) + " elements)");
  if (reinterpret_cast<uintptr_t>(y) % 2 != 0) return CudaStatus::error(what + ": y must be 2-byte aligned");
  QF_RETURN_IF_CUDA_ERROR(impl_->init());

  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool bf16 = act == ActType::kBF16;
  const int N = static_cast<int>(w.out), K = static_cast<int>(w.in), Mi = static_cast<int>(M);
  if (path == W4Path::kAuto) path = auto_path(w, M);
  if (path == W4Path::kWgmma) {
    if (!impl_->wgmma_ok)
      return CudaStatus::error(what + ": the wgmma path needs a compute capability 9.0 device and a build with "
                               "sm_90a device code");
    if (!detail::wgmma_supported(N, K, static_cast<int>(w.group_size)))
      return CudaStatus::error(what + ": the wgmma path needs out % 128 == 0 (use gemm or mma)");
    detail::MmaArgs a;
    a.qweight = w.qweight;
    a.scales = static_cast<const uint32_t*>(w.scales);
    a.zeros = static_cast<const uint32_t*>(w.zeros);
    a.x = x;  // the staging kernel applies the act-order gather itself
    a.y = y;
    a.M = Mi, a.N = N, a.K = K, a.group = static_cast<int>(w.group_size);
    if ((w.group_size & (w.group_size - 1)) == 0) {
      a.group_shift = 0;
      while ((int64_t{1} << a.group_shift) < w.group_size) ++a.group_shift;
    }
    detail::WgmmaPlan wp;
    const detail::WgmmaConfig want{impl_->wgmma_tuning.bm, impl_->wgmma_tuning.split};
    CUDA_CHECK(detail::wgmma_plan(Mi, N, K, a.group, impl_->sm_count, want, &wp));
    QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->xstage, wp.xs_bytes, false, stream));
    CUDA_CHECK(detail::wgmma_launch(bf16, wp, a, static_cast<const int32_t*>(w.perm), impl_->xstage.ptr, stream));
    return CudaStatus::ok();
  }
  const void* xk = x;
  if (w.perm) {  // act-order: gather x into kernel-column order
    QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->xperm, static_cast<size_t>(M) * K * 2, false, stream));
    CUDA_CHECK(detail::permute_launch(x, static_cast<const int32_t*>(w.perm), Mi, K, impl_->xperm.ptr, stream));
    xk = impl_->xperm.ptr;
  }
  if (path == W4Path::kGemv && M > kW4GemvMaxM)
    return CudaStatus::error(what + ": the gemv path takes batch M <= " + std::to_string(kW4GemvMaxM));
  if (path == W4Path::kGemm && N % 32 != 0)
    return CudaStatus::error(what + ": the gemm path needs out % 32 == 0 (use mma)");

  if (path == W4Path::kMma || path == W4Path::kGemv || path == W4Path::kGemm) {
    detail::MmaArgs a;
    a.qweight = w.qweight;
    a.scales = static_cast<const uint32_t*>(w.scales);
    a.zeros = static_cast<const uint32_t*>(w.zeros);
    a.x = xk;
    a.y = y;
    a.M = Mi, a.N = N, a.K = K, a.group = static_cast<int>(w.group_size);
    if ((w.group_size & (w.group_size - 1)) == 0) {
      a.group_shift = 0;
      while ((int64_t{1} << a.group_shift) < w.group_size) ++a.group_shift;
    }
    if (path == W4Path::kGemm) {
      detail::GemmPlan gp;
      const detail::GemmConfig want{impl_->gemm_tuning.shape, impl_->gemm_tuning.split};
      CUDA_CHECK(detail::gemm_plan(bf16, Mi, N, K, impl_->sm_count, want, &gp));
      if (gp.partial_floats) {
        QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->partial, gp.partial_floats * sizeof(float), false, stream));
        QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->counters, gp.counters * sizeof(unsigned), true, stream));
        a.partial = static_cast<float*>(impl_->partial.ptr);
        a.counters = static_cast<unsigned*>(impl_->counters.ptr);
      }
      CUDA_CHECK(detail::gemm_launch(bf16, gp, a, stream));
      return CudaStatus::ok();
    }
    if (path == W4Path::kGemv) {
      detail::GemvPlan gp;
      CUDA_CHECK(detail::gemv_plan(Mi, N, K, a.group, impl_->sm_count, impl_->gemv_want(), &gp));
      if (gp.partial_floats) {
        QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->partial, gp.partial_floats * sizeof(float), false, stream));
        QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->counters, gp.counters * sizeof(unsigned), true, stream));
        a.partial = static_cast<float*>(impl_->partial.ptr);
        a.counters = static_cast<unsigned*>(impl_->counters.ptr);
      }
      CUDA_CHECK(detail::gemv_launch(bf16, gp, a, stream));
      return CudaStatus::ok();
    }
    detail::MmaPlan plan;
    const detail::MmaConfig want = impl_->mma_want();
    CUDA_CHECK(detail::mma_plan(bf16, Mi, N, K, impl_->sm_count, want, &plan));
    if (plan.partial_floats) {
      QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->partial, plan.partial_floats * sizeof(float), false, stream));
      QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->counters, plan.counters * sizeof(unsigned), true, stream));
      a.partial = static_cast<float*>(impl_->partial.ptr);
      a.counters = static_cast<unsigned*>(impl_->counters.ptr);
    }
    CUDA_CHECK(detail::mma_launch(bf16, plan, a, stream));
    return CudaStatus::ok();
  }

  // Dequantise into the workspace, then y^T[N, M] = W[N, K] x^T[K, M] in cuBLAS's column-major terms:
  // W row-major [N, K] is K x N column-major (op T), x row-major [M, K] is K x M, y row-major [M, N] is N x M.
  QF_RETURN_IF_CUDA_ERROR(impl_->grow(&impl_->wdeq, static_cast<size_t>(N) * K * 2, false, stream));
  CUDA_CHECK(detail::dequant_launch(bf16, w.qweight, static_cast<const uint32_t*>(w.scales),
                                    static_cast<const uint32_t*>(w.zeros), N, K, static_cast<int>(w.group_size),
                                    impl_->wdeq.ptr, stream));
  CUBLAS_CHECK(cublasSetStream(impl_->cublas, stream));
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  CUBLAS_CHECK(cublasGemmEx(impl_->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, Mi, K, &alpha, impl_->wdeq.ptr, t, K, xk, t,
                            K, &beta, y, t, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return CudaStatus::ok();
}

}  // namespace qforge::cuda
