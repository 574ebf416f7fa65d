#pragma once
// ExecuTorch backend: runs a .pte program exported by `torchchat.py export
// --output-pte-path` (XNNPACK-delegated, KV cache as mutable buffers inside the
// program, dynamic sequence length). The model's metadata JSON
// (torchchat/metadata.py) is the program's constant method `get_metadata_json`;
// ExecuTorch's own LLM constant methods (get_max_seq_len, ...) sit beside it.
// ExecuTorch types stay in et_backend.cpp; this is all a main needs.

#include <memory>

#include "torchchat/backend.h"

namespace torchchat {

// Throws torchchat::Error (one line) for a missing, foreign, truncated or
// unloadable program, or one without torchchat metadata.
std::unique_ptr<Backend> make_et_backend(const BackendOptions& options);

}  // namespace torchchat
