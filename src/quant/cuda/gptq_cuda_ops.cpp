#include "quant/cuda/gptq_cuda_ops.h"

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#if QFORGE_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <string_view>

#include "core/trace.h"
#include "kernels/cuda/gptq_cuda.h"
#endif

namespace qforge::quant {

#if QFORGE_HAVE_CUDA
namespace {

static_assert(sizeof(cuda::GptqGrid) == sizeof(GroupParams) &&
                  offsetof(cuda::GptqGrid, scale) == offsetof(GroupParams, scale) &&
                  offsetof(cuda::GptqGrid, zero) == offsetof(GroupParams, zero),
              "cuda::GptqGrid must be laid out as quant::GroupParams (arrays are passed through as is)");

// QFORGE_GPU_TRACE=1: each step's wall time to stderr (the steps that return results synchronise anyway; the
// others are drained first, profiling only).
struct StepTrace {
  const char* what;
  const cuda::GptqDevice& dev;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  ~StepTrace() {
    if (!trace_enabled()) return;
    cudaStreamSynchronize(static_cast<cudaStream_t>(dev.stream()));
    fmt::print(stderr, "[gpu] gptq {:<23} {:9.2f} ms\n", what,
               std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
};

Status from_cuda(const cuda::CudaStatus& s) {
  return s.is_ok() ? Status::ok() : Status::error(s.message());
}

class CudaGptqOps final : public GptqOps {
 public:
  CudaGptqOps(std::unique_ptr<cuda::GptqDevice> dev, DeviceCopyFn device_copy)
      : dev_(std::move(dev)), device_copy_(std::move(device_copy)) {}
  const char* name() const override { return dev_->name().c_str(); }

  Status load(const GptqPlan& p) override {
    StepTrace tr{"load", *dev_};
    hessian_id_ = p.hessian_id;
    if (p.hessian_id == 0 || p.hessian_id != factored_id_ || p.in != in_) factored_id_ = 0;
    out_ = p.out;
    in_ = p.in;
    n_groups_ = p.n_groups;
    const cuda::GptqGridRule rule{.bits = p.cfg.bits,
                                  .group_size = p.cfg.group_size,
                                  .sym = p.cfg.sym,
                                  .awq = p.cfg.grid == QuantGrid::kAwq};
    const float* W = p.W;
    const float* H = p.H;
    if (device_copy_) {
      if (const float* d = device_copy_(p.W, p.out * p.in)) W = d;
      if (const float* d = device_copy_(p.H, p.in * p.in)) H = d;
    }
    return from_cuda(dev_->load(W, H, p.out, p.in, rule, p.n_groups, p.perm.data(), p.diag.data(),
                                p.dead.data(), p.group_of.data(), p.grid_start.data(),
                                reinterpret_cast<const cuda::GptqGrid*>(p.grids.data())));
  }
  // The same Hessian (GptqOptions::hessian_id) with the same damping as the last successful factorization: U is
  // still in the device's buffer (load does not touch it), so it is not computed again.
  Expected<bool> inverse_hessian_factor(double damp) override {
    StepTrace tr{"factor", *dev_};
    if (factored_id_ != 0 && factored_id_ == hessian_id_ && damp == factored_damp_) return true;
    bool pd = false;
    factored_id_ = 0;
    QF_RETURN_IF_ERROR(from_cuda(dev_->factor(damp, &pd)));
    if (pd && hessian_id_ != 0) {
      factored_id_ = hessian_id_;
      factored_damp_ = damp;
    }
    return pd;
  }
  Status quantize_block(int64_t begin, int64_t end) override {
    return from_cuda(dev_->quantize_block(begin, end));
  }
  Status trailing_update(int64_t begin, int64_t end) override {
    return from_cuda(dev_->trailing_update(begin, end));
  }
  Status fetch(GptqSweep* dst) override {
    StepTrace tr{"sweep+fetch", *dev_};
    dst->codes.resize(size_t(out_ * in_));
    dst->grids.resize(size_t(out_ * n_groups_));
    dst->block_row_loss.resize(size_t(dev_->n_blocks() * out_));
    return from_cuda(dev_->fetch(dst->codes.data(), reinterpret_cast<cuda::GptqGrid*>(dst->grids.data()),
                                 dst->block_row_loss.data()));
  }

 private:
  std::unique_ptr<cuda::GptqDevice> dev_;
  DeviceCopyFn device_copy_;
  int64_t out_ = 0, in_ = 0, n_groups_ = 0;
  uint64_t hessian_id_ = 0, factored_id_ = 0;
  double factored_damp_ = 0;
};

}  // namespace

bool cuda_gptq_compiled() {
  return true;
}

Expected<std::unique_ptr<GptqOps>> make_cuda_gptq_ops(int device, DeviceCopyFn device_copy) {
  std::unique_ptr<cuda::GptqDevice> dev;
  const cuda::CudaStatus s = cuda::GptqDevice::create(device, &dev);
  if (!s) return error("GPTQ on CUDA: {}", s.message());
  return std::unique_ptr<GptqOps>(std::make_unique<CudaGptqOps>(std::move(dev), std::move(device_copy)));
}

#else

bool cuda_gptq_compiled() {
  return false;
}

Expected<std::unique_ptr<GptqOps>> make_cuda_gptq_ops(int device, DeviceCopyFn) {
  return error("GPTQ on CUDA (device {}): this build has no CUDA (nvcc was not found at configure time)",
               device);
}

#endif

}  // namespace qforge::quant
