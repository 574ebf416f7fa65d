#pragma once
// A saved conversation (tc_session_save / tc_session_load):
//
//   "TCSESSN\0"  u32 LE format version (kSessionFormat)  u32 LE 0
//   u64 LE header length, header JSON (model and tokenizer fingerprints, settings, tokens, ...)
//   u64 LE number of buffers, then per buffer (the KV cache, KvState::bytes() order):
//     u64 LE size, a bitmap of its 4 KiB pages (1 = stored), the stored pages
//   u64 LE checksum (checksum64) of everything before it
//
// Pages of zeros are left out: the cache's unused positions cost nothing. The file is
// written to a temporary name beside `path` and renamed over it, so it is whole or absent.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace torchchat {

inline constexpr std::uint32_t kSessionFormat = 1;

// A fast 64-bit checksum (not cryptographic: it catches damage, not forgery), fed in pieces.
class Checksum {
 public:
  explicit Checksum(std::uint64_t seed = 0);
  void update(std::span<const std::byte> bytes);
  std::uint64_t digest() const;

 private:
  void block(const std::byte* p);  // 32 bytes
  std::uint64_t lane_[4];
  std::byte pending_[32];
  std::size_t n_pending_ = 0;
  std::uint64_t length_ = 0;
};

// The checksum of `bytes` in one piece, continuing from `seed`.
std::uint64_t checksum64(std::span<const std::byte> bytes, std::uint64_t seed = 0);

// Writes header + buffers to `path` atomically. Throws Error (one line).
void write_session_file(const std::string& path, const std::string& header,
                        const std::vector<std::span<std::byte>>& buffers);

// A session file read back and checked (magic, version, length, checksum).
class SessionFile {
 public:
  // Throws Error (one line) for a missing, foreign, truncated or damaged file, or another version.
  explicit SessionFile(const std::string& path);
  const std::string& header() const { return header_; }
  // Fills `buffers` (sizes must match the file's). Throws Error when they do not.
  void read_buffers(const std::vector<std::span<std::byte>>& buffers) const;

 private:
  std::string path_;
  std::vector<std::byte> data_;
  std::string header_;
  std::size_t buffers_at_ = 0;
};

}  // namespace torchchat
