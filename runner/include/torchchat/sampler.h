#pragma once
// Picks the next token from the logits: greedy at temperature 0, otherwise
// softmax(logits / temperature) restricted to the top-p nucleus, drawn with a
// seeded generator so that a given seed always gives the same tokens.

#include <cstdint>
#include <span>
#include <vector>

namespace torchchat {

struct SamplerConfig {
  float temperature = 1.0f;  // 0 = greedy (argmax)
  float top_p = 0.9f;        // nucleus mass in [0, 1]; 1 = no truncation
  std::uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerConfig config);

  int sample(std::span<const float> logits);

  // The generator's state, to continue a saved conversation with the same draws.
  std::uint64_t state() const { return rng_state_; }
  void restore(std::uint64_t state) { rng_state_ = state; }

  // The index of the largest logit (the first one on ties).
  static int argmax(std::span<const float> logits);

  // The nucleus: the fewest most-probable tokens whose probabilities add up
  // to at least top_p (never empty), most probable first, ties by lower id.
  static std::vector<int> nucleus(std::span<const float> probabilities, float top_p);

  // softmax(logits / temperature).
  static std::vector<float> softmax(std::span<const float> logits, float temperature);

 private:
  float next_uniform();  // in [0, 1)

  SamplerConfig config_;
  std::uint64_t rng_state_;
};

}  // namespace torchchat
