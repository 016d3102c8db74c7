#include "formats/gguf_writer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "formats/gguf_quants.h"

namespace qforge::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" as a little-endian u32
constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // what the reader accepts
constexpr size_t kWriteBuffer = size_t(1) << 20;

// Appends little-endian encodings (the only byte order qforge runs on: x86-64 and aarch64).
class Bytes {
 public:
  template <typename T>
  void put(T v) {
    const size_t at = b_.size();
    b_.resize(at + sizeof(T));
    std::memcpy(b_.data() + at, &v, sizeof(T));
  }
  void put_string(std::string_view s) {
    put(uint64_t(s.size()));
    b_.insert(b_.end(), s.begin(), s.end());
  }
  const std::vector<uint8_t>& data() const { return b_; }
  size_t size() const { return b_.size(); }

 private:
  std::vector<uint8_t> b_;
};

Value scalar(ValueType t) {
  Value v;
  v.type = t;
  return v;
}

bool is_unsigned(ValueType t) {
  return t == ValueType::kUint8 || t == ValueType::kUint16 || t == ValueType::kUint32 ||
         t == ValueType::kUint64;
}
bool is_signed(ValueType t) {
  return t == ValueType::kInt8 || t == ValueType::kInt16 || t == ValueType::kInt32 || t == ValueType::kInt64;
}

// Encodes v as `type` (for array elements, the array's element type). Errors name the key.
Status encode_value(const Value& v, ValueType type, int depth, std::string_view key, Bytes& out) {
  if (v.type != type)
    return error("metadata key '{}': element of type {} in an array of type {}", key, uint32_t(v.type),
                 uint32_t(type));
  auto check_u = [&](uint64_t max) -> Status {
    if (v.u > max) return error("metadata key '{}': value {} does not fit its type (max {})", key, v.u, max);
    return Status::ok();
  };
  auto check_i = [&](int64_t lo, int64_t hi) -> Status {
    if (v.i < lo || v.i > hi)
      return error("metadata key '{}': value {} does not fit its type [{}, {}]", key, v.i, lo, hi);
    return Status::ok();
  };
  switch (type) {
    case ValueType::kUint8:
      QF_RETURN_IF_ERROR(check_u(0xff));
      out.put(uint8_t(v.u));
      break;
    case ValueType::kInt8:
      QF_RETURN_IF_ERROR(check_i(INT8_MIN, INT8_MAX));
      out.put(int8_t(v.i));
      break;
    case ValueType::kUint16:
      QF_RETURN_IF_ERROR(check_u(0xffff));
      out.put(uint16_t(v.u));
      break;
    case ValueType::kInt16:
      QF_RETURN_IF_ERROR(check_i(INT16_MIN, INT16_MAX));
      out.put(int16_t(v.i));
      break;
    case ValueType::kUint32:
      QF_RETURN_IF_ERROR(check_u(0xffffffffu));
      out.put(uint32_t(v.u));
      break;
    case ValueType::kInt32:
      QF_RETURN_IF_ERROR(check_i(INT32_MIN, INT32_MAX));
      out.put(int32_t(v.i));
      break;
    case ValueType::kUint64:
      out.put(uint64_t(v.u));
      break;
    case ValueType::kInt64:
      out.put(int64_t(v.i));
      break;
    case ValueType::kFloat32:
      out.put(float(v.f));
      break;
    case ValueType::kFloat64:
      out.put(double(v.f));
      break;
    case ValueType::kBool:
      out.put(uint8_t(v.b ? 1 : 0));
      break;
    case ValueType::kString:
      out.put_string(v.s);
      break;
    case ValueType::kArray:
      if (v.elem_type == ValueType::kArray && depth + 1 >= kMaxArrayDepth)
        return error("metadata key '{}': arrays nested deeper than {}", key, kMaxArrayDepth);
      if (uint32_t(v.elem_type) > uint32_t(ValueType::kFloat64))
        return error("metadata key '{}': unknown array element type {}", key, uint32_t(v.elem_type));
      out.put(uint32_t(v.elem_type));
      out.put(uint64_t(v.arr.size()));
      for (const Value& e : v.arr) QF_RETURN_IF_ERROR(encode_value(e, v.elem_type, depth + 1, key, out));
      break;
    default:
      return error("metadata key '{}': unknown value type {}", key, uint32_t(type));
  }
  return Status::ok();
}

uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) / a * a;
}

std::string dims_str(const std::vector<int64_t>& ne) {
  std::string s;
  for (int64_t d : ne) s += fmt::format("{}{}", s.empty() ? "" : ", ", d);
  return "[" + s + "]";
}

// Owns the temporary file: closes and removes it unless released by a successful rename.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (f_) std::fclose(f_);
    if (!committed_) std::remove(path_.c_str());
  }
  Status open() {
    f_ = std::fopen(path_.c_str(), "wb");
    if (!f_) return error("{}: cannot create: {}", path_, std::strerror(errno));
    buf_ = std::make_unique<char[]>(kWriteBuffer);
    std::setvbuf(f_, buf_.get(), _IOFBF, kWriteBuffer);
    return Status::ok();
  }
  Status write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n)
      return error("{}: write failed at offset {}: {}", path_, written_, std::strerror(errno));
    written_ += n;
    return Status::ok();
  }
  Status pad_to(uint64_t alignment) {
    static const uint8_t kZeros[256] = {};
    uint64_t pad = align_up(written_, alignment) - written_;
    while (pad > 0) {
      const size_t n = size_t(std::min<uint64_t>(pad, sizeof(kZeros)));
      QF_RETURN_IF_ERROR(write(kZeros, n));
      pad -= n;
    }
    return Status::ok();
  }
  // Flushes, fsyncs, closes and renames onto `dest`.
  Status commit(const std::string& dest) {
    bool ok = std::fflush(f_) == 0 && fsync(fileno(f_)) == 0;
    const int e = errno;
    ok = std::fclose(f_) == 0 && ok;
    f_ = nullptr;
    if (!ok) return error("{}: flush failed after {} bytes: {}", path_, written_, std::strerror(e));
    if (std::rename(path_.c_str(), dest.c_str()) != 0)
      return error("{}: rename from {} failed: {}", dest, path_, std::strerror(errno));
    committed_ = true;
    return Status::ok();
  }
  uint64_t written() const { return written_; }

 private:
  std::string path_;
  FILE* f_ = nullptr;
  std::unique_ptr<char[]> buf_;
  uint64_t written_ = 0;
  bool committed_ = false;
};

}  // namespace

// ---- metadata ----------------------------------------------------------------------------------

void GgufWriter::set_value(std::string_view key, Value v) {
  for (auto& [k, old] : kv_)
    if (k == key) {
      old = std::move(v);
      return;
    }
  kv_.emplace_back(std::string(key), std::move(v));
}

#define QF_GGUF_SET_UNSIGNED(fn, T, VT)            \
  void GgufWriter::fn(std::string_view key, T x) { \
    Value v = scalar(VT);                          \
    v.u = x;                                       \
    set_value(key, std::move(v));                  \
  }
#define QF_GGUF_SET_SIGNED(fn, T, VT)              \
  void GgufWriter::fn(std::string_view key, T x) { \
    Value v = scalar(VT);                          \
    v.i = x;                                       \
    set_value(key, std::move(v));                  \
  }
QF_GGUF_SET_UNSIGNED(set_uint8, uint8_t, ValueType::kUint8)
QF_GGUF_SET_UNSIGNED(set_uint16, uint16_t, ValueType::kUint16)
QF_GGUF_SET_UNSIGNED(set_uint32, uint32_t, ValueType::kUint32)
QF_GGUF_SET_UNSIGNED(set_uint64, uint64_t, ValueType::kUint64)
QF_GGUF_SET_SIGNED(set_int8, int8_t, ValueType::kInt8)
QF_GGUF_SET_SIGNED(set_int16, int16_t, ValueType::kInt16)
QF_GGUF_SET_SIGNED(set_int32, int32_t, ValueType::kInt32)
QF_GGUF_SET_SIGNED(set_int64, int64_t, ValueType::kInt64)
#undef QF_GGUF_SET_UNSIGNED
#undef QF_GGUF_SET_SIGNED

void GgufWriter::set_float32(std::string_view key, float x) {
  Value v = scalar(ValueType::kFloat32);
  v.f = x;
  set_value(key, std::move(v));
}
void GgufWriter::set_float64(std::string_view key, double x) {
  Value v = scalar(ValueType::kFloat64);
  v.f = x;
  set_value(key, std::move(v));
}
void GgufWriter::set_bool(std::string_view key, bool x) {
  Value v = scalar(ValueType::kBool);
  v.b = x;
  set_value(key, std::move(v));
}
void GgufWriter::set_string(std::string_view key, std::string x) {
  Value v = scalar(ValueType::kString);
  v.s = std::move(x);
  set_value(key, std::move(v));
}

namespace {
template <typename T, typename Set>
Value make_array(ValueType elem, const std::vector<T>& xs, Set set) {
  Value v = scalar(ValueType::kArray);
  v.elem_type = elem;
  v.arr.reserve(xs.size());
  for (const T& x : xs) {
    Value e = scalar(elem);
    set(e, x);
    v.arr.push_back(std::move(e));
  }
  return v;
}
}  // namespace

void GgufWriter::set_string_array(std::string_view key, const std::vector<std::string>& xs) {
  set_value(key, make_array(ValueType::kString, xs, [](Value& e, const std::string& x) { e.s = x; }));
}
void GgufWriter::set_int32_array(std::string_view key, const std::vector<int32_t>& xs) {
  set_value(key, make_array(ValueType::kInt32, xs, [](Value& e, int32_t x) { e.i = x; }));
}
void GgufWriter::set_int64_array(std::string_view key, const std::vector<int64_t>& xs) {
  set_value(key, make_array(ValueType::kInt64, xs, [](Value& e, int64_t x) { e.i = x; }));
}
void GgufWriter::set_float32_array(std::string_view key, const std::vector<float>& xs) {
  set_value(key, make_array(ValueType::kFloat32, xs, [](Value& e, float x) { e.f = x; }));
}

Status GgufWriter::copy_value(const GgufFile& f, std::string_view key) {
  const Value* v = f.find(key);
  if (!v) return error("{}: metadata key '{}' missing (copying it)", f.path(), key);
  set_value(key, *v);
  return Status::ok();
}

void GgufWriter::remove(std::string_view key) {
  for (auto it = kv_.begin(); it != kv_.end(); ++it)
    if (it->first == key) {
      kv_.erase(it);
      return;
    }
}

const Value* GgufWriter::find(std::string_view key) const {
  for (const auto& [k, v] : kv_)
    if (k == key) return &v;
  return nullptr;
}

// ---- tensors -----------------------------------------------------------------------------------

Expected<uint64_t> GgufWriter::check_tensor(const std::string& name, GgmlType type,
                                            const std::vector<int64_t>& ne) const {
  if (name.empty()) return error("GGUF tensor with an empty name");
  for (const PendingTensor& t : tensors_)
    if (t.name == name) return error("tensor '{}': added twice", name);
  int64_t be = 0, bb = 0;
  if (!ggml_type_layout(type, &be, &bb))
    return error("tensor '{}': unknown ggml type {}", name, uint32_t(type));
  if (ne.empty() || ne.size() > size_t(kMaxDims))
    return error("tensor '{}': {} dims {}; GGUF tensors have 1 to {}", name, ne.size(), dims_str(ne),
                 kMaxDims);
  uint64_t numel = 1;
  for (size_t d = 0; d < ne.size(); ++d) {
    if (ne[d] <= 0)
      return error("tensor '{}': ne[{}] = {} is not positive (ne {})", name, d, ne[d], dims_str(ne));
    if (__builtin_mul_overflow(numel, uint64_t(ne[d]), &numel) ||
        numel > uint64_t(std::numeric_limits<int64_t>::max()))
      return error("tensor '{}': element count of ne {} overflows", name, dims_str(ne));
  }
  if (ne[0] % be != 0)
    return error("tensor '{}': ne[0] = {} is not a multiple of the {} block size {}", name, ne[0],
                 ggml_type_name(type), be);
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel / uint64_t(be), uint64_t(bb), &nbytes))
    return error("tensor '{}': byte size of ne {} overflows", name, dims_str(ne));
  return nbytes;
}

Status GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne,
                              std::vector<uint8_t> data) {
  QF_ASSIGN_OR_RETURN(uint64_t nbytes, check_tensor(name, type, ne));
  if (data.size() != nbytes)
    return error("tensor '{}': {} bytes given, but {} with ne {} takes {} bytes", name, data.size(),
                 ggml_type_name(type), dims_str(ne), nbytes);
  tensors_.push_back({std::move(name), type, std::move(ne), nbytes, std::move(data), nullptr});
  return Status::ok();
}

Status GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne, TensorBytesFn fill) {
  QF_ASSIGN_OR_RETURN(uint64_t nbytes, check_tensor(name, type, ne));
  if (!fill) return error("tensor '{}': no data callback", name);
  tensors_.push_back({std::move(name), type, std::move(ne), nbytes, {}, std::move(fill)});
  return Status::ok();
}

// ---- file --------------------------------------------------------------------------------------

Status GgufWriter::write(const std::string& path) const {
  uint64_t alignment = kDefaultAlignment;
  if (const Value* a = find("general.alignment")) {
    uint64_t al = 0;
    if (is_unsigned(a->type))
      al = a->u;
    else if (is_signed(a->type) && a->i > 0)
      al = uint64_t(a->i);
    if (al == 0 || (al & (al - 1)) != 0 || al > (uint64_t(1) << 32))
      return error("{}: metadata key 'general.alignment' must be a power-of-two integer in [1, 2^32]", path);
    alignment = al;
  }

  Bytes header;
  header.put(kMagic);
  header.put(kVersion);
  header.put(uint64_t(tensors_.size()));
  header.put(uint64_t(kv_.size()));
  for (const auto& [key, v] : kv_) {
    header.put_string(key);
    header.put(uint32_t(v.type));
    QF_RETURN_IF_ERROR(encode_value(v, v.type, 0, key, header).with_context(path));
  }
  uint64_t rel = 0;
  for (const PendingTensor& t : tensors_) {
    header.put_string(t.name);
    header.put(uint32_t(t.ne.size()));
    for (int64_t d : t.ne) header.put(uint64_t(d));
    header.put(uint32_t(t.type));
    header.put(rel);
    rel = align_up(rel + t.nbytes, alignment);
  }

  TempFile out(fmt::format("{}.tmp.{}", path, getpid()));
  QF_RETURN_IF_ERROR(out.open());
  QF_RETURN_IF_ERROR(out.write(header.data().data(), header.size()));
  QF_RETURN_IF_ERROR(out.pad_to(alignment));
  std::vector<uint8_t> buf;
  for (const PendingTensor& t : tensors_) {
    const uint8_t* p = t.data.data();
    if (t.fill) {
      buf.assign(size_t(t.nbytes), 0);
      QF_RETURN_IF_ERROR(
          t.fill(std::span<uint8_t>(buf)).with_context(fmt::format("{}: tensor '{}'", path, t.name)));
      p = buf.data();
    }
    QF_RETURN_IF_ERROR(out.write(p, size_t(t.nbytes)).with_context(fmt::format("tensor '{}'", t.name)));
    QF_RETURN_IF_ERROR(out.pad_to(alignment));
  }
  return out.commit(path);
}

}  // namespace qforge::gguf
