#pragma once
// AOT Inductor backend: runs a model exported by `torchchat.py export` as a bare shared
// library (--output-dso-path, .so) or as a package (--output-aoti-package-path, .pt2).
// The format is told by the file's first bytes, not its name. Either file carries the
// model's metadata JSON (torchchat/metadata.py): a trailer appended to the .so, the
// "torchchat" entry of the package metadata in the .pt2.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torchchat {

class AotiModel {
 public:
  // Throws torchchat::Error (one line) for a missing, foreign, truncated or unloadable file.
  explicit AotiModel(const std::string& path);
  ~AotiModel();

  const std::string& metadata_json() const { return metadata_json_; }

  // Feeds tokens[0..n) at positions start_pos.. and returns the logits of the last
  // position (vocab_size floats, valid until the next call). The KV cache lives inside.
  const float* forward(const int64_t* tokens, int n, int start_pos);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string metadata_json_;
};

// The metadata JSON appended to an exported .so, or "" if there is none.
std::string read_so_metadata(const std::string& path);

}  // namespace torchchat
