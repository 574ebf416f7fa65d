#pragma once
// A scripted stand-in for a model, so the whole runner (CLI, tokenizer,
// loops, chat history) can be tested without one. Its "model file" is JSON:
//
//   {"max_seq_len": 64, "vocab_size": 512,
//    "reply": [ids...],           // what it "predicts" after each prompt, in order
//    "stop_id": 2,                // predicted once the reply is exhausted
//    "metadata": {...},           // optional: the artifact metadata (as the exporter writes it)
//    "uniform": true,             // optional: all logits equal instead (output = the sampler's RNG)
//    "trace": "path"}             // optional: appends every forward() call as a JSON line
//
// It is also the reference for backend authors: metadata from the artifact
// or the fallback, forward() with validation and errors as torchchat::Error.

#include <string>
#include <vector>

#include "torchchat/backend.h"

namespace torchchat {

class ToyBackend final : public Backend {
 public:
  explicit ToyBackend(const BackendOptions& options);

  const ModelMetadata& metadata() const override { return metadata_; }
  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override;

 private:
  ModelMetadata metadata_;
  std::vector<int> reply_;
  int stop_id_ = 0;
  std::string trace_path_;
  bool uniform_ = false;
  std::size_t reply_index_ = 0;
  std::vector<float> logits_;
};

}  // namespace torchchat
