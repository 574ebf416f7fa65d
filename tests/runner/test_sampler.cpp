#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "torchchat/sampler.h"

namespace torchchat {
namespace {

std::vector<float> random_logits(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(n);
  for (float& x : logits) x = normal(gen);
  return logits;
}

TEST(Sampler, GreedyIsArgmax) {
  Sampler greedy({0.0f, 0.9f, 123});
  for (unsigned seed = 0; seed < 50; ++seed) {
    const auto logits = random_logits(1000, seed);
    const int expected = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(greedy.sample(logits), expected);
  }
}

TEST(Sampler, ArgmaxTakesTheFirstOfTies) {
  const std::vector<float> logits = {1, 5, 5, 2};
  EXPECT_EQ(Sampler::argmax(logits), 1);
}

TEST(Sampler, NucleusIsTheSmallestSetReachingP) {
  const std::vector<float> probs = {0.05f, 0.5f, 0.2f, 0.15f, 0.1f};
  EXPECT_EQ(Sampler::nucleus(probs, 0.5f), (std::vector<int>{1}));
  EXPECT_EQ(Sampler::nucleus(probs, 0.6f), (std::vector<int>{1, 2}));
  EXPECT_EQ(Sampler::nucleus(probs, 0.8f), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(Sampler::nucleus(probs, 0.9f), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(Sampler::nucleus(probs, 0.0f), (std::vector<int>{1}));
  EXPECT_EQ(Sampler::nucleus(probs, 1.0f).size(), 5u);
}

TEST(Sampler, NucleusMatchesBruteForceOnRandomDistributions) {
  for (unsigned seed = 0; seed < 30; ++seed) {
    const auto probs = Sampler::softmax(random_logits(5000, seed), 1.0f);
    const float top_p = 0.1f + 0.03f * static_cast<float>(seed);
    std::vector<int> order(probs.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
    double cumulative = 0;
    std::vector<int> expected;
    for (const int i : order) {
      expected.push_back(i);
      cumulative += probs[i];
      if (cumulative >= top_p) break;
    }
    EXPECT_EQ(Sampler::nucleus(probs, top_p), expected) << "seed " << seed;
  }
}

TEST(Sampler, TopPSamplesOnlyFromTheNucleus) {
  const std::vector<float> logits = {0.0f, 3.0f, 2.5f, -1.0f, 1.0f, -2.0f};
  const auto probs = Sampler::softmax(logits, 1.0f);
  const auto nucleus = Sampler::nucleus(probs, 0.8f);
  Sampler sampler({1.0f, 0.8f, 7});
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < 4000; ++i) ++counts[sampler.sample(logits)];
  for (std::size_t t = 0; t < logits.size(); ++t) {
    const bool in_nucleus = std::find(nucleus.begin(), nucleus.end(), static_cast<int>(t)) != nucleus.end();
    if (in_nucleus) {
      EXPECT_GT(counts[t], 0) << "token " << t;
    } else {
      EXPECT_EQ(counts[t], 0) << "token " << t;
    }
  }
}

TEST(Sampler, FrequenciesFollowTheDistribution) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.0f};
  const auto probs = Sampler::softmax(logits, 1.0f);
  Sampler sampler({1.0f, 1.0f, 99});
  constexpr int kDraws = 20000;
  std::vector<int> counts(3, 0);
  for (int i = 0; i < kDraws; ++i) ++counts[sampler.sample(logits)];
  for (int t = 0; t < 3; ++t) EXPECT_NEAR(counts[t] / double(kDraws), probs[t], 0.015) << "token " << t;
}

TEST(Sampler, SameSeedSameTokens) {
  const auto logits = random_logits(500, 3);
  Sampler a({0.8f, 0.95f, 42}), b({0.8f, 0.95f, 42}), c({0.8f, 0.95f, 43});
  std::vector<int> ta, tb, tc;
  for (int i = 0; i < 200; ++i) {
    ta.push_back(a.sample(logits));
    tb.push_back(b.sample(logits));
    tc.push_back(c.sample(logits));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampler, LowTemperatureSharpens) {
  const std::vector<float> logits = {1.0f, 1.5f};
  const auto hot = Sampler::softmax(logits, 2.0f), cold = Sampler::softmax(logits, 0.1f);
  EXPECT_LT(hot[1], cold[1]);
  EXPECT_GT(cold[1], 0.99f);
}

}  // namespace
}  // namespace torchchat
