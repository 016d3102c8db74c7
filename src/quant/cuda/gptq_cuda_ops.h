// The CUDA backend of the GPTQ driver (quant/gptq.h GptqOps), over qforge::cuda::GptqDevice
// (kernels/cuda/gptq_cuda.h). Always declared; without CUDA compiled in, make_cuda_gptq_ops is an error.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "core/status.h"
#include "quant/gptq.h"

namespace qforge::quant {

// Whether this build has the CUDA backend (nvcc was found at configure time).
bool cuda_gptq_compiled();

// A GptqOps on CUDA device `device`: f64 cuSOLVER factorization, the sweep kernel, f32 SGEMM updates
// (precision and why: kernels/cuda/gptq_cuda.h). Errors: "GPTQ on CUDA: no usable CUDA device (...)",
// or "... not compiled in". Blocks larger than 128 columns are refused by quantize_block.
// One object serves one layer at a time and keeps its buffers for the next.
// device_copy (optional): maps a host array the driver hands over (W [out, in], H [in, in]) to a device pointer
// with the same contents, or null (e.g. LayerOps::device_copy); then it is not uploaded again.
using DeviceCopyFn = std::function<const float*(const float* host, int64_t n)>;
Expected<std::unique_ptr<GptqOps>> make_cuda_gptq_ops(int device = 0, DeviceCopyFn device_copy = nullptr);

}  // namespace qforge::quant
