// Helpers the GPU test executables share (they are plain main() programs, not GoogleTest: see
// tests/quant/gptq_cuda_gpu.cpp): a CHECK that counts failures and goes on, a wall clock, and fast seeded
// pseudo-random values for large test matrices.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>

namespace qforge::testing {

// Failures seen by CHECK so far; main() exits non-zero when it is not 0.
inline int g_failures = 0;

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Counter-based normal-ish values (sum of 4 uniforms, variance 1): fast enough for 10^8 entries, and the value
// at index i does not depend on how many were drawn before.
inline float pseudo_normal(uint64_t seed, uint64_t i) {
  const uint64_t h = splitmix(seed * 0x100000001b3ull + i);
  float s = 0;
  for (int k = 0; k < 4; ++k) s += float((h >> (16 * k)) & 0xffff) * (1.0f / 65536.0f);
  return (s - 2.0f) * 1.7320508f;
}

}  // namespace qforge::testing

// Records a failure (file, line, condition and a printf-style message) and continues.
#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      ++::qforge::testing::g_failures;                            \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
    }                                                             \
  } while (0)
