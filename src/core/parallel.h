// Splitting an element-wise host loop over rows across threads. For the O(weights) loops that sit next to GPU
// work (checks, dequantization, scatters, applying AWQ scales): on a 16-core GPU host they would otherwise
// take longer than the GPU steps between them. Each row is processed by exactly one thread with the same code as
// a serial loop, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace qforge {

// Threads parallel_rows uses: the hardware's, at most 32.
inline int host_threads() { return int(std::clamp(std::thread::hardware_concurrency(), 1u, 32u)); }

// fn(begin, end) over [0, rows) in at most host_threads() contiguous chunks (chunk c = the c-th part), each of
// at least min_rows rows; serial when that leaves one chunk. fn must not throw.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t min_rows, const Fn& fn) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(host_threads(), rows / std::max<int64_t>(1, min_rows)));
  if (chunks == 1) {
    if (rows > 0) fn(int64_t(0), rows);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(size_t(chunks - 1));
  auto part = [&](int64_t c) { return rows * c / chunks; };
  for (int64_t c = 1; c < chunks; ++c) pool.emplace_back([&, c] { fn(part(c), part(c + 1)); });
  fn(int64_t(0), part(1));
  for (auto& t : pool) t.join();
}

}  // namespace qforge
