// Helpers every benchmark uses: wall-clock seconds and the CPU's name (for the "machine:" line).
#pragma once

#include <chrono>
#include <fstream>
#include <string>

namespace qforge::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// "model name" of /proc/cpuinfo, or "unknown CPU".
inline std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

}  // namespace qforge::bench
