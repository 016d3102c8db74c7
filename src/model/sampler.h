// Next-token choice from logits: greedy, or seeded temperature / top-k / top-p sampling.
#pragma once

#include <cstdint>
#include <random>

namespace qforge {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions o) : opt_(o), rng_(o.seed) {}
  // logits[V] -> token id. Deterministic for a given seed and logits sequence.
  int32_t sample(const float* logits, int64_t V);

 private:
  SamplerOptions opt_;
  std::mt19937_64 rng_;
};

}  // namespace qforge
