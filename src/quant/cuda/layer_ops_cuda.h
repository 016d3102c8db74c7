// The CUDA backend of the pipeline's per-layer work (quant/layer_ops.h): the calibration activations live on
// one GPU for the whole run; the layer forward is kernels/cuda/llama_layer_cuda.h, the Hessians
// kernels/cuda/gptq_cuda.h's HessianDevice, AWQ's statistics, scoring, clip search and the error statistics
// kernels/cuda/awq_cuda.h. Only the Hessians (for the GPTQ driver), AWQ's per-channel means, the clip values,
// and the activations at a layer boundary (for --resume) come back to the host.
// Always declared; without CUDA compiled in, make_cuda_layer_ops is an error.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "core/status.h"
#include "quant/layer_ops.h"

namespace qforge::quant {

// The GEMM precision of the GPU forward (kernels/cuda/llama_layer_cuda.h LayerGemm): f32 (SGEMM, the CPU's
// arithmetic up to summation order), tf32 (f32 storage, TF32 tensor cores) or bf16 (bf16 weights and GEMM
// inputs, f32 accumulation and outputs). With bf16 the GPTQ Hessians are built from the bf16-rounded inputs
// too, i.e. from what the linears see.
enum class GpuGemm { kF32, kTF32, kBF16 };
const char* gpu_gemm_name(GpuGemm g);

// Device bytes a run will hold at its peak: the engine (activations, one layer's weights, its workspace),
// AWQ's kept inputs (when `awq`), the largest Hessian and GPTQ's working set (when `gptq`). An estimate for
// the up-front check; the allocations themselves still report their own out-of-memory.
int64_t cuda_pipeline_bytes(const ModelConfig& c, int64_t windows, int64_t seqlen, GpuGemm gemm, bool awq,
                            bool gptq);

// A LayerOps on CUDA device `device` for `model` (whose weights it uploads on load_layer). Errors: no usable
// GPU, no CUDA in this build.
Expected<std::unique_ptr<LayerOps>> make_cuda_layer_ops(const LlamaModel& model, int device, GpuGemm gemm);

// Several GPUs of this host (devices.size() >= 2; one is the overload above): the calibration windows dealt
// round-robin over them, each GPU running the layer forward on its own windows, Hessians and AWQ's statistics
// combined with NCCL (loaded at run time: quant/cuda/nccl_comm.h), GPTQ's solves on devices[0]. What is combined
// where: layer_ops_cuda.cpp, "several GPUs". Errors: NCCL missing, a GPU missing or listed twice, and (at
// set_inputs) fewer calibration windows than GPUs.
Expected<std::unique_ptr<LayerOps>> make_cuda_layer_ops(const LlamaModel& model, std::span<const int> devices,
                                                        GpuGemm gemm);

// The number of CUDA devices this process sees (for --device cuda:all).
Expected<int> cuda_device_count();

// Free and total device memory of `device`, for the up-front check.
Status cuda_device_memory(int device, int64_t* free_bytes, int64_t* total_bytes);

}  // namespace qforge::quant
