#pragma once
// UTF-8 helpers shared by the tokenizers and the text streamer.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace torchchat::utf8 {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed UTF-8 sequence at s[pos], or 0 if the bytes there
// are not one (bad lead byte, bad continuation, overlong, surrogate, > U+10FFFF,
// or cut off by the end of s).
std::size_t valid_char_length(std::string_view s, std::size_t pos);

// Number of bytes at s[pos] that form the start of a well-formed sequence but
// stop before it is complete (the "maximal subpart" of Unicode §3.9); at least 1.
std::size_t maximal_invalid_subpart(std::string_view s, std::size_t pos);

// Valid text unchanged; each ill-formed maximal subpart becomes U+FFFD. This is
// what Python's bytes.decode(errors="replace") and Rust's from_utf8_lossy do.
std::string to_valid_lossy(std::string_view s);

// Valid text unchanged; each byte that does not start a well-formed sequence
// becomes U+FFFD. This is what SentencePiece's normalizer and decoder do.
std::string to_valid_per_byte(std::string_view s);

// Code point of a well-formed sequence of the given length.
char32_t decode_char(std::string_view s, std::size_t pos, std::size_t len);

// Appends the UTF-8 encoding of a code point.
void append_char(std::string& out, char32_t cp);

// Streams bytes out as whole characters: bytes of a character that is split
// across pushes are held back until it is complete, so a consumer printing
// each returned chunk never prints half a character.
class Streamer {
 public:
  // Returns the text that is complete so far. Bytes that can never become
  // valid are returned as U+FFFD.
  std::string push(std::string_view bytes);
  // Returns whatever is still held back (an unfinished character becomes U+FFFD).
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace torchchat::utf8
