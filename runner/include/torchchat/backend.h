#pragma once
// The one thing a runner binary provides: a Backend that runs the exported
// model. Everything else (CLI, tokenizer, sampling, generate/chat loops,
// stats) is the core's. A backend is one small class; see
// runner/tools/toy_run.cpp for a complete runner built on a toy one.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "torchchat/metadata.h"

namespace torchchat {

class KvState;

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

  // ---- Several conversations over one loaded model (the C API's sessions) ----
  // A KvState is one conversation's KV cache, kept outside the program: the weights stay
  // loaded once and each session has its own cache. A backend that cannot keep one returns
  // nullptr from new_kv_state (one conversation at a time). The caller serializes calls.

  // A fresh, empty cache, or nullptr when the backend keeps only the cache inside the program.
  virtual std::unique_ptr<KvState> new_kv_state() { return nullptr; }
  // The next forward() calls read and write `state` (a state from new_kv_state of this backend).
  virtual void use_kv_state(KvState& /*state*/) {}
  // Makes `state` not in use (before it is read, written or destroyed): its bytes() then
  // hold the whole cache, and the next use_kv_state(state) takes what they hold.
  virtual void release_kv_state(KvState& /*state*/) {}
};

class KvState {
 public:
  virtual ~KvState() = default;
  // The cache's memory, in a fixed order (what a session file stores), valid while
  // the state is released.
  virtual std::vector<std::span<std::byte>> bytes() = 0;
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
