#include "torchchat/sampler.h"

#include <algorithm>
#include <cmath>

namespace torchchat {

Sampler::Sampler(SamplerConfig config)
    // xorshift needs a non-zero state; mix the seed so that 0, 1, 2... differ well.
    : config_(config), rng_state_(config.seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {
  if (rng_state_ == 0) rng_state_ = 0x2545F4914F6CDD1Dull;
}

float Sampler::next_uniform() {
  // xorshift64*: small, fast, and the same sequence on every platform.
  rng_state_ ^= rng_state_ >> 12;
  rng_state_ ^= rng_state_ << 25;
  rng_state_ ^= rng_state_ >> 27;
  const std::uint64_t r = rng_state_ * 0x2545F4914F6CDD1Dull;
  return static_cast<float>(r >> 40) / 16777216.0f;  // 24 random bits
}

int Sampler::argmax(std::span<const float> logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<float> Sampler::softmax(std::span<const float> logits, float temperature) {
  std::vector<float> probabilities(logits.size());
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    probabilities[i] = std::exp((logits[i] - max_logit) / temperature);
    sum += probabilities[i];
  }
  for (float& p : probabilities) p = static_cast<float>(p / sum);
  return probabilities;
}

std::vector<int> Sampler::nucleus(std::span<const float> probabilities, float top_p) {
  const std::size_t n = probabilities.size();
  // A token below (1 - top_p) / (n - 1) cannot be in the nucleus: all such
  // tokens together hold less than 1 - top_p, so the nucleus is complete
  // before any of them. Dropping them first keeps the sort small.
  const float cutoff = n > 1 ? (1.0f - top_p) / static_cast<float>(n - 1) : 0.0f;
  std::vector<int> candidates;
  for (std::size_t i = 0; i < n; ++i) {
    if (probabilities[i] >= cutoff) candidates.push_back(static_cast<int>(i));
  }
  std::sort(candidates.begin(), candidates.end(), [&](int a, int b) {
    return probabilities[a] != probabilities[b] ? probabilities[a] > probabilities[b] : a < b;
  });
  double cumulative = 0;
  std::size_t keep = 0;
  while (keep < candidates.size()) {
    cumulative += probabilities[candidates[keep++]];
    if (cumulative >= top_p) break;
  }
  candidates.resize(std::max<std::size_t>(keep, 1));
  return candidates;
}

int Sampler::sample(std::span<const float> logits) {
  if (config_.temperature == 0.0f) return argmax(logits);
  const std::vector<float> probabilities = softmax(logits, config_.temperature);
  const float coin = next_uniform();

  std::vector<int> tokens;
  if (config_.top_p <= 0.0f || config_.top_p >= 1.0f) {
    if (config_.top_p <= 0.0f) return argmax(logits);  // a nucleus of mass 0 is the top token
    tokens.resize(probabilities.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>(i);
  } else {
    tokens = nucleus(probabilities, config_.top_p);
  }
  double mass = 0;
  for (const int t : tokens) mass += probabilities[t];
  const double target = coin * mass;
  double cumulative = 0;
  for (const int t : tokens) {
    cumulative += probabilities[t];
    if (target < cumulative) return t;
  }
  return tokens.back();  // rounding
}

}  // namespace torchchat
