// safetensors reader (zero-copy views over mmap) and writer (atomic), single file or sharded
// (model.safetensors.index.json). Bounds-checked: errors name the file, the tensor and the offset.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace qforge::safetensors {

// Largest JSON header accepted, as in the reference implementation (MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorEntry {
  std::string name;
  // Points into the map (read-only data; do not write through it). Aligned to the element size when the
  // writer padded the header to 8 bytes and ordered tensors by width (the reference and our Writer do);
  // other files may yield misaligned views, which are accepted: copy out rather than dereference then.
  TensorView view;
  uint64_t data_begin = 0;     // offsets relative to the data section, as in the header
  uint64_t data_end = 0;
};

class File {
 public:
  static Expected<File> open(const std::string& path);
  const std::string& path() const { return file_.path(); }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

 private:
  MappedFile file_;
  std::vector<TensorEntry> tensors_;       // sorted by data_begin
  std::map<std::string, size_t> by_name_;  // name -> index into tensors_
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or the shards listed by model.safetensors.index.json.
class Checkpoint {
 public:
  static Expected<Checkpoint> open_dir(const std::string& dir);
  const TensorEntry* find(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::vector<std::unique_ptr<File>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<File>> files_;
  std::map<std::string, const TensorEntry*> index_;
};

// Collects tensors (views the caller keeps alive until write()) and writes them atomically.
class Writer {
 public:
  // Tensor must be contiguous. Names must be unique (error otherwise).
  Status add(const std::string& name, const TensorView& view);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // One file at path (written to a temporary and renamed). The header lists "__metadata__" first, then
  // the tensors in data order: by dtype width (I64, F32, I32, BF16, F16, I8, U8), then name, as the
  // reference writer does, so every view of a file we write is aligned to its element size.
  Status write(const std::string& path) const;
  // Shards of at most max_shard_bytes in dir: model-0000i-of-0000n.safetensors plus
  // model.safetensors.index.json; a single model.safetensors when everything fits in one.
  Status write_sharded(const std::string& dir, uint64_t max_shard_bytes) const;

 private:
  std::vector<std::pair<std::string, TensorView>> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace qforge::safetensors
