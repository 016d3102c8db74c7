// GGUF v3 writer: metadata of every value type (arrays included, values copied from an opened GgufFile
// kept as they are), and tensors whose bytes are either owned or produced on demand by a callback, so a
// large model is never held twice. The file is written atomically (path.tmp.<pid>, fsync, rename).
//
// Layout written (little-endian; the same as the reader's, see gguf.cpp):
//   u32 "GGUF", u32 3, u64 tensor_count, u64 kv_count, kv_count x { string key, u32 type, value },
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   zero padding to `alignment`, then each tensor's data at its offset (relative to the data section,
//   a multiple of `alignment`), each followed by zero padding to the next multiple.
// `alignment` is general.alignment when set (set_alignment writes it as uint32), else 32.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "formats/gguf.h"

namespace qforge::gguf {

// Fills `out` (exactly the tensor's byte size) with the tensor's data; called once, during write().
// write() lays out the header (tensor infos, offsets, alignment) from names, types and dims alone, then
// produces the data in file order, which is the order the tensors were added: one tensor at a time, each
// fill called once and only after every earlier tensor was written, none after the first error. A caller
// can therefore bring the data of a group of tensors (a decoder layer) into memory in the fill of its
// first tensor and drop it after the last; at most one tensor's bytes are buffered by the writer.
using TensorBytesFn = std::function<Status(std::span<uint8_t> out)>;

class GgufWriter {
 public:
  // Metadata, written in the order first set; setting a key again replaces its value in place.
  void set_uint8(std::string_view key, uint8_t v);
  void set_int8(std::string_view key, int8_t v);
  void set_uint16(std::string_view key, uint16_t v);
  void set_int16(std::string_view key, int16_t v);
  void set_uint32(std::string_view key, uint32_t v);
  void set_int32(std::string_view key, int32_t v);
  void set_uint64(std::string_view key, uint64_t v);
  void set_int64(std::string_view key, int64_t v);
  void set_float32(std::string_view key, float v);
  void set_float64(std::string_view key, double v);
  void set_bool(std::string_view key, bool v);
  void set_string(std::string_view key, std::string v);
  void set_string_array(std::string_view key, const std::vector<std::string>& v);
  void set_int32_array(std::string_view key, const std::vector<int32_t>& v);
  void set_int64_array(std::string_view key, const std::vector<int64_t>& v);
  void set_float32_array(std::string_view key, const std::vector<float>& v);
  // Any value, e.g. one copied from an opened file (f.find(key)); arrays may nest. Checked at write().
  void set_value(std::string_view key, Value v);
  // Copies one key from `f` with its exact type; an error names the file and key when it is missing.
  Status copy_value(const GgufFile& f, std::string_view key);
  void remove(std::string_view key);
  const Value* find(std::string_view key) const;

  // Sets general.alignment (uint32, a power of two); tensor data offsets are multiples of it.
  void set_alignment(uint32_t alignment) { set_uint32("general.alignment", alignment); }

  // Tensors, written in the order added. ne is in ggml order (ne[0] contiguous), 1..4 dims, each
  // positive, ne[0] a multiple of the type's block size. Errors name the tensor: duplicate name, bad
  // dims, unknown type, or (owned bytes) a byte size that does not match type and ne.
  Status add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, std::vector<uint8_t> data);
  // The bytes come from `fill` at write() time, one tensor at a time.
  Status add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, TensorBytesFn fill);

  size_t tensor_count() const { return tensors_.size(); }

  // Writes the file to path + ".tmp.<pid>", fsyncs it, renames it to `path`. On any error (a fill
  // callback's included, which is reported with the tensor's name) the temporary file is removed and
  // nothing exists at `path` that was not there before.
  Status write(const std::string& path) const;

 private:
  struct PendingTensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    uint64_t nbytes;
    std::vector<uint8_t> data;  // owned bytes, or empty when `fill` is set
    TensorBytesFn fill;
  };
  Expected<uint64_t> check_tensor(const std::string& name, GgmlType type,
                                  const std::vector<int64_t>& ne) const;

  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace qforge::gguf
