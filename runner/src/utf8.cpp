#include "utf8.h"

namespace torchchat::utf8 {
namespace {

// Allowed range of the second byte for a lead byte (Unicode Table 3-7).
struct SecondByteRange {
  unsigned char low, high;
};

// Returns the expected sequence length for a lead byte, 0 if it cannot lead.
std::size_t sequence_length(unsigned char lead, SecondByteRange& second) {
  second = {0x80, 0xBF};
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead == 0xE0) { second = {0xA0, 0xBF}; return 3; }
  if (lead >= 0xE1 && lead <= 0xEC) return 3;
  if (lead == 0xED) { second = {0x80, 0x9F}; return 3; }  // no surrogates
  if (lead >= 0xEE && lead <= 0xEF) return 3;
  if (lead == 0xF0) { second = {0x90, 0xBF}; return 4; }
  if (lead >= 0xF1 && lead <= 0xF3) return 4;
  if (lead == 0xF4) { second = {0x80, 0x8F}; return 4; }  // <= U+10FFFF
  return 0;
}

// How many bytes from pos match a well-formed prefix (at most the full length).
std::size_t matching_prefix(std::string_view s, std::size_t pos, std::size_t& full) {
  SecondByteRange second{};
  full = sequence_length(static_cast<unsigned char>(s[pos]), second);
  if (full == 0) return 0;
  std::size_t n = 1;
  while (n < full && pos + n < s.size()) {
    const auto b = static_cast<unsigned char>(s[pos + n]);
    const unsigned char low = n == 1 ? second.low : 0x80;
    const unsigned char high = n == 1 ? second.high : 0xBF;
    if (b < low || b > high) break;
    ++n;
  }
  return n;
}

template <class InvalidLength>
std::string replace_invalid(std::string_view s, InvalidLength invalid_length) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (pos < s.size()) {
    if (const std::size_t len = valid_char_length(s, pos)) {
      out.append(s.substr(pos, len));
      pos += len;
    } else {
      out.append(kReplacementChar);
      pos += invalid_length(s, pos);
    }
  }
  return out;
}

}  // namespace

std::size_t valid_char_length(std::string_view s, std::size_t pos) {
  std::size_t full = 0;
  const std::size_t n = matching_prefix(s, pos, full);
  return (full != 0 && n == full) ? full : 0;
}

std::size_t maximal_invalid_subpart(std::string_view s, std::size_t pos) {
  std::size_t full = 0;
  const std::size_t n = matching_prefix(s, pos, full);
  return n == 0 ? 1 : n;
}

std::string to_valid_lossy(std::string_view s) {
  return replace_invalid(s, maximal_invalid_subpart);
}

std::string to_valid_per_byte(std::string_view s) {
  return replace_invalid(s, [](std::string_view, std::size_t) { return std::size_t{1}; });
}

char32_t decode_char(std::string_view s, std::size_t pos, std::size_t len) {
  const auto byte = [&](std::size_t i) { return static_cast<char32_t>(static_cast<unsigned char>(s[pos + i])); };
  switch (len) {
    case 1: return byte(0);
    case 2: return ((byte(0) & 0x1F) << 6) | (byte(1) & 0x3F);
    case 3: return ((byte(0) & 0x0F) << 12) | ((byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
    default:
      return ((byte(0) & 0x07) << 18) | ((byte(1) & 0x3F) << 12) | ((byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
  }
}

void append_char(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string Streamer::push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  std::size_t pos = 0;
  while (pos < pending_.size()) {
    if (const std::size_t len = valid_char_length(pending_, pos)) {
      out.append(pending_, pos, len);
      pos += len;
      continue;
    }
    std::size_t full = 0;
    const std::size_t n = matching_prefix(pending_, pos, full);
    if (full != 0 && n == pending_.size() - pos) break;  // unfinished: wait for more
    out.append(kReplacementChar);
    pos += n == 0 ? 1 : n;
  }
  pending_.erase(0, pos);
  return out;
}

std::string Streamer::flush() {
  std::string out = pending_.empty() ? std::string() : to_valid_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace torchchat::utf8
