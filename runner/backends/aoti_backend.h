#pragma once
// AOT Inductor backend: runs a model exported by `torchchat.py export`, either as a
// bare shared library (--output-dso-path, .so) or as a package (--output-aoti-package-path,
// .pt2). The format is told by the file's first bytes, not its name. Both carry the
// model's metadata JSON (torchchat/metadata.py): a trailer appended to the .so, the
// "torchchat" entry of the package metadata in the .pt2. The KV cache lives inside
// the compiled model (mutated buffers), so forward() is all there is. Besides the tokens
// and their positions it gets the sizes kv_len = start_pos + n (attention reads only the
// filled positions) and n_logits = 1 (the output layer runs on the last one).

#include <cstdint>
#include <memory>
#include <string>

#include "torchchat/backend.h"

namespace torchchat {

class AotiBackend final : public Backend {
 public:
  // Throws torchchat::Error (one line) for a missing, foreign, truncated or unloadable file.
  explicit AotiBackend(const BackendOptions& options);
  ~AotiBackend() override;

  const ModelMetadata& metadata() const override { return metadata_; }
  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override;
  std::string kernels() const override;

  // Conversations of their own: the cache buffers (the model's all-zero constants) are
  // swapped by pointer, the weights shared. nullptr for a model whose constants are inside
  // its library (not stored by torchchat/mapped_constants.py).
  std::unique_ptr<KvState> new_kv_state() override;
  void use_kv_state(KvState& state) override;
  void release_kv_state(KvState& state) override;

 private:
  struct Model;  // libtorch types stay out of this header
  std::unique_ptr<Model> model_;
  ModelMetadata metadata_;
  std::string trace_path_;
  KvState* active_kv_ = nullptr;  // the state the model's cache constants point into
  bool base_kv_taken_ = false;    // the loaded cache buffers are some state's
};

// The metadata JSON appended to an exported .so, or "" if there is none; `block_end`
// receives the file offset just past its block (where stored constants would start). Throws
// torchchat::Error (one line) if the block's checksums do not match the library or the JSON.
std::string read_so_metadata(const std::string& path, std::uint64_t* block_end = nullptr);

}  // namespace torchchat
