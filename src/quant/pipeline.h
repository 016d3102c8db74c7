// The sequential, memory-bounded quantization pipeline (as the GPTQ reference runs it): the inputs of
// decoder layer 0 are computed once from the calibration windows; for each layer, the inputs of its
// linears are captured, the linears quantized (in true-sequential order for GPTQ: q,k,v -> o -> gate,up
// -> down, each stage seeing the outputs of the already quantized ones), and the layer's outputs are
// recomputed with the quantized weights to feed the next layer. Only one layer's activations live at a
// time. The model's weights are replaced in place by their dequantized values.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/layer_stream.h"
#include "model/llama.h"
#include "quant/awq.h"
#include "quant/cuda/layer_ops_cuda.h"
#include "quant/gptq.h"
#include "quant/quant_config.h"

namespace qforge::quant {

// kAwq: AWQ scales (folded into the preceding norm or linear) and clipping, then RTN.
// kAwqGptq: AWQ scales and clipping first, then GPTQ on the scaled weights.
enum class Method { kRtn, kGptq, kAwq, kAwqGptq };
const char* method_name(Method m);

// Ablation of AWQ's premise: which input channels count as salient.
enum class SalientBy { kActivation, kWeight, kRandom };
const char* salient_by_name(SalientBy b);

// Where the per-layer work runs (quant/layer_ops.h): kCpu, the f32 reference; kCuda, one GPU, which holds the
// calibration activations for the whole run and does the layer forwards, the Hessians, AWQ's statistics,
// scale scoring and clip search, the error statistics (quant/cuda/layer_ops_cuda.h) and GPTQ's solves (quant/gptq.h
// GptqOps). The drivers (which layer, which slot, which alpha, damping, grids) are the same code on both. The
// two devices' results are equally good quantizations, not the same codes: the forward's summation order (and
// with bf16/tf32 GEMMs its rounding) differs, and every later Hessian of the sequential pipeline sees the
// difference (docs/gpu-pipeline.md measures it).
enum class Device { kCpu, kCuda };

// --device: "cpu", "cuda" (GPU 0), "cuda:N", "cuda:N,M,..." (several GPUs of this host) or "cuda:all". Sets
// *device and *cuda_devices; errors name the flag and the part that is wrong. device_name() gives the canonical
// spelling back ("cpu", "cuda", "cuda:0,1").
Status parse_device(std::string_view spec, Device* device, std::vector<int>* cuda_devices);
std::string device_name(Device device, const std::vector<int>& cuda_devices);

struct PipelineOptions {
  Method method = Method::kGptq;
  // kCuda: everything above on the GPUs `cuda_devices`, set up once per run before any layer is touched (with a
  // check of the GPU memory the run needs on each); a build without CUDA, a machine without a usable GPU or too
  // little GPU memory is an error that names the first linear it would have served. Several GPUs: the
  // calibration windows are split between them, Hessians and AWQ's statistics combined with NCCL, GPTQ's solves
  // on the first (quant/cuda/layer_ops_cuda.h); the codes then differ from one GPU's by summation order only.
  Device device = Device::kCpu;
  std::vector<int> cuda_devices = {0};
  GpuGemm gpu_gemm = GpuGemm::kBF16;  // the GPU forward's GEMM precision
  QuantConfig quant;
  GptqOptions gptq;
  AwqOptions awq;
  // AWQ's scale search runs each candidate through the block on the first `awq_search_samples`
  // calibration windows (0: all); the activation statistics and the clipping search use all windows.
  int64_t awq_search_samples = 0;
  bool awq_clip = true;
  // Ablation: instead of searching alpha, scale every channel with this fixed alpha (< 0: search).
  double awq_fixed_alpha = -1;
  // Ablation (RTN only): keep this fraction of each linear's input channels in full precision, chosen by
  // mean |activation| (needs calibration), by mean |weight| of the column, or at random (seeded).
  double keep_fp_fraction = 0;
  SalientBy keep_fp_by = SalientBy::kActivation;
  uint64_t seed = 0;
  bool progress = true;
};

// What AWQ did to one group of linears sharing an input.
struct AwqGroupReport {
  int layer = 0;
  std::string name;       // "model.layers.3.mlp.gate_proj+up_proj"
  std::string fold_into;  // "model.layers.3.post_attention_layernorm" or a linear; "" when skipped
  std::string skipped;    // why the group was not scaled ("" when it was)
  double best_alpha = 0;
  double err_before = 0;  // block output error of plain RTN (s = 1)
  double err_after = 0;   // at the chosen alpha
  std::vector<std::pair<int64_t, float>> top_scales;  // largest scales with their input channels
};

struct LinearReport {
  std::string name;   // "model.layers.3.mlp.down_proj"
  int layer = 0;
  int64_t out = 0, in = 0;
  // Output error proxy on the calibration inputs: tr((W - Q) H (W - Q)^T) / 2 with H = 2/n sum x x^T,
  // i.e. the mean over calibration tokens of ||(W - Q) x||^2 (0 when no calibration ran: RTN).
  double output_error = 0;
  double gptq_loss = 0;       // GPTQ's own loss sum (GPTQ only)
  double damp_percent = 0;    // GPTQ: damping actually used
  int64_t dead_columns = 0;   // GPTQ: inputs never active in the calibration set
  double weight_mse = 0;      // mean (w - q)^2
  double seconds = 0;
};

// Wall seconds per step, summed over layers (a GPU step is counted until its results are back on the host, so
// asynchronous work may land in the next step's time).
struct PipelineTimes {
  double load = 0;         // layer weights read (LayerStream) and handed to the backend
  double hessians = 0;     // GPTQ: forwards up to each slot + Hessian accumulation
  double gptq = 0;         // GPTQ's solves (gptq_quantize), dequantization included
  double rtn = 0;          // RTN of every linear
  double awq_capture = 0;  // AWQ: the forward keeping every slot's input, and mean |x|
  double awq_search = 0;   // AWQ: scale search (candidates scored), apply and fold, the equivalence check
  double awq_clip = 0;     // AWQ: clip search and apply
  double errors = 0;       // the report's error statistics
  double advance = 0;      // the layer's outputs with its linears quantized
};

struct PipelineReport {
  std::vector<LinearReport> linears;
  PipelineTimes times;
  std::vector<AwqGroupReport> awq_groups;
  double seconds = 0;
  int64_t calibration_tokens = 0;
};

// Validates every linear against the config first (a group size that does not divide a layer is an
// error naming the layer), then quantizes. `calibration` may be empty for RTN.
// Resuming an interrupted run: the caller has put layers [0, next_layer) back as they were after quantization
// (weights, folded norms; their quantized linears and report entries) and `x` holds the inputs of layer
// next_layer ([windows * seqlen, hidden]; empty for RTN without calibration). The pipeline is deterministic, so
// the result equals an uninterrupted run.
struct PipelineResume {
  int next_layer = 0;
  Tensor x;
  PipelineReport report;  // entries of the layers already done
};
// Called after each layer l with the report so far and the inputs of layer l + 1 (empty without calibration),
// so a caller can persist the run; an error stops the pipeline.
using LayerDoneFn = std::function<Status(int layer, const PipelineReport& so_far, const Tensor& next_inputs)>;

// With `quantized` non-null, the quantized linears are kept there (the ablation keep_fp_fraction cannot be
// kept: its weights are not on the grid).
// With `layers`, the model's decoder layers are not in memory: the pipeline calls layers->load(l) before it
// works on layer l and layers->release(l) after on_layer_done(l) (which must have saved what the caller needs,
// the layer's weights and quantized linears), so one layer is held at a time (two with Device::kCuda: there
// load(l + 1) runs on another thread while layer l is processed, so it must not touch other layers' tensors).
Expected<PipelineReport> quantize_model(LlamaModel& model, const std::vector<std::vector<int32_t>>& calibration,
                                        const PipelineOptions& opt, QuantizedLinears* quantized = nullptr,
                                        PipelineResume* resume = nullptr, const LayerDoneFn& on_layer_done = nullptr,
                                        const LayerStream* layers = nullptr);

}  // namespace qforge::quant
