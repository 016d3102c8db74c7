#include "core/huge_pages.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace qforge {

bool huge_pages_advised() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool on = [] {
    const char* e = std::getenv("QFORGE_HUGE_PAGES");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
#else
  return false;
#endif
}

void* alloc_streamed(size_t bytes) {
  const bool huge = bytes >= kHugePageBytes && huge_pages_advised();
  const size_t align = huge ? kHugePageBytes : 64;
  // aligned_alloc wants a multiple of the alignment; round up (whole 2 MiB pages are advised below, not this).
  const size_t rounded = bytes == 0 ? align : (bytes + align - 1) / align * align;
  if (rounded < bytes) throw std::bad_alloc();
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Only the 2 MiB pages the bytes fill; the advice is a hint, so a refusal (THP "never", old kernels) is ignored.
  if (huge) (void)madvise(p, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
#endif
  return p;
}

void free_streamed(void* p) noexcept { std::free(p); }

int64_t anon_huge_page_bytes() {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key) {
    if (key == "AnonHugePages:") {
      if (f >> kb >> unit) return kb * 1024;
      return -1;
    }
    f.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return -1;
}

}  // namespace qforge
