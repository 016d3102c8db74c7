// safetensors layout: [u64 little-endian N][N bytes of JSON header][data section].
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end)} with offsets relative to
// the data section, plus an optional "__metadata__" string -> string map. Nothing in the file is trusted:
// every offset and size is checked against the mapped length before a view is handed out.
#include "formats/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace qforge::safetensors {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr const char* kSupportedDtypes = "F32, F16, BF16, I32, I8, U8, I64";
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSingleFileName = "model.safetensors";
constexpr const char* kIndexFileName = "model.safetensors.index.json";

uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Order of tensors in the data section of a file we write: widest element first, as the reference
// writer sorts (its Dtype enum, descending), so each tensor starts aligned to its element size.
int dtype_layout_rank(DType t) {
  switch (t) {
    case DType::kI64:
      return 0;
    case DType::kF32:
      return 1;
    case DType::kI32:
      return 2;
    case DType::kBF16:
      return 3;
    case DType::kF16:
      return 4;
    case DType::kI8:
      return 5;
    case DType::kU8:
      return 6;
  }
  return 7;
}

// Reads a JSON value that must be a non-negative integer (nlohmann parses 3.0 and 1e3 as floats,
// -1 as a signed integer, and integers beyond uint64 as floats; all of those are rejected).
bool as_uint(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<uint64_t>();
  return true;
}

// Parses one header entry; `data_size` is the length of the data section.
Status parse_entry(const std::string& path, const std::string& name, const json& e, uint64_t data_size,
                   const uint8_t* data, TensorEntry* out) {
  const auto fail = [&](const std::string& what) {
    return Status::error(fmt::format("{}: tensor '{}': {}", path, name, what));
  };
  if (!e.is_object()) return fail(fmt::format("entry is not an object: {}", e.dump()));

  const auto dt = e.find("dtype");
  if (dt == e.end()) return fail("missing \"dtype\"");
  if (!dt->is_string()) return fail(fmt::format("\"dtype\" is not a string: {}", dt->dump()));
  const std::string dtype_str = dt->get<std::string>();
  DType dtype;
  if (!dtype_from_name(dtype_str, &dtype))
    return fail(fmt::format("unsupported dtype '{}' (supported: {})", dtype_str, kSupportedDtypes));

  const auto sh = e.find("shape");
  if (sh == e.end()) return fail("missing \"shape\"");
  if (!sh->is_array()) return fail(fmt::format("\"shape\" is not an array: {}", sh->dump()));
  if (sh->size() > size_t(kMaxDims))
    return fail(
        fmt::format("shape {} has rank {}, more than the supported {}", sh->dump(), sh->size(), kMaxDims));
  Shape shape;
  // Product of the dims with zeros counted as 1: bounds every partial product a consumer may form.
  uint64_t extent = 1;
  for (const json& d : *sh) {
    uint64_t v;
    if (!as_uint(d, &v))
      return fail(fmt::format("shape {} has an entry that is not a non-negative integer", sh->dump()));
    if (v > uint64_t(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(extent, std::max<uint64_t>(v, 1), &extent) ||
        extent > uint64_t(std::numeric_limits<int64_t>::max()))
      return fail(fmt::format("shape {} overflows a 64-bit element count", sh->dump()));
    shape.dims[shape.rank++] = int64_t(v);
  }
  const uint64_t numel = uint64_t(shape.numel());  // <= extent, cannot overflow
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(dtype)), &nbytes))
    return fail(fmt::format("shape {} of {} overflows a 64-bit byte count", shape.str(), dtype_str));

  const auto off = e.find("data_offsets");
  if (off == e.end()) return fail("missing \"data_offsets\"");
  uint64_t begin, end;
  if (!off->is_array() || off->size() != 2 || !as_uint((*off)[0], &begin) || !as_uint((*off)[1], &end))
    return fail(fmt::format("\"data_offsets\" is not a pair of non-negative integers: {}", off->dump()));
  if (begin > end) return fail(fmt::format("data_offsets [{}, {}) has begin > end", begin, end));
  if (end > data_size)
    return fail(
        fmt::format("data_offsets [{}, {}) past end of data section ({} bytes)", begin, end, data_size));
  if (end - begin != nbytes)
    return fail(fmt::format("shape {} of {} needs {} bytes but data_offsets [{}, {}) span {} bytes",
                            shape.str(), dtype_str, nbytes, begin, end, end - begin));

  out->name = name;
  out->view = TensorView::contiguous(dtype, shape, const_cast<uint8_t*>(data + begin));
  out->data_begin = begin;
  out->data_end = end;
  return Status::ok();
}

constexpr size_t kSinkBuffer = size_t(1) << 20;  // pieces of a streamed tensor are gathered up to this

// Writes all n bytes at `offset` (pwrite may write less than asked, or be interrupted).
Status pwrite_all(int fd, const std::string& path, uint64_t offset, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, off_t(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return error("{}: write of {} bytes at offset {} failed: {}", path, n, offset, std::strerror(errno));
    }
    p += w;
    n -= size_t(w);
    offset += uint64_t(w);
  }
  return Status::ok();
}

// The temporaries of one write: closed and removed unless every one was renamed into place.
class TempFiles {
 public:
  TempFiles() = default;
  TempFiles(const TempFiles&) = delete;
  TempFiles& operator=(const TempFiles&) = delete;
  ~TempFiles() {
    for (File& f : files_) {
      if (f.fd >= 0) ::close(f.fd);
      if (!f.renamed) std::remove(f.tmp.c_str());
    }
  }
  // Creates path.tmp.<pid>; returns its index.
  Expected<size_t> create(const std::string& path) {
    File f{path, path + ".tmp." + std::to_string(getpid())};
    f.fd = ::open(f.tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (f.fd < 0) return error("{}: cannot create: {}", f.tmp, std::strerror(errno));
    files_.push_back(std::move(f));
    return files_.size() - 1;
  }
  int fd(size_t i) const { return files_[i].fd; }
  const std::string& tmp(size_t i) const { return files_[i].tmp; }
  // Sets every file's final size, fsyncs and closes them all, then renames each into place.
  Status commit(const std::vector<uint64_t>& sizes) {
    for (size_t i = 0; i < files_.size(); ++i) {
      File& f = files_[i];
      if (::ftruncate(f.fd, off_t(sizes[i])) != 0 || ::fsync(f.fd) != 0)
        return error("{}: flush failed: {}", f.tmp, std::strerror(errno));
      const int rc = ::close(f.fd);
      f.fd = -1;
      if (rc != 0) return error("{}: close failed: {}", f.tmp, std::strerror(errno));
    }
    for (File& f : files_) {
      if (std::rename(f.tmp.c_str(), f.path.c_str()) != 0)
        return error("{}: rename from {} failed: {}", f.path, f.tmp, std::strerror(errno));
      f.renamed = true;
    }
    // Make the renames themselves durable; best effort (some filesystems refuse fsync on a directory).
    std::set<std::string> parents;
    for (const File& f : files_) {
      fs::path parent = fs::path(f.path).parent_path();
      parents.insert(parent.empty() ? std::string(".") : parent.string());
    }
    for (const std::string& parent : parents) {
      const int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        (void)::fsync(dfd);
        ::close(dfd);
      }
    }
    return Status::ok();
  }

 private:
  struct File {
    std::string path, tmp;
    int fd = -1;
    bool renamed = false;
  };
  std::vector<File> files_;
};

}  // namespace

// ---- File -------------------------------------------------------------------------------------------

Expected<File> File::open(const std::string& path) {
  QF_ASSIGN_OR_RETURN(MappedFile mf, MappedFile::open(path));
  const uint64_t size = mf.size();
  if (size < 8) return error("{}: file is {} bytes, too short for the 8-byte header length", path, size);
  const uint64_t n = load_le64(mf.data());
  if (n > kMaxHeaderBytes)
    return error("{}: header length {} exceeds the limit of {} bytes", path, n, kMaxHeaderBytes);
  if (n > size - 8)
    return error("{}: header length {} past end of file ({} bytes after the length field)", path, n,
                 size - 8);
  const std::string_view text(reinterpret_cast<const char*>(mf.data()) + 8, size_t(n));
  const uint8_t* data = mf.data() + 8 + n;
  const uint64_t data_size = size - 8 - n;

  // nlohmann keeps the last of duplicate keys silently; a second entry with the same name is an error.
  std::string duplicate;
  std::set<std::string> keys;
  json header;
  try {
    header = json::parse(text, [&](int depth, json::parse_event_t ev, json& parsed) {
      if (depth == 1 && ev == json::parse_event_t::key && !keys.insert(parsed.get<std::string>()).second &&
          duplicate.empty())
        duplicate = parsed.get<std::string>();
      return true;
    });
  } catch (const json::exception& ex) {
    return error("{}: header is not valid JSON: {}", path, ex.what());
  }
  if (!header.is_object()) return error("{}: header is not a JSON object", path);
  if (!duplicate.empty())
    return error("{}: tensor '{}' appears more than once in the header", path, duplicate);

  File file;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (!it->is_object()) return error("{}: {} is not an object", path, kMetadataKey);
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          return error("{}: {} value for '{}' is not a string: {}", path, kMetadataKey, m.key(), m->dump());
        file.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TensorEntry entry;
    QF_RETURN_IF_ERROR(parse_entry(path, it.key(), it.value(), data_size, data, &entry));
    file.tensors_.push_back(std::move(entry));
  }

  std::sort(file.tensors_.begin(), file.tensors_.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.data_end < b.data_end;
  });
  // Overlap: each non-empty range must start at or after the furthest end seen so far.
  const TensorEntry* furthest = nullptr;
  for (const TensorEntry& t : file.tensors_) {
    if (t.data_begin == t.data_end) continue;
    if (furthest && t.data_begin < furthest->data_end)
      return error("{}: tensor '{}': data_offsets [{}, {}) overlaps tensor '{}' [{}, {})", path, t.name,
                   t.data_begin, t.data_end, furthest->name, furthest->data_begin, furthest->data_end);
    if (!furthest || t.data_end > furthest->data_end) furthest = &t;
  }
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.by_name_[file.tensors_[i].name] = i;
  file.file_ = std::move(mf);
  return file;
}

const TensorEntry* File::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

// ---- Checkpoint -------------------------------------------------------------------------------------

Expected<Checkpoint> Checkpoint::open_dir(const std::string& dir) {
  const fs::path root(dir);
  const std::string index_path = (root / kIndexFileName).string();
  const std::string single_path = (root / kSingleFileName).string();
  std::error_code ec;
  Checkpoint ckpt;

  const auto add_file = [&](std::unique_ptr<File> f) -> Status {
    for (const TensorEntry& t : f->tensors()) {
      const auto [it, inserted] = ckpt.index_.emplace(t.name, &t);
      if (!inserted) {
        for (const auto& g : ckpt.files_)
          if (g->find(t.name) == it->second)
            return error("{}: tensor '{}' appears in both {} and {}", dir, t.name, g->path(), f->path());
        return error("{}: tensor '{}' appears in more than one shard", dir, t.name);
      }
    }
    ckpt.files_.push_back(std::move(f));
    return Status::ok();
  };

  if (fs::exists(index_path, ec)) {
    QF_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path));
    json index;
    try {
      index = json::parse(text);
    } catch (const json::exception& ex) {
      return error("{}: not valid JSON: {}", index_path, ex.what());
    }
    if (!index.is_object()) return error("{}: not a JSON object", index_path);
    const auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) return error("{}: missing \"weight_map\" object", index_path);
    if (wm->empty()) return error("{}: \"weight_map\" lists no tensors", index_path);

    std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensors it should hold
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string())
        return error("{}: weight_map entry for tensor '{}' is not a string: {}", index_path, it.key(),
                     it->dump());
      const std::string shard = it->get<std::string>();
      // Shards live next to the index; a path that leaves the directory is refused.
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos)
        return error("{}: tensor '{}' is mapped to '{}', which is not a file name in {}", index_path,
                     it.key(), shard, dir);
      by_shard[shard].push_back(it.key());
    }
    for (const auto& [shard, names] : by_shard) {
      auto opened = File::open((root / shard).string());
      if (!opened)
        return error("{}: shard '{}' (listed for tensor '{}'): {}", index_path, shard, names.front(),
                     opened.message());
      auto f = std::make_unique<File>(std::move(opened).value());
      for (const std::string& name : names)
        if (!f->find(name))
          return error("{}: tensor '{}' is mapped to shard '{}', but {} has no such tensor", index_path, name,
                       shard, f->path());
      QF_RETURN_IF_ERROR(add_file(std::move(f)));
    }
    return ckpt;
  }
  if (fs::exists(single_path, ec)) {
    QF_ASSIGN_OR_RETURN(File f, File::open(single_path));
    QF_RETURN_IF_ERROR(add_file(std::make_unique<File>(std::move(f))));
    return ckpt;
  }
  return error("{}: neither {} nor {} found", dir, kSingleFileName, kIndexFileName);
}

const TensorEntry* Checkpoint::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, entry] : index_) out.push_back(name);
  return out;
}

// ---- Writer -----------------------------------------------------------------------------------------

Status Writer::check_new(const std::string& name, const Shape& shape) const {
  if (name == kMetadataKey)
    return error("safetensors writer: '{}' is reserved and cannot name a tensor", name);
  if (names_.count(name)) return error("safetensors writer: tensor '{}' added twice", name);
  for (int i = 0; i < shape.rank; ++i)
    if (shape.dims[i] < 0)
      return error("safetensors writer: tensor '{}' has negative shape {}", name, shape.str());
  return Status::ok();
}

Status Writer::add(const std::string& name, const TensorView& view) {
  QF_RETURN_IF_ERROR(check_new(name, view.shape));
  if (!view.is_contiguous())
    return error("safetensors writer: tensor '{}' with shape {} is not contiguous", name, view.shape.str());
  if (view.numel() > 0 && view.data == nullptr)
    return error("safetensors writer: tensor '{}' has no data", name);
  tensors_.push_back({name, view.dtype, view.shape, uint64_t(view.nbytes()), view.data, nullptr});
  names_.insert(name);
  return Status::ok();
}

Status Writer::add_streamed(const std::string& name, DType dtype, const Shape& shape, TensorFillFn fill) {
  QF_RETURN_IF_ERROR(check_new(name, shape));
  if (!fill) return error("safetensors writer: tensor '{}' has no fill callback", name);
  tensors_.push_back(
      {name, dtype, shape, uint64_t(shape.numel()) * dtype_size(dtype), nullptr, std::move(fill)});
  names_.insert(name);
  return Status::ok();
}

Status Writer::write_files(const std::vector<OutFile>& files) const {
  // Layout first, from names, dtypes and shapes alone: each file's header text, and where in which file
  // each tensor's bytes go.
  struct Place {
    size_t file = 0;
    uint64_t offset = 0;  // from the start of the file
  };
  std::vector<Place> place(tensors_.size());
  std::vector<std::string> headers(files.size());
  std::vector<uint64_t> sizes(files.size());
  for (size_t fi = 0; fi < files.size(); ++fi) {
    std::vector<size_t> items = files[fi].entries;
    std::sort(items.begin(), items.end(), [&](size_t a, size_t b) {
      const int ra = dtype_layout_rank(tensors_[a].dtype), rb = dtype_layout_rank(tensors_[b].dtype);
      return ra != rb ? ra < rb : tensors_[a].name < tensors_[b].name;
    });
    // ordered_json keeps insertion order: "__metadata__" first, then tensors in data order, each with
    // fields dtype, shape, data_offsets, which is what the reference writer emits.
    ordered_json header = ordered_json::object();
    if (!metadata_.empty()) {
      ordered_json m = ordered_json::object();
      for (const auto& [k, v] : metadata_) m[k] = v;
      header[kMetadataKey] = std::move(m);
    }
    uint64_t offset = 0;
    for (size_t i : items) {
      const Entry& t = tensors_[i];
      ordered_json e = ordered_json::object();
      e["dtype"] = std::string(dtype_name(t.dtype));
      e["shape"] = t.shape.to_vector();
      e["data_offsets"] = {offset, offset + t.nbytes};
      header[t.name] = std::move(e);
      place[i] = {fi, offset};
      offset += t.nbytes;
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const json::exception& ex) {  // e.g. a name or metadata value that is not valid UTF-8
      return error("{}: cannot encode header: {}", files[fi].path, ex.what());
    }
    // Pad with spaces to a multiple of 8 so the data section (and every tensor) stays 8-byte aligned.
    text.append((8 - text.size() % 8) % 8, ' ');
    for (size_t i : items) place[i].offset += 8 + text.size();
    sizes[fi] = 8 + text.size() + offset;
    headers[fi] = std::move(text);
  }

  TempFiles out;
  for (size_t fi = 0; fi < files.size(); ++fi) {
    QF_ASSIGN_OR_RETURN(size_t k, out.create(files[fi].path));
    const std::string& text = headers[fi];
    std::string head(8, '\0');
    for (int i = 0; i < 8; ++i) head[size_t(i)] = char(uint8_t(uint64_t(text.size()) >> (8 * i)));
    head += text;
    QF_RETURN_IF_ERROR(
        pwrite_all(out.fd(k), out.tmp(k), 0, reinterpret_cast<const uint8_t*>(head.data()), head.size())
            .with_context("writing the header"));
  }

  // Data, in the order added, each tensor at its place.
  std::vector<uint8_t> pending;  // bytes of a streamed tensor not yet written
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Entry& t = tensors_[i];
    const int fd = out.fd(place[i].file);
    const std::string& tmp = out.tmp(place[i].file);
    if (!t.fill) {
      QF_RETURN_IF_ERROR(
          pwrite_all(fd, tmp, place[i].offset, static_cast<const uint8_t*>(t.data), size_t(t.nbytes))
              .with_context(fmt::format("tensor '{}'", t.name)));
      continue;
    }
    uint64_t at = place[i].offset;  // where `pending` starts in the file
    uint64_t produced = 0;
    pending.clear();
    pending.reserve(std::min<uint64_t>(t.nbytes, kSinkBuffer));
    auto flush = [&]() -> Status {
      QF_RETURN_IF_ERROR(pwrite_all(fd, tmp, at, pending.data(), pending.size()));
      at += pending.size();
      pending.clear();
      return Status::ok();
    };
    const ByteSink sink = [&](std::span<const uint8_t> b) -> Status {
      if (b.size() > t.nbytes - produced)
        return error("fill produced more than the {} bytes of {} {}", t.nbytes, dtype_name(t.dtype),
                     t.shape.str());
      produced += b.size();
      if (pending.size() + b.size() > kSinkBuffer) QF_RETURN_IF_ERROR(flush());
      if (b.size() >= kSinkBuffer) {
        QF_RETURN_IF_ERROR(pwrite_all(fd, tmp, at, b.data(), b.size()));
        at += b.size();
      } else {
        pending.insert(pending.end(), b.begin(), b.end());
      }
      return Status::ok();
    };
    const std::string ctx = fmt::format("{}: tensor '{}'", files[place[i].file].path, t.name);
    QF_RETURN_IF_ERROR(t.fill(sink).with_context(ctx));
    QF_RETURN_IF_ERROR(flush().with_context(ctx));
    if (produced != t.nbytes)
      return error("{}: fill produced {} bytes, {} {} takes {}", ctx, produced, dtype_name(t.dtype),
                   t.shape.str(), t.nbytes);
  }
  pending = {};
  return out.commit(sizes);
}

Status Writer::write(const std::string& path) const {
  OutFile f{path, {}};
  f.entries.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) f.entries.push_back(i);
  return write_files({f});
}

Status Writer::write_sharded(const std::string& dir, uint64_t max_shard_bytes) const {
  if (max_shard_bytes == 0) return error("{}: max_shard_bytes must be positive", dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return error("{}: cannot create directory: {}", dir, ec.message());
  const fs::path root(dir);

  std::vector<size_t> sorted(tensors_.size());
  for (size_t i = 0; i < sorted.size(); ++i) sorted[i] = i;
  std::sort(sorted.begin(), sorted.end(),
            [&](size_t a, size_t b) { return tensors_[a].name < tensors_[b].name; });

  // Greedy in name order; a tensor larger than the limit gets a shard of its own.
  std::vector<OutFile> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (size_t i : sorted) {
    const uint64_t nbytes = tensors_[i].nbytes;
    if (!shards.back().entries.empty() && shard_bytes + nbytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().entries.push_back(i);
    shard_bytes += nbytes;
    total += nbytes;
  }

  const std::string index_path = (root / kIndexFileName).string();
  if (shards.size() == 1) {
    shards[0].path = (root / kSingleFileName).string();
    QF_RETURN_IF_ERROR(write_files(shards));
    // A stale index from an earlier sharded write would take precedence over the new file.
    fs::remove(index_path, ec);
    if (ec) return error("{}: cannot remove stale index: {}", index_path, ec.message());
    return Status::ok();
  }

  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    shards[i].path = (root / name).string();
    for (size_t t : shards[i].entries) weight_map[tensors_[t].name] = name;
  }
  // The index goes last, so it never names a shard that was not written.
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
  std::string text;
  try {
    text = index.dump(2) + "\n";
  } catch (const json::exception& ex) {
    return error("{}: cannot encode index: {}", index_path, ex.what());
  }
  QF_RETURN_IF_ERROR(write_files(shards));
  return write_file_atomic(index_path, text.data(), text.size());
}

}  // namespace qforge::safetensors
