// The pipeline's per-layer backend: everything quantize_model does to one decoder layer that costs
// O(calibration tokens x weights). The driver (quant/pipeline.cpp, with awq.cpp's and gptq.cpp's drivers)
// decides what happens to a layer and in which order; a LayerOps computes it where the calibration
// activations live:
//   - the layer's forward over every calibration window (capturing the input of a linear slot, or advancing
//     the activations to the next layer),
//   - GPTQ's Hessians of a slot's input,
//   - AWQ's statistics (mean |x| per input channel), the scoring of scale candidates (awq.h AwqSearchOps),
//     the division of the captured inputs by the chosen scales and the clipping search,
//   - the report's error statistics of a quantized linear.
// Backends: make_cpu_layer_ops (the f32 reference: LlamaModel's forward and OpenBLAS, host activations) and
// make_cuda_layer_ops (quant/cuda/layer_ops_cuda.h: the activations stay on one GPU).
//
// The weights stay the model's (host f32, LayerWeights): the driver changes them in place (AWQ scales and
// clips, folded norms, quantized values) and calls load_layer again, so a backend that copies them sees the
// layer as it stands.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/llama.h"
#include "quant/awq.h"
#include "quant/quant_config.h"

namespace qforge::quant {

// Mean |x| per input channel of each slot's input (LinearInput order), over all calibration tokens.
using SlotMeans = std::array<std::vector<float>, 4>;

class LayerOps {
 public:
  virtual ~LayerOps() = default;
  // "cpu", "cuda:0 NVIDIA H100 80GB HBM3 (bf16 GEMMs)"
  virtual std::string name() const = 0;
  // Whether the backend computes on the host's BLAS (then the driver runs no host BLAS work beside it).
  virtual bool uses_host_blas() const { return false; }

  // The calibration activations entering the first layer the run works on: x [N * L, H] f32, N windows
  // of L tokens, each window at positions 0..L-1. The backend owns them from here on.
  virtual Status set_inputs(Tensor x, int64_t N, int64_t L) = 0;
  // The current activations on the host (after advance(l): the inputs of layer l + 1). The pointer stays
  // valid until the next call of any other method.
  virtual Expected<const Tensor*> host_inputs() = 0;

  // The first `rows` rows of the current activations, to the host (dst [rows, H]).
  virtual Status input_rows(int64_t rows, float* dst) = 0;

  // Layer l's weights as they stand now in the model; again after the driver changed any of them.
  virtual Status load_layer(int l) = 0;
  // Layer l's weights are final on the host until load_layer(l) (the loader just read them; the driver has not
  // touched them): a backend may start copying them now. Called on another thread while the current layer
  // computes, at most once between two load_layer calls, so it must not use what the other methods use; a
  // failure here only means that load_layer copies them itself.
  virtual Status prefetch_layer(int l) {
    (void)l;
    return Status::ok();
  }
  // Only the linears that read `slot` changed since (GPTQ quantized them): a backend may copy just those.
  virtual Status load_linears(int l, LinearInput slot) {
    (void)slot;
    return load_layer(l);
  }

  // The forward of layer l over every window up to `slot`'s input, H = 2/n sum x x^T over those inputs
  // (quant/hessian.h's running mean). H [in, in] f32 on the host. `name` prefixes errors.
  virtual Status hessian(int l, LinearInput slot, const std::string& name, Tensor* H) = 0;

  // AWQ: the forward of layer l over every window, keeping every slot's input (until awq_release) and
  // returning mean |x| per channel per slot (awq_mean_abs: a NaN/Inf input is an error naming it).
  virtual Status awq_capture(int l, const std::string& name, SlotMeans* means) = 0;
  // A scorer for the scale search of the linears `weights` (host, each [outs[i], C]) that read `slot`:
  // the module those linears feed (the attention for q/k/v, the MLP for gate/up, the linear itself for o and
  // down), run on the kept inputs of the first `windows` windows. Valid until awq_release.
  virtual Expected<std::unique_ptr<AwqSearchOps>> awq_search(int l, LinearInput slot,
                                                             std::span<const float* const> weights,
                                                             std::span<const int64_t> outs, int64_t windows,
                                                             const QuantConfig& cfg, const std::string& name) = 0;
  // The kept input of `slot` divided by s (per channel), after the scales were applied to the weights.
  virtual Status awq_scale_inputs(LinearInput slot, std::span<const float> s) = 0;
  // awq_search_clip of W [out, C] (host) on the kept (scaled) input of `slot`: max_val [out, n_groups].
  virtual Expected<Tensor> awq_clip(LinearInput slot, const float* W, int64_t out, int64_t C,
                                    const QuantConfig& cfg, const AwqOptions& opt, const std::string& name) = 0;
  // Drops the kept inputs.
  virtual void awq_release() = 0;

  // The report's statistics of a quantized linear: mean (w - q)^2, and with H, tr((W-Q) H (W-Q)^T) / 2.
  virtual Status linear_errors(const float* W, const Tensor& Q, const Tensor* H, double* weight_mse,
                               double* output_error) = 0;

  // x <- layer l (x) for every window, with the layer's weights as last loaded.
  virtual Status advance(int l) = 0;

  // A device pointer holding the same n floats as `host` (a weight of the current layer as last loaded, or the
  // host copy of the last Hessian), for a GPU step that would otherwise copy them again; null when the backend
  // holds no such copy (always, on the CPU).
  virtual const float* device_copy(const float* host, int64_t n) const {
    (void)host;
    (void)n;
    return nullptr;
  }
};

// The reference backend on `model` (whose weights it reads in place: load_layer is a no-op).
std::unique_ptr<LayerOps> make_cpu_layer_ops(const LlamaModel& model);

}  // namespace qforge::quant
