#include "session_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "torchchat/error.h"

namespace torchchat {
namespace {

constexpr char kMagic[8] = {'T', 'C', 'S', 'E', 'S', 'S', 'N', '\0'};
constexpr std::size_t kPage = 4096;

std::uint64_t get_u64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

bool all_zero(const std::byte* p, std::size_t n) {
  static const std::byte zeros[kPage] = {};
  return std::memcmp(p, zeros, n) == 0;  // n <= kPage
}

std::string system_error() { return errno ? std::string(": ") + std::strerror(errno) : ""; }

}  // namespace

// Four independent multiply-xorshift lanes over 8-byte words (fast, no table), then a mix.
constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;

Checksum::Checksum(std::uint64_t seed)
    : lane_{seed ^ 0x243F6A8885A308D3ull, seed ^ 0x13198A2E03707344ull, seed ^ 0xA4093822299F31D0ull,
            seed ^ 0x082EFA98EC4E6C89ull} {}

void Checksum::block(const std::byte* p) {
  for (int i = 0; i < 4; ++i) {
    std::uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    lane_[i] = (lane_[i] ^ w) * kMul;
    lane_[i] ^= lane_[i] >> 31;
  }
}

void Checksum::update(std::span<const std::byte> bytes) {
  const std::byte* p = bytes.data();
  std::size_t n = bytes.size();
  length_ += n;
  if (n_pending_ > 0) {
    const std::size_t take = std::min(n, 32 - n_pending_);
    std::memcpy(pending_ + n_pending_, p, take);
    n_pending_ += take;
    p += take;
    n -= take;
    if (n_pending_ < 32) return;
    block(pending_);
    n_pending_ = 0;
  }
  for (; n >= 32; p += 32, n -= 32) block(p);
  std::memcpy(pending_, p, n);
  n_pending_ = n;
}

std::uint64_t Checksum::digest() const {
  std::uint64_t h = length_ * kMul;
  for (const std::uint64_t l : lane_) h = ((h ^ l) * kMul) ^ (((h ^ l) * kMul) >> 29);
  for (std::size_t i = 0; i < n_pending_; ++i) h = ((h ^ static_cast<std::uint64_t>(pending_[i])) * kMul) ^ (h >> 32);
  return h ^ (h >> 33);
}

std::uint64_t checksum64(std::span<const std::byte> bytes, std::uint64_t seed) {
  Checksum checksum(seed);
  checksum.update(bytes);
  return checksum.digest();
}

namespace {

// Writes to a file descriptor through a buffer, checksumming what it writes; large pieces
// go straight from the caller's memory.
class ChecksummedWriter {
 public:
  explicit ChecksummedWriter(int fd) : fd_(fd) { buffer_.reserve(kBuffer); }
  void write(std::span<const std::byte> bytes) {
    checksum_.update(bytes);
    if (buffer_.size() + bytes.size() <= kBuffer) {
      buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
      return;
    }
    flush();
    raw(bytes);
  }
  void u64(std::uint64_t v) {
    std::byte b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<std::byte>(v >> (8 * i));
    write(b);
  }
  void finish() {
    const std::uint64_t sum = checksum_.digest();
    std::byte b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<std::byte>(sum >> (8 * i));
    buffer_.insert(buffer_.end(), b, b + 8);  // not part of its own checksum
    flush();
  }
  bool ok() const { return ok_; }

 private:
  static constexpr std::size_t kBuffer = 1 << 20;
  void flush() {
    raw(buffer_);
    buffer_.clear();
  }
  void raw(std::span<const std::byte> bytes) {
    std::size_t done = 0;
    while (ok_ && done < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ok_ = false;
      else done += static_cast<std::size_t>(n);
    }
  }
  int fd_;
  bool ok_ = true;
  std::vector<std::byte> buffer_;
  Checksum checksum_;
};

void write_contents(ChecksummedWriter& out, const std::string& header, const std::vector<std::span<std::byte>>& buffers) {
  out.write(std::as_bytes(std::span(kMagic)));
  std::byte version[8] = {};
  for (int i = 0; i < 4; ++i) version[i] = static_cast<std::byte>(kSessionFormat >> (8 * i));
  out.write(version);
  out.u64(header.size());
  out.write(std::as_bytes(std::span(header.data(), header.size())));
  out.u64(buffers.size());
  for (const auto& buffer : buffers) {
    out.u64(buffer.size());
    const std::size_t pages = (buffer.size() + kPage - 1) / kPage;
    std::vector<std::byte> bitmap((pages + 7) / 8, std::byte{0});
    for (std::size_t page = 0; page < pages; ++page) {
      if (!all_zero(buffer.data() + page * kPage, std::min(kPage, buffer.size() - page * kPage)))
        bitmap[page / 8] |= static_cast<std::byte>(1u << (page % 8));
    }
    out.write(bitmap);
    // Runs of stored pages, each in one write.
    for (std::size_t page = 0; page < pages;) {
      const auto stored = [&](std::size_t i) { return (bitmap[i / 8] & static_cast<std::byte>(1u << (i % 8))) != std::byte{0}; };
      if (!stored(page)) {
        ++page;
        continue;
      }
      std::size_t end = page;
      while (end < pages && stored(end)) ++end;
      const std::size_t from = page * kPage, to = std::min(end * kPage, buffer.size());
      out.write(buffer.subspan(from, to - from));
      page = end;
    }
  }
  out.finish();
}

}  // namespace

void write_session_file(const std::string& path, const std::string& header,
                        const std::vector<std::span<std::byte>>& buffers) {
  // Beside the target (same file system, so the rename is atomic), then renamed over it.
  std::string temp = path + ".XXXXXX";
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) throw Error("cannot write the session file '" + path + "'" + system_error());
  ChecksummedWriter out(fd);
  write_contents(out, header, buffers);
  const bool ok = out.ok() && ::fchmod(fd, 0644) == 0 && ::fsync(fd) == 0;
  const std::string why = system_error();
  ::close(fd);
  if (!ok || ::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string rename_why = ok ? system_error() : why;
    ::unlink(temp.c_str());
    throw Error("cannot write the session file '" + path + "'" + rename_why);
  }
}

SessionFile::SessionFile(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open the session file '" + path + "'" + system_error());
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0);
  if (size < 0) throw Error("cannot read the session file '" + path + "'");
  data_.resize(static_cast<std::size_t>(size));
  if (!in.read(reinterpret_cast<char*>(data_.data()), size)) throw Error("cannot read the session file '" + path + "'");

  const std::string name = "session file '" + path + "'";
  if (data_.size() < 8 || std::memcmp(data_.data(), kMagic, 8) != 0) throw Error(name + " is not a torchchat session");
  if (data_.size() < 16 + 8 + 8) throw Error(name + " is truncated");
  std::uint32_t version = 0;
  for (int i = 3; i >= 0; --i) version = (version << 8) | static_cast<std::uint32_t>(data_[8 + i]);
  if (version != kSessionFormat)
    throw Error(name + " has format version " + std::to_string(version) + "; this library reads version " +
                std::to_string(kSessionFormat));
  const std::size_t body = data_.size() - 8;
  if (get_u64(data_.data() + body) != checksum64({data_.data(), body}))
    throw Error(name + " is damaged or truncated (checksum mismatch)");
  const std::uint64_t header_size = get_u64(data_.data() + 16);
  if (header_size > body - 24 - 8) throw Error(name + " is damaged (header length)");
  header_.assign(reinterpret_cast<const char*>(data_.data() + 24), header_size);
  buffers_at_ = 24 + header_size;
}

void SessionFile::read_buffers(const std::vector<std::span<std::byte>>& buffers) const {
  const std::string name = "session file '" + path_ + "'";
  const std::size_t end = data_.size() - 8;
  std::size_t at = buffers_at_;
  const auto need = [&](std::uint64_t n) {
    if (n > end - at) throw Error(name + " is damaged (its KV cache is cut short)");
  };
  need(8);
  if (get_u64(data_.data() + at) != buffers.size())
    throw Error(name + " holds a KV cache of another shape (saved with another model?)");
  at += 8;
  for (const auto& buffer : buffers) {
    need(8);
    if (get_u64(data_.data() + at) != buffer.size())
      throw Error(name + " holds a KV cache of another shape (saved with another model?)");
    at += 8;
    const std::size_t pages = (buffer.size() + kPage - 1) / kPage;
    need((pages + 7) / 8);
    const std::byte* bitmap = data_.data() + at;
    at += (pages + 7) / 8;
    for (std::size_t page = 0; page < pages; ++page) {
      std::byte* p = buffer.data() + page * kPage;
      const std::size_t n = std::min(kPage, buffer.size() - page * kPage);
      if ((bitmap[page / 8] & static_cast<std::byte>(1u << (page % 8))) == std::byte{0}) {
        std::memset(p, 0, n);
        continue;
      }
      need(n);
      std::memcpy(p, data_.data() + at, n);
      at += n;
    }
  }
  if (at != end) throw Error(name + " is damaged (bytes after its KV cache)");
}

}  // namespace torchchat
