#pragma once
// The compiled model's constants stored after an exported .so by torchchat/mapped_constants.py
// (block "TCHCNST1": index JSON, then the data on a page boundary), mapped copy-on-write
// instead of copied: weight pages are shared with the page cache and read on first use.
// All-zero storages (the KV cache) are allocated, not read.

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>

namespace torchchat {

class MappedConstants {
 public:
  // Maps the block at file offset `at` of `path`; empty() if there is no block there.
  // Throws torchchat::Error (one line) if the block is damaged or the file truncated.
  MappedConstants(const std::string& path, std::uint64_t at);
  ~MappedConstants();
  MappedConstants(const MappedConstants&) = delete;
  MappedConstants& operator=(const MappedConstants&) = delete;

  bool empty() const { return tensors_.empty(); }
  // Keyed by the compiled model's constant names, as update_constant_buffer wants them.
  std::unordered_map<std::string, at::Tensor>& tensors() { return tensors_; }

  // The all-zero constants (the KV cache, which the model writes): their names, and new
  // zero tensors of the same shapes, for another conversation over the same weights.
  const std::vector<std::string>& zero_names() const { return zero_names_; }
  std::unordered_map<std::string, at::Tensor> new_zeros() const;

 private:
  void release();
  void* data_ = nullptr;
  std::size_t data_bytes_ = 0;
  std::unordered_map<std::string, at::Tensor> tensors_;
  std::vector<std::string> zero_names_;
};

}  // namespace torchchat
