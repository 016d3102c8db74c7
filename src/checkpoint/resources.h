// What a `qforge quantize` run needs, estimated from the model's config before anything is loaded, and what
// the machine has (MemAvailable, free disk at the output), so a run that cannot finish is refused up front.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "model/config.h"

namespace qforge::checkpoint {

struct ResourceEstimate {
  uint64_t memory_bytes = 0;  // peak: f32 weights + calibration activations + one layer's captures/Hessians
  uint64_t disk_bytes = 0;    // output + run state (per-layer files and activations)
  std::string breakdown;      // human-readable, for the messages
};

// Config of a .gguf file or a Hugging Face directory, read without loading the weights.
Expected<ModelConfig> peek_model_config(const std::string& path);

// packed: the output holds 4-bit codes (awq/gptq/gguf) rather than f32 weights.
// stream_layers: the run holds one decoder layer at a time (LoadOptions::stream_layers), not all of them.
ResourceEstimate estimate_quantize_resources(const ModelConfig& c, int64_t calib_windows, int64_t calib_seqlen,
                                             bool packed, bool stream_layers = false);

// OK when the machine has what `e` says (memory from /proc/meminfo MemAvailable, disk from statvfs of the
// output's nearest existing parent); otherwise an error that says how much is needed, how much there is, and
// what to lower.
Status check_resources(const ResourceEstimate& e, const std::string& out_path);

}  // namespace qforge::checkpoint
