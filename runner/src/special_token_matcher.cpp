#include <algorithm>

#include "tokenizer_formats.h"

namespace torchchat {

void SpecialTokenMatcher::add(std::string text, int id) {
  if (text.empty()) return;
  const auto [it, inserted] = tokens_.emplace(std::move(text), id);
  if (!inserted) return;
  auto& bucket = by_first_byte_[static_cast<unsigned char>(it->first[0])];
  bucket.push_back(&it->first);  // unordered_map keeps node addresses stable
  std::stable_sort(bucket.begin(), bucket.end(),
                   [](const std::string* a, const std::string* b) { return a->size() > b->size(); });
}

std::optional<int> SpecialTokenMatcher::find_exact(std::string_view text) const {
  const auto it = tokens_.find(std::string(text));
  if (it == tokens_.end()) return std::nullopt;
  return it->second;
}

std::optional<SpecialTokenMatcher::Match> SpecialTokenMatcher::find_next(std::string_view text,
                                                                         std::size_t from) const {
  if (tokens_.empty()) return std::nullopt;
  for (std::size_t pos = from; pos < text.size(); ++pos) {
    for (const std::string* candidate : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (text.compare(pos, candidate->size(), *candidate) == 0) {
        return Match{pos, candidate->size(), tokens_.at(*candidate)};
      }
    }
  }
  return std::nullopt;
}

}  // namespace torchchat
