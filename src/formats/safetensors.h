// safetensors reader (zero-copy views over mmap) and writer (atomic), single file or sharded
// (model.safetensors.index.json). Bounds-checked: errors name the file, the tensor and the offset.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
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

// Receives the next bytes of a streamed tensor, in order; the pieces of one tensor add up to its byte size.
using ByteSink = std::function<Status(std::span<const uint8_t> bytes)>;
// Produces a streamed tensor's bytes (dtype and shape as added, row-major) by calling `sink` any number of
// times; called once per write, during write() / write_sharded().
using TensorFillFn = std::function<Status(const ByteSink& sink)>;

// Collects tensors and writes them atomically. A tensor is either a view the caller keeps alive until
// write() (add), or streamed: known by name, dtype and shape when added, its bytes produced by a callback at
// write time (add_streamed), so a caller never needs every tensor in memory at once.
//
// Writing: every file's header is computed from names, dtypes and shapes alone and written first; then the
// tensors' bytes are produced in the order the tensors were ADDED (views copied, fills called, each once),
// one tensor at a time, each written at its own place in its file. That place follows from the layout below
// (dtype width, then name), so the order of production is the caller's to choose: a model written one
// decoder layer at a time adds the layers' tensors in layer order and may free each layer once its last
// tensor was produced. The files are the same bytes whether tensors were added as views or streamed.
class Writer {
 public:
  // Tensor must be contiguous. Names must be unique (error otherwise).
  Status add(const std::string& name, const TensorView& view);
  // A tensor whose bytes come from `fill` at write time. Same name and shape rules as add(); a fill that
  // fails, or produces more or fewer bytes than dtype and shape take, fails the write (error naming the
  // tensor) and leaves no file of that write behind.
  Status add_streamed(const std::string& name, DType dtype, const Shape& shape, TensorFillFn fill);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // One file at path (written to a temporary and renamed). The header lists "__metadata__" first, then
  // the tensors in data order: by dtype width (I64, F32, I32, BF16, F16, I8, U8), then name, as the
  // reference writer does, so every view of a file we write is aligned to its element size.
  Status write(const std::string& path) const;
  // Shards of at most max_shard_bytes in dir: model-0000i-of-0000n.safetensors plus
  // model.safetensors.index.json; a single model.safetensors when everything fits in one. Shards are split
  // greedily in name order (a tensor larger than the limit gets a shard of its own). All shards are written
  // to temporaries and renamed only once every tensor was produced; the index goes last.
  Status write_sharded(const std::string& dir, uint64_t max_shard_bytes) const;

 private:
  struct Entry {
    std::string name;
    DType dtype = DType::kF32;
    Shape shape;
    uint64_t nbytes = 0;
    const void* data = nullptr;  // add(): the caller's bytes [nbytes]
    TensorFillFn fill;           // add_streamed(): produces the bytes at write time
  };
  struct OutFile {
    std::string path;
    std::vector<size_t> entries;  // indices into tensors_
  };
  Status check_new(const std::string& name, const Shape& shape) const;
  // Writes each file of `files` (every entry in exactly one), producing entries in the order added.
  Status write_files(const std::vector<OutFile>& files) const;

  std::vector<Entry> tensors_;  // in the order added
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace qforge::safetensors
