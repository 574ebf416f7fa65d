#pragma once
// Internal: one parser per tokenizer file format, and helpers they share.

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "torchchat/tokenizer.h"

namespace torchchat {

std::unique_ptr<Tokenizer> parse_sentencepiece_bin(std::string_view content, const std::string& source);
std::unique_ptr<Tokenizer> parse_tiktoken(std::string_view content, const std::string& source);
std::unique_ptr<Tokenizer> parse_hf_tokenizer_json(std::string_view content, const std::string& source);

// Finds special-token text in input, leftmost and then longest first (what
// tiktoken's special regex and tokenizers' Aho-Corasick matcher do).
class SpecialTokenMatcher {
 public:
  struct Match {
    std::size_t begin = 0, length = 0;
    int id = -1;
  };

  SpecialTokenMatcher() = default;
  SpecialTokenMatcher(const SpecialTokenMatcher&) = delete;  // holds pointers into its own map
  SpecialTokenMatcher& operator=(const SpecialTokenMatcher&) = delete;

  void add(std::string text, int id);
  bool empty() const { return tokens_.empty(); }
  std::optional<int> find_exact(std::string_view text) const;
  // First match starting at or after `from`.
  std::optional<Match> find_next(std::string_view text, std::size_t from) const;

 private:
  std::unordered_map<std::string, int> tokens_;
  // For each first byte, the texts starting with it, longest first.
  std::vector<std::vector<const std::string*>> by_first_byte_ = std::vector<std::vector<const std::string*>>(256);
};

}  // namespace torchchat
