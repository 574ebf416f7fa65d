#pragma once
// The one thing a runner binary provides: a Backend that runs the exported
// model. Everything else (CLI, tokenizer, sampling, generate/chat loops,
// stats) is the core's. A backend is one small class; see
// runner/tools/toy_run.cpp for a complete runner built on a toy one.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "torchchat/metadata.h"

namespace torchchat {

class Backend {
 public:
  virtual ~Backend() = default;

  // The model's metadata: parsed from the artifact when it carries some
  // (parse_metadata_json), otherwise BackendOptions::fallback_metadata with
  // vocab_size / max_seq_len filled in from the model where they were 0.
  virtual const ModelMetadata& metadata() const = 0;

  // Runs tokens[0..n) at positions start_pos..start_pos+n-1 (n >= 1), writing
  // their keys/values into the KV cache, and returns the logits of the LAST
  // position (metadata().vocab_size floats, valid until the next call).
  // The whole prompt comes in one call; a backend that cannot take n > 1
  // chunks internally. Positions before start_pos are never changed; a
  // start_pos of 0 begins a new sequence. Throws torchchat::Error on failure.
  virtual std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) = 0;

  // The level of our kernels (kernels/quant_linear.h isa(): "avx2", "avx512-vnni", ...) when
  // the model runs any of them (runs_our_kernels), for the description line; "" otherwise.
  virtual std::string kernels() const { return ""; }
};

struct BackendOptions {
  std::string model_path;
  // From -l / -v, for an artifact that carries no metadata. vocab_size or
  // max_seq_len of 0 mean "not given": take them from the model.
  ModelMetadata fallback_metadata;
};

// Loads the model; throws torchchat::Error (one line) if it cannot.
using BackendFactory = std::function<std::unique_ptr<Backend>(const BackendOptions&)>;

// For a backend's forward(): throws Error unless n >= 1, the positions fit the
// context and every token is inside the vocabulary. Compiled models index out
// of range (or print a stack trace) rather than fail cleanly, so backends check.
void check_forward_args(const ModelMetadata& metadata, const std::int64_t* tokens, int n, int start_pos);

}  // namespace torchchat
