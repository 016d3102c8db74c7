#include <gtest/gtest.h>

#include <map>

#include "model/sampler.h"

namespace qforge {
namespace {

TEST(Sampler, GreedyTakesArgmax) {
  const float l[5] = {0.1f, 2.0f, -1.0f, 1.9f, 0.0f};
  Sampler s({});
  EXPECT_EQ(s.sample(l, 5), 1);
}

TEST(Sampler, SeededSamplingIsReproducibleAndRespectsTopK) {
  const float l[6] = {1.0f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f};
  SamplerOptions o{.temperature = 1.0f, .top_k = 2, .top_p = 1.0f, .seed = 42};
  Sampler a(o), b(o);
  std::map<int, int> counts;
  for (int i = 0; i < 400; ++i) {
    int x = a.sample(l, 6);
    EXPECT_EQ(x, b.sample(l, 6));
    counts[x]++;
  }
  EXPECT_EQ(counts.size(), 2u);  // only ids 0 and 1 survive top-k 2
  EXPECT_GT(counts[0], counts[1]);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // Probabilities ~0.84, 0.11, 0.04, ...: top_p 0.8 keeps only the first.
  const float l[4] = {4.0f, 2.0f, 1.0f, -3.0f};
  Sampler s({.temperature = 1.0f, .top_k = 0, .top_p = 0.8f, .seed = 7});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.sample(l, 4), 0);
}

}  // namespace
}  // namespace qforge
