// Layer-at-a-time access to a model's decoder layers, so that quantization and checkpoint writing hold one
// layer in memory instead of all of them. An owner (the loader for the input, the quantize run's state
// directory for the output) materializes layer l into the ModelWeights (and, for packed formats, the
// QuantizedLinears) on load(l) and frees it on release(l). Users touch layers in increasing order, each once:
// load(l), read layer l, release(l), load(l + 1), ...
#pragma once

#include <functional>

#include <fmt/format.h>

#include "core/status.h"

namespace qforge {

struct LayerStream {
  std::function<Status(int layer)> load;
  std::function<void(int layer)> release;
};

// Drives a LayerStream from a writer that produces tensors one at a time in layer order (e.g. embedding,
// layer 0, ..., layer n-1, final norm, lm_head): enter(l) before a tensor of layer l releases the layer loaded
// before it and loads l; enter(-1) (a tensor outside the layers) only releases. A layer asked for again, or out of
// order, is an error. The destructor releases what is still loaded. A null stream makes every call a no-op.
class LayerCursor {
 public:
  explicit LayerCursor(const LayerStream* stream) : stream_(stream) {}
  LayerCursor(const LayerCursor&) = delete;
  LayerCursor& operator=(const LayerCursor&) = delete;
  ~LayerCursor() { release(); }

  Status enter(int layer) {
    if (!stream_ || layer == loaded_) return Status::ok();
    release();
    if (layer < 0) return Status::ok();
    if (layer <= last_)
      return error(
          "model.layers.{} needed again after model.layers.{}: layers stream once, in increasing order",
          layer, last_);
    last_ = layer;
    QF_RETURN_IF_ERROR(stream_->load(layer).with_context(fmt::format("loading model.layers.{}", layer)));
    loaded_ = layer;
    return Status::ok();
  }
  void release() {
    if (loaded_ < 0) return;
    const int l = loaded_;
    loaded_ = -1;
    stream_->release(l);
  }

 private:
  const LayerStream* stream_;
  int loaded_ = -1;  // the layer loaded now, -1 for none
  int last_ = -1;    // the last layer loaded
};

}  // namespace qforge
