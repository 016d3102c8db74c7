#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace qforge {

int32_t Sampler::sample(const float* logits, int64_t V) {
  if (opt_.temperature <= 0.0f) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  int64_t k = (opt_.top_k > 0 && opt_.top_k < V) ? opt_.top_k : V;
  // Highest logits first; ties broken by id so the order is deterministic.
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(size_t(k));
  std::vector<double> p(static_cast<size_t>(k));
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += (p[size_t(i)] = std::exp((logits[idx[size_t(i)]] - mx) / opt_.temperature));
  // Nucleus: the smallest prefix whose probability reaches top_p.
  int64_t keep = k;
  if (opt_.top_p < 1.0f) {
    double c = 0;
    for (int64_t i = 0; i < k; ++i) {
      c += p[size_t(i)] / sum;
      if (c >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[size_t(i)];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[size_t(i)];
    if (r < 0) return idx[size_t(i)];
  }
  return idx[size_t(keep - 1)];
}

}  // namespace qforge
