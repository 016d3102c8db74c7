// Read-only memory map of a whole file. Parsers read through bounds-checked helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace qforge {

class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  static Expected<MappedFile> open(const std::string& path);

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Drops the pages of [data, data + size) (a range inside a read-only MappedFile) from this process's resident
// set (madvise MADV_DONTNEED, widened to whole pages): a streaming reader calls it after it has converted a
// tensor, so the mapped input does not accumulate in RSS. Harmless for read-only maps: pages touched again
// fault back in from the page cache.
void drop_resident_pages(const void* data, size_t size);

// Reads a whole (small) file into a string: config.json, tokenizer.json.
Expected<std::string> read_text_file(const std::string& path);

// Writes bytes to path atomically: path.tmp.<pid> then rename.
Status write_file_atomic(const std::string& path, const void* data, size_t size);

}  // namespace qforge
