#pragma once
// (Named unicode_regex.h so that it never shadows the system <regex.h>.)
// A Unicode regex for pre-tokenization, backed by PCRE2 (which, unlike RE2,
// has the look-ahead `\s+(?!\S)` that the GPT-2 / Llama 3 patterns need).

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torchchat {

class Regex {
 public:
  // Compiles a pattern written for Oniguruma / Rust `regex` (what tokenizers
  // and tiktoken use). `\s` is rewritten to the Unicode White_Space set those
  // engines use, so all three agree on what whitespace is. Throws Error.
  explicit Regex(std::string_view pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Byte ranges [begin, end) of the successive non-overlapping matches in
  // `text`, which must be valid UTF-8. Empty matches are skipped.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Exposed for tests: the pattern as PCRE2 receives it.
std::string translate_pattern_for_pcre2(std::string_view pattern);

// The literal text as a pattern that matches exactly it.
std::string escape_regex(std::string_view literal);

}  // namespace torchchat
