// The state of a `qforge quantize` run, kept beside the output so an interrupted run can be resumed and
// end with the same bytes as an uninterrupted one (the pipeline is deterministic):
//   DIR/run.json                  what the run is (a fingerprint of the model, method and settings); a resume
//                                 with other settings is refused
//   DIR/layer-NNNN.safetensors    decoder layer N as quantized: every tensor of the layer (f32, AWQ folds
//                                 included), its quantized linears (codes U8, scales/zeros F32, g_idx I32) and,
//                                 in the metadata, its report entries
//   DIR/activations.safetensors   the inputs of the next layer, with next_layer in the metadata
// Every file is written atomically (temporary + rename), a layer's file before the activations that point
// past it, so a kill at any moment leaves a state that resumes at the last completed layer.
// The layer files are also where the checkpoint writers read the quantized layers back from, one at a time
// (layer_stream), so a run never holds more than one decoder layer.
#pragma once

#include <string>

#include "core/status.h"
#include "model/layer_stream.h"
#include "model/llama.h"
#include "quant/pipeline.h"

namespace qforge::checkpoint {

class QuantizeState {
 public:
  // Opens DIR: creates it for a new run; for a resume, checks run.json equals `fingerprint` (an error otherwise
  // says which run the state belongs to). A new run over an existing DIR is an error that suggests --resume.
  static Expected<QuantizeState> open(const std::string& dir, const std::string& fingerprint, bool resume);

  // Persists layer l (after it was quantized and the next layer's inputs computed).
  Status save_layer(const LlamaModel& model, const quant::QuantizedLinears* quantized, int l,
                    const quant::PipelineReport& so_far, const Tensor& next_inputs) const;
  // Where to continue (next_layer 0 when nothing was saved), with the saved activations and the report entries
  // of the saved layers. The layers themselves stay on disk (load_layer reads them).
  Expected<quant::PipelineResume> restore(const ModelConfig& config) const;
  // Reads saved layer l into the model's layer l (f32 tensors) and, when non-null, quantized->layers[l].
  Status load_layer(LlamaModel& model, quant::QuantizedLinears* quantized, int l) const;
  // load(l) = load_layer, release(l) empties layer l of the model and of `quantized` again: what the checkpoint
  // writers read the quantized model through. Keeps pointers to model and quantized.
  LayerStream layer_stream(LlamaModel& model, quant::QuantizedLinears* quantized) const;
  // Removes DIR once the output is complete.
  void remove() const;

  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace qforge::checkpoint
