// QFORGE_GPU_TRACE=1 (any value but "0"): host-side steps print their wall time to stderr, next to the CUDA
// backends' own lines, to see where a GPU run spends its time. Off by default; costs one branch when off.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <string_view>

namespace qforge {

inline bool trace_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("QFORGE_GPU_TRACE");
    return e && *e && std::string_view(e) != "0";
  }();
  return on;
}

// Prints "[host] what  ms" when the scope ends (trace on).
class TraceScope {
 public:
  explicit TraceScope(const char* what) : what_(what) {}
  ~TraceScope() {
    if (trace_enabled())
      fmt::print(stderr, "[host] {:<28} {:9.2f} ms\n", what_,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count());
  }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  const char* what_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace qforge
