#include "quant/cuda/gptq_cuda_ops.h"

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#if QFORGE_HAVE_CUDA
#include "kernels/cuda/gptq_cuda.h"
#endif

namespace qforge::quant {

#if QFORGE_HAVE_CUDA
namespace {

static_assert(sizeof(cuda::GptqGrid) == sizeof(GroupParams) &&
                  offsetof(cuda::GptqGrid, scale) == offsetof(GroupParams, scale) &&
                  offsetof(cuda::GptqGrid, zero) == offsetof(GroupParams, zero),
              "cuda::GptqGrid must be laid out as quant::GroupParams (arrays are passed through as is)");

Status from_cuda(const cuda::CudaStatus& s) {
  return s.is_ok() ? Status::ok() : Status::error(s.message());
}

class CudaGptqOps final : public GptqOps {
 public:
  explicit CudaGptqOps(std::unique_ptr<cuda::GptqDevice> dev) : dev_(std::move(dev)) {}
  const char* name() const override { return dev_->name().c_str(); }

  Status load(const GptqPlan& p) override {
    out_ = p.out;
    in_ = p.in;
    n_groups_ = p.n_groups;
    const cuda::GptqGridRule rule{.bits = p.cfg.bits,
                                  .group_size = p.cfg.group_size,
                                  .sym = p.cfg.sym,
                                  .awq = p.cfg.grid == QuantGrid::kAwq};
    return from_cuda(dev_->load(p.W, p.H, p.out, p.in, rule, p.n_groups, p.perm.data(), p.diag.data(),
                                p.dead.data(), p.group_of.data(), p.grid_start.data(),
                                reinterpret_cast<const cuda::GptqGrid*>(p.grids.data())));
  }
  Expected<bool> inverse_hessian_factor(double damp) override {
    bool pd = false;
    QF_RETURN_IF_ERROR(from_cuda(dev_->factor(damp, &pd)));
    return pd;
  }
  Status quantize_block(int64_t begin, int64_t end) override {
    return from_cuda(dev_->quantize_block(begin, end));
  }
  Status trailing_update(int64_t begin, int64_t end) override {
    return from_cuda(dev_->trailing_update(begin, end));
  }
  Status fetch(GptqSweep* dst) override {
    dst->codes.resize(size_t(out_ * in_));
    dst->grids.resize(size_t(out_ * n_groups_));
    dst->block_row_loss.resize(size_t(dev_->n_blocks() * out_));
    return from_cuda(dev_->fetch(dst->codes.data(), reinterpret_cast<cuda::GptqGrid*>(dst->grids.data()),
                                 dst->block_row_loss.data()));
  }

 private:
  std::unique_ptr<cuda::GptqDevice> dev_;
  int64_t out_ = 0, in_ = 0, n_groups_ = 0;
};

}  // namespace

bool cuda_gptq_compiled() {
  return true;
}

Expected<std::unique_ptr<GptqOps>> make_cuda_gptq_ops(int device) {
  std::unique_ptr<cuda::GptqDevice> dev;
  const cuda::CudaStatus s = cuda::GptqDevice::create(device, &dev);
  if (!s) return error("GPTQ on CUDA: {}", s.message());
  return std::unique_ptr<GptqOps>(std::make_unique<CudaGptqOps>(std::move(dev)));
}

#else

bool cuda_gptq_compiled() {
  return false;
}

Expected<std::unique_ptr<GptqOps>> make_cuda_gptq_ops(int device) {
  return error("GPTQ on CUDA (device {}): this build has no CUDA (nvcc was not found at configure time)",
               device);
}

#endif

}  // namespace qforge::quant
