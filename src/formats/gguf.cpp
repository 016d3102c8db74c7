#include "formats/gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>

#include "formats/gguf_quants.h"

namespace qforge::gguf {
namespace {

// File layout (little-endian), GGUF v2/v3:
//   u32 magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
//   kv_count x { string key, u32 value_type, value },
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   padding to `alignment`, then the data section; tensor offsets are relative to its start.
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // nested arrays deeper than this are rejected (stack safety)
// Smallest encodings, used to bound counts read from the file before anything is allocated.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims = 0, type, offset

bool valid_value_type(uint32_t t) {
  return t <= uint32_t(ValueType::kFloat64);
}

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

std::string describe_type(const Value& v) {
  if (v.type != ValueType::kArray) return std::string(value_type_name(v.type));
  return fmt::format("array of {}", value_type_name(v.elem_type));
}

uint64_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
    case ValueType::kString:
      return 8;
    case ValueType::kArray:
      return 4 + 8;
  }
  return 1;
}

bool is_unsigned(ValueType t) {
  return t == ValueType::kUint8 || t == ValueType::kUint16 || t == ValueType::kUint32 ||
         t == ValueType::kUint64;
}
bool is_signed(ValueType t) {
  return t == ValueType::kInt8 || t == ValueType::kInt16 || t == ValueType::kInt32 || t == ValueType::kInt64;
}
bool is_float(ValueType t) {
  return t == ValueType::kFloat32 || t == ValueType::kFloat64;
}

// Bounds-checked cursor over the mapped file. Every error names the file, the current context
// (header, metadata key, tensor) and the byte offset.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size, const std::string& path) : p_(data), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }
  void set_context(std::string ctx) { ctx_ = std::move(ctx); }

  template <typename... Args>
  Status fail(fmt::format_string<Args...> f, Args&&... args) const {
    return Status::error(fmt::format("{}: {}: {}", path_, ctx_, fmt::format(f, std::forward<Args>(args)...)));
  }

  template <typename T>
  Status read(T* out, std::string_view what) {
    if (remaining() < sizeof(T))
      return fail("unexpected end of file reading {} at offset {} (needs {} bytes, file size {})", what, pos_,
                  sizeof(T), size_);
    std::memcpy(out, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::ok();
  }

  Status read_string(std::string* out, std::string_view what) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    QF_RETURN_IF_ERROR(read(&len, what));
    if (len > remaining())
      return fail("{} length {} at offset {} runs past end of file (size {})", what, len, at, size_);
    out->assign(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += len;
    return Status::ok();
  }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
  std::string ctx_ = "header";
};

Status read_value(Reader& r, ValueType type, int depth, Value* v) {
  v->type = type;
  switch (type) {
    case ValueType::kUint8: {
      uint8_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "uint8 value"));
      v->u = x;
      break;
    }
    case ValueType::kInt8: {
      int8_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "int8 value"));
      v->i = x;
      break;
    }
    case ValueType::kUint16: {
      uint16_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "uint16 value"));
      v->u = x;
      break;
    }
    case ValueType::kInt16: {
      int16_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "int16 value"));
      v->i = x;
      break;
    }
    case ValueType::kUint32: {
      uint32_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "uint32 value"));
      v->u = x;
      break;
    }
    case ValueType::kInt32: {
      int32_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "int32 value"));
      v->i = x;
      break;
    }
    case ValueType::kUint64: {
      QF_RETURN_IF_ERROR(r.read(&v->u, "uint64 value"));
      break;
    }
    case ValueType::kInt64: {
      QF_RETURN_IF_ERROR(r.read(&v->i, "int64 value"));
      break;
    }
    case ValueType::kFloat32: {
      float x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "float32 value"));
      v->f = x;
      break;
    }
    case ValueType::kFloat64: {
      QF_RETURN_IF_ERROR(r.read(&v->f, "float64 value"));
      break;
    }
    case ValueType::kBool: {
      uint8_t x = 0;
      QF_RETURN_IF_ERROR(r.read(&x, "bool value"));
      v->b = x != 0;
      break;
    }
    case ValueType::kString: {
      QF_RETURN_IF_ERROR(r.read_string(&v->s, "string"));
      break;
    }
    case ValueType::kArray: {
      const uint64_t at = r.pos();
      uint32_t elem = 0;
      QF_RETURN_IF_ERROR(r.read(&elem, "array element type"));
      if (!valid_value_type(elem)) return r.fail("unknown array element type {} at offset {}", elem, at);
      v->elem_type = ValueType(elem);
      if (v->elem_type == ValueType::kArray && depth + 1 >= kMaxArrayDepth)
        return r.fail("arrays nested deeper than {} at offset {}", kMaxArrayDepth, at);
      const uint64_t count_at = r.pos();
      uint64_t count = 0;
      QF_RETURN_IF_ERROR(r.read(&count, "array count"));
      // Reject before allocating: every element needs at least min_encoded_size bytes.
      if (count > r.remaining() / min_encoded_size(v->elem_type))
        return r.fail("array of {} {} at offset {} runs past end of file (size {})", count,
                      value_type_name(v->elem_type), count_at, r.size());
      v->arr.resize(size_t(count));
      for (Value& e : v->arr) QF_RETURN_IF_ERROR(read_value(r, v->elem_type, depth + 1, &e));
      break;
    }
  }
  return Status::ok();
}

uint64_t numel_of(const std::vector<int64_t>& ne) {
  uint64_t n = 1;
  for (int64_t d : ne) n *= uint64_t(d);
  return n;
}

}  // namespace

Shape TensorInfo::shape() const {
  Shape s;
  s.rank = int(ne.size());
  for (int i = 0; i < s.rank; ++i) s.dims[i] = ne[ne.size() - 1 - i];
  return s;
}

int64_t TensorInfo::numel() const {
  return int64_t(numel_of(ne));
}

Expected<GgufFile> GgufFile::open(const std::string& path) {
  QF_ASSIGN_OR_RETURN(MappedFile mf, MappedFile::open(path));
  GgufFile g;
  g.file_ = std::move(mf);
  const std::string& fpath = g.file_.path();
  Reader r(g.file_.data(), g.file_.size(), fpath);

  // Header.
  uint32_t magic = 0;
  QF_RETURN_IF_ERROR(r.read(&magic, "magic"));
  if (magic != kMagic)
    return r.fail("bad magic 0x{:08x} at offset 0 (expected \"GGUF\", 0x{:08x}); not a GGUF file", magic,
                  kMagic);
  QF_RETURN_IF_ERROR(r.read(&g.version_, "version"));
  if (g.version_ != 2 && g.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(g.version_);
    return r.fail("unsupported GGUF version {} at offset 4 (only versions 2 and 3 are supported{})",
                  g.version_, (swapped == 2 || swapped == 3) ? "; big-endian files are not" : "");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  QF_RETURN_IF_ERROR(r.read(&n_tensors, "tensor count"));
  QF_RETURN_IF_ERROR(r.read(&n_kv, "metadata key count"));
  if (n_kv > r.remaining() / kMinKvBytes)
    return r.fail("metadata key count {} at offset 16 is more than the remaining {} bytes can hold", n_kv,
                  r.remaining());
  if (n_tensors > r.remaining() / kMinTensorInfoBytes)
    return r.fail("tensor count {} at offset 8 is more than the remaining {} bytes can hold", n_tensors,
                  r.remaining());

  // Metadata.
  g.kv_.reserve(size_t(n_kv));
  std::unordered_set<std::string> keys;
  for (uint64_t k = 0; k < n_kv; ++k) {
    r.set_context(fmt::format("metadata key #{}", k));
    std::string key;
    QF_RETURN_IF_ERROR(r.read_string(&key, "key"));
    r.set_context(fmt::format("metadata key '{}'", key));
    if (!keys.insert(key).second) return r.fail("duplicate key at offset {}", r.pos());
    const uint64_t type_at = r.pos();
    uint32_t type = 0;
    QF_RETURN_IF_ERROR(r.read(&type, "value type"));
    if (!valid_value_type(type)) return r.fail("unknown value type {} at offset {}", type, type_at);
    Value v;
    QF_RETURN_IF_ERROR(read_value(r, ValueType(type), 0, &v));
    g.kv_.emplace_back(std::move(key), std::move(v));
  }

  // Alignment of the data section and of every tensor's offset.
  r.set_context("metadata key 'general.alignment'");
  if (const Value* a = g.find("general.alignment")) {
    uint64_t al = 0;
    if (is_unsigned(a->type)) {
      al = a->u;
    } else if (is_signed(a->type) && a->i > 0) {
      al = uint64_t(a->i);
    } else if (!is_signed(a->type)) {
      return r.fail("has type {}, expected an integer", describe_type(*a));
    }
    if (al == 0 || (al & (al - 1)) != 0 || al > (uint64_t(1) << 32))
      return r.fail("alignment {} is not a power of two in [1, 2^32]",
                    is_signed(a->type) ? a->i : int64_t(al));
    g.alignment_ = al;
  } else {
    g.alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  if (n_tensors > r.remaining() / kMinTensorInfoBytes) {
    r.set_context("header");
    return r.fail("tensor count {} at offset 8 is more than the remaining {} bytes can hold", n_tensors,
                  r.remaining());
  }
  g.tensors_.reserve(size_t(n_tensors));
  std::vector<uint64_t> offset_at;  // file position of each tensor's offset field, for errors
  offset_at.reserve(size_t(n_tensors));
  std::unordered_set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    r.set_context(fmt::format("tensor info #{}", k));
    TensorInfo t;
    QF_RETURN_IF_ERROR(r.read_string(&t.name, "tensor name"));
    r.set_context(fmt::format("tensor '{}'", t.name));
    if (!names.insert(t.name).second) return r.fail("duplicate tensor name (tensor info #{})", k);
    const uint64_t ndims_at = r.pos();
    uint32_t n_dims = 0;
    QF_RETURN_IF_ERROR(r.read(&n_dims, "n_dims"));
    if (n_dims > uint32_t(kMaxDims))
      return r.fail("n_dims {} at offset {} exceeds the maximum of {}", n_dims, ndims_at, kMaxDims);
    t.ne.resize(n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t at = r.pos();
      uint64_t ne = 0;
      QF_RETURN_IF_ERROR(r.read(&ne, "ne"));
      if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max()))
        return r.fail("ne[{}] = {} at offset {} is not a positive dimension", d, int64_t(ne), at);
      if (__builtin_mul_overflow(numel, ne, &numel) || numel > uint64_t(std::numeric_limits<int64_t>::max()))
        return r.fail("element count overflows at ne[{}] (offset {})", d, at);
      t.ne[d] = int64_t(ne);
    }
    const uint64_t type_at = r.pos();
    uint32_t type = 0;
    QF_RETURN_IF_ERROR(r.read(&type, "ggml type"));
    t.type = GgmlType(type);
    int64_t be = 0, bb = 0;
    if (!ggml_type_layout(t.type, &be, &bb))
      return r.fail("unknown ggml type {} at offset {}", type, type_at);
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    if (ne0 % be != 0)
      return r.fail("ne[0] = {} is not a multiple of the {} block size {}", ne0, ggml_type_name(t.type), be);
    // nbytes = (ne0 / be) * bb * ne1 * ne2 * ne3, checked for overflow.
    uint64_t nbytes = uint64_t(ne0 / be);
    bool overflow = __builtin_mul_overflow(nbytes, uint64_t(bb), &nbytes);
    for (size_t d = 1; d < t.ne.size(); ++d)
      overflow = overflow || __builtin_mul_overflow(nbytes, uint64_t(t.ne[d]), &nbytes);
    if (overflow) {
      std::string dims;
      for (int64_t d : t.ne) dims += fmt::format("{}{}", dims.empty() ? "" : " x ", d);
      return r.fail("byte size overflows ({} elements of {}: [{}])", numel, ggml_type_name(t.type), dims);
    }
    t.nbytes = nbytes;
    offset_at.push_back(r.pos());
    QF_RETURN_IF_ERROR(r.read(&t.offset, "data offset"));  // relative for now
    g.tensors_.push_back(std::move(t));
  }

  // Data section: starts at the next multiple of the alignment after the tensor infos.
  uint64_t data_start = 0;
  if (__builtin_add_overflow(r.pos(), g.alignment_ - 1, &data_start)) {
    r.set_context("header");
    return r.fail("data section start overflows (alignment {})", g.alignment_);
  }
  data_start = data_start / g.alignment_ * g.alignment_;
  const uint64_t file_size = g.file_.size();
  for (size_t k = 0; k < g.tensors_.size(); ++k) {
    TensorInfo& t = g.tensors_[k];
    r.set_context(fmt::format("tensor '{}'", t.name));
    if (t.offset % g.alignment_ != 0)
      return r.fail("data offset {} (field at offset {}) is not a multiple of the alignment {}", t.offset,
                    offset_at[k], g.alignment_);
    uint64_t begin = 0, end = 0;
    if (__builtin_add_overflow(data_start, t.offset, &begin) || __builtin_add_overflow(begin, t.nbytes, &end))
      return r.fail("data offset {} (field at offset {}) overflows", t.offset, offset_at[k]);
    if (end > file_size)
      return r.fail("data [{}, +{}) runs past end of file (size {})", begin, t.nbytes, file_size);
    t.offset = begin;
  }
  return g;
}

const Value* GgufFile::find(std::string_view key) const {
  for (const auto& [k, v] : kv_)
    if (k == key) return &v;
  return nullptr;
}

const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  for (const TensorInfo& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {

Status missing(const std::string& path, std::string_view key) {
  return error("{}: metadata key '{}' missing", path, key);
}
Status wrong_type(const std::string& path, std::string_view key, const Value& v, std::string_view want) {
  return error("{}: metadata key '{}' has type {}, expected {}", path, key, describe_type(v), want);
}

// Integer value as int64, or an error naming the key (element index for arrays).
Expected<int64_t> as_int(const std::string& path, std::string_view key, const Value& v) {
  if (is_signed(v.type)) return v.i;
  if (is_unsigned(v.type)) {
    if (v.u > uint64_t(std::numeric_limits<int64_t>::max()))
      return error("{}: metadata key '{}' value {} does not fit in int64", path, key, v.u);
    return int64_t(v.u);
  }
  return wrong_type(path, key, v, "an integer");
}

Expected<double> as_float(const std::string& path, std::string_view key, const Value& v) {
  if (is_float(v.type)) return v.f;
  if (is_signed(v.type)) return double(v.i);
  if (is_unsigned(v.type)) return double(v.u);
  return wrong_type(path, key, v, "a number");
}

}  // namespace

Expected<std::string> GgufFile::get_string(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  if (v->type != ValueType::kString) return wrong_type(path(), key, *v, "a string");
  return v->s;
}

Expected<uint64_t> GgufFile::get_uint(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  if (is_unsigned(v->type)) return v->u;
  if (is_signed(v->type)) {
    if (v->i < 0)
      return error("{}: metadata key '{}' is negative ({}), expected a non-negative integer", path(), key,
                   v->i);
    return uint64_t(v->i);
  }
  return wrong_type(path(), key, *v, "an integer");
}

Expected<int64_t> GgufFile::get_int(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  return as_int(path(), key, *v);
}

Expected<double> GgufFile::get_float(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  return as_float(path(), key, *v);
}

Expected<bool> GgufFile::get_bool(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  if (v->type != ValueType::kBool) return wrong_type(path(), key, *v, "a bool");
  return v->b;
}

Expected<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  if (v->type != ValueType::kArray || v->elem_type != ValueType::kString)
    return wrong_type(path(), key, *v, "an array of string");
  std::vector<std::string> out;
  out.reserve(v->arr.size());
  for (const Value& e : v->arr) out.push_back(e.s);
  return out;
}

Expected<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  if (v->type != ValueType::kArray || !(is_signed(v->elem_type) || is_unsigned(v->elem_type)))
    return wrong_type(path(), key, *v, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(v->arr.size());
  for (const Value& e : v->arr) {
    QF_ASSIGN_OR_RETURN(int64_t x, as_int(path(), key, e));
    out.push_back(x);
  }
  return out;
}

Expected<std::vector<double>> GgufFile::get_float_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return missing(path(), key);
  if (v->type != ValueType::kArray ||
      !(is_float(v->elem_type) || is_signed(v->elem_type) || is_unsigned(v->elem_type)))
    return wrong_type(path(), key, *v, "an array of numbers");
  std::vector<double> out;
  out.reserve(v->arr.size());
  for (const Value& e : v->arr) {
    QF_ASSIGN_OR_RETURN(double x, as_float(path(), key, e));
    out.push_back(x);
  }
  return out;
}

std::span<const uint8_t> GgufFile::tensor_bytes(const TensorInfo& t) const {
  if (t.offset > file_.size() || t.nbytes > file_.size() - t.offset) return {};
  return {file_.data() + t.offset, size_t(t.nbytes)};
}

Expected<Tensor> GgufFile::load_f32(const TensorInfo& t) const {
  if (!ggml_type_can_dequantize(t.type))
    return error(
        "{}: tensor '{}': ggml type {} ({}) cannot be dequantized (supported: F32, F16, BF16, "
        "Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
        path(), t.name, ggml_type_name(t.type), uint32_t(t.type));
  // The info may be a caller's copy: check it against the file again rather than trusting it.
  int64_t be = 0, bb = 0;
  ggml_type_layout(t.type, &be, &bb);
  const int64_t n = t.numel();
  if (t.ne.size() > size_t(kMaxDims) || n <= 0 || n % be != 0 || uint64_t(n / be) * uint64_t(bb) != t.nbytes)
    return error("{}: tensor '{}': inconsistent info ({} elements of {}, {} bytes)", path(), t.name, n,
                 ggml_type_name(t.type), t.nbytes);
  const std::span<const uint8_t> bytes = tensor_bytes(t);
  if (bytes.size() != t.nbytes)
    return error("{}: tensor '{}': data [{}, +{}) runs past end of file (size {})", path(), t.name, t.offset,
                 t.nbytes, file_.size());
  Tensor out(DType::kF32, t.shape());
  QF_RETURN_IF_ERROR(dequantize(t.type, bytes.data(), out.f32(), n)
                         .with_context(fmt::format("{}: tensor '{}'", path(), t.name)));
  return out;
}

}  // namespace qforge::gguf
