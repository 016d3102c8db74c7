// GGUF v2/v3 reader over a memory map: metadata of every type (arrays included), tensor infos,
// alignment, and dequantization of tensors to f32. Every read is bounds-checked; a malformed file
// gives an error naming the file, the key or tensor, and the byte offset.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace qforge::gguf {

// ggml tensor types (values as stored in the file).
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15, kBF16 = 30,
};
std::string_view ggml_type_name(GgmlType t);

// Metadata value types (values as stored in the file).
enum class ValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

struct Value {
  ValueType type = ValueType::kUint8;
  // Scalars: exactly one of these is meaningful, by type (integers widened, floats widened).
  uint64_t u = 0;       // unsigned integer types
  int64_t i = 0;        // signed integer types
  double f = 0;         // float32/float64
  bool b = false;       // bool
  std::string s;        // string
  ValueType elem_type = ValueType::kUint8;  // arrays: element type
  std::vector<Value> arr;                   // arrays: elements (nested arrays allowed)
};

struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous (innermost) dimension
  uint64_t offset = 0;      // absolute byte offset in the file (data section start + relative offset)
  uint64_t nbytes = 0;      // bytes of the tensor's data
  // Row-major shape as PyTorch/Hugging Face see it: ne reversed ([ne1, ne0] for a matrix).
  Shape shape() const;
  int64_t numel() const;
};

class GgufFile {
 public:
  static Expected<GgufFile> open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  const Value* find(std::string_view key) const;
  const TensorInfo* find_tensor(std::string_view name) const;

  // Typed getters: errors name the file and key (missing, or of another type).
  Expected<std::string> get_string(std::string_view key) const;
  Expected<uint64_t> get_uint(std::string_view key) const;     // any non-negative integer type
  Expected<int64_t> get_int(std::string_view key) const;       // any integer type
  Expected<double> get_float(std::string_view key) const;      // float32/float64 (or integer)
  Expected<bool> get_bool(std::string_view key) const;
  Expected<std::vector<std::string>> get_string_array(std::string_view key) const;
  Expected<std::vector<int64_t>> get_int_array(std::string_view key) const;
  Expected<std::vector<double>> get_float_array(std::string_view key) const;

  // Raw bytes of a tensor inside the map (already bounds-checked at open()).
  std::span<const uint8_t> tensor_bytes(const TensorInfo& t) const;
  // Dequantizes a whole tensor to a contiguous f32 Tensor of shape t.shape().
  Expected<Tensor> load_f32(const TensorInfo& t) const;

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace qforge::gguf
