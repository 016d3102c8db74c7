// Layer-at-a-time access to a model's decoder layers, so that quantization and checkpoint writing hold one
// layer in memory instead of all of them. An owner (the loader for the input, the quantize run's state
// directory for the output) materializes layer l into the ModelWeights (and, for packed formats, the
// QuantizedLinears) on load(l) and frees it on release(l). Users touch layers in increasing order, each once:
// load(l), read layer l, release(l), load(l + 1), ...
#pragma once

#include <functional>

#include "core/status.h"

namespace qforge {

struct LayerStream {
  std::function<Status(int layer)> load;
  std::function<void(int layer)> release;
};

}  // namespace qforge
