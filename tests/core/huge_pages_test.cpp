#include "core/huge_pages.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <numeric>

#include "kernels/cpu/w4a16.h"

namespace qforge {
namespace {

uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

TEST(HugePages, SmallAllocationsAre64ByteAlignedAndUsable) {
  for (size_t bytes : {size_t(0), size_t(1), size_t(63), size_t(4096), kHugePageBytes - 1}) {
    void* p = alloc_streamed(bytes);
    ASSERT_NE(p, nullptr) << bytes;
    EXPECT_EQ(addr(p) % 64, 0u) << bytes;
    if (bytes) static_cast<unsigned char*>(p)[bytes - 1] = 7;
    free_streamed(p);
  }
}

TEST(HugePages, LargeAllocationsStartOnAHugePageWhenAdvised) {
  const size_t bytes = 3 * kHugePageBytes + 12345;  // whole huge pages and a tail on small pages
  void* p = alloc_streamed(bytes);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(addr(p) % (huge_pages_advised() ? kHugePageBytes : 64), 0u);
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < bytes; i += 4096) b[i] = static_cast<unsigned char>(i >> 12);
  b[bytes - 1] = 0xAB;
  for (size_t i = 0; i < bytes; i += 4096) ASSERT_EQ(b[i], static_cast<unsigned char>(i >> 12)) << i;
  EXPECT_EQ(b[bytes - 1], 0xAB);
  free_streamed(p);
}

TEST(HugePages, RefusesSizesThatOverflow) {
  HugePageAllocator<uint64_t> a;
  EXPECT_THROW((void)a.allocate(~size_t(0) / 4), std::bad_array_new_length);
  EXPECT_THROW((void)alloc_streamed(~size_t(0) - 10), std::bad_alloc);
}

TEST(HugePages, VectorsUseIt) {
  HugeVector<float> v(kHugePageBytes / 4 + 3);
  std::iota(v.begin(), v.end(), 0.0f);
  EXPECT_EQ(v.back(), float(v.size() - 1));
  EXPECT_EQ(addr(v.data()) % (huge_pages_advised() ? kHugePageBytes : 64), 0u);
  HugeVector<float> copy = v;  // the allocator is stateless: copies and moves keep working
  EXPECT_EQ(copy, v);

  // Packed W4 weights are HugeVectors too (what the GEMV streams).
  static_assert(std::is_same_v<decltype(kernels::W4Weight::codes), HugeVector<uint8_t>>);
}

}  // namespace
}  // namespace qforge
