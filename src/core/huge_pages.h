// Large host buffers on transparent huge pages.
//
// The W4A16 GEMV streams each packed weight once per token. On 4 KiB pages that is a TLB miss, and under a
// hypervisor a two-level page walk, every 4 KiB of every stream; the hardware prefetchers also stop at 4 KiB
// page boundaries. Allocations of at least kHugePageBytes are therefore aligned to 2 MiB and advised as huge
// pages (Linux madvise MADV_HUGEPAGE) before anything touches them, so they work where the system's setting is
// "madvise" (the Debian default) as well as "always". Only the whole 2 MiB pages inside an allocation are advised:
// the tail stays on small pages, so resident memory is what the bytes need. Measured effect:
// docs/packed-checkpoints.md, "Packed weights on transparent huge pages".
//
// Used for the packed W4 weights (long-lived, streamed every token), not for Tensor: tensors are also per-call
// temporaries, and a huge-page fault in an advised range can stall on compaction (THP defrag "madvise").
// QFORGE_HUGE_PAGES=0 in the environment turns the advice off (read once); systems without THP ignore it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

namespace qforge {

inline constexpr size_t kHugePageBytes = size_t(2) << 20;

// `bytes` (0 allowed) aligned to 64 bytes, and to kHugePageBytes with the huge-page advice from kHugePageBytes up.
// Free with free_streamed. Throws std::bad_alloc.
void* alloc_streamed(size_t bytes);
void free_streamed(void* p) noexcept;
// Whether alloc_streamed advises huge pages (false when QFORGE_HUGE_PAGES=0 or the OS has no madvise).
bool huge_pages_advised();
// AnonHugePages of this process in bytes (/proc/self/smaps_rollup), or -1 where that is not available.
int64_t anon_huge_page_bytes();

// std allocator over alloc_streamed, for vectors of streamed data (packed weights).
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > std::numeric_limits<size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(alloc_streamed(n * sizeof(T)));
  }
  void deallocate(T* p, size_t) noexcept { free_streamed(p); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const noexcept { return true; }
};

template <typename T>
using HugeVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace qforge
