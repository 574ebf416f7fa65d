#pragma once
// ExecuTorch backend: runs a .pte program exported by `torchchat.py export
// --output-pte-path` (XNNPACK-delegated, KV cache as mutable buffers inside the
// program, dynamic sequence length). The model's metadata JSON
// (torchchat/metadata.py) is the program's constant method `get_metadata_json`;
// ExecuTorch's own LLM constant methods (get_max_seq_len, ...) sit beside it.

#include <memory>
#include <string>
#include <vector>

#include "torchchat/backend.h"

namespace torchchat {

class EtBackend final : public Backend {
 public:
  // Throws torchchat::Error (one line) for a missing, foreign, truncated or unloadable
  // program, or one without torchchat metadata.
  explicit EtBackend(const BackendOptions& options);
  ~EtBackend() override;

  const ModelMetadata& metadata() const override { return metadata_; }
  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override;

 private:
  struct Program;  // ExecuTorch types stay out of this header
  std::unique_ptr<Program> program_;
  ModelMetadata metadata_;
  std::vector<std::int64_t> tokens_, positions_;
};

}  // namespace torchchat
