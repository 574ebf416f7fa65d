// tiktoken BPE from Llama 3's tokenizer.model, encoding as
// tiktoken.Encoding(pat_str=Llama 3's, special_tokens=Llama 3's).encode(text, allowed_special="all").
//
// File: one "<base64 token bytes> <rank>" per line; the rank is the token id.
// Llama 3's 256 special tokens follow the base vocabulary.

#include <array>
#include <charconv>
#include <unordered_map>

#include "bpe_merge.h"
#include "unicode_regex.h"
#include "tokenizer_formats.h"
#include "torchchat/error.h"
#include "utf8.h"

namespace torchchat {
namespace {

// Llama 3's pre-tokenization pattern (llama_models/llama3/tokenizer.py).
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr int kLlama3SpecialTokenCount = 256;

std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> tokens = {
      "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
      "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
      "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
  };
  const int named = static_cast<int>(tokens.size());
  for (int i = 0; i < kLlama3SpecialTokenCount - named; ++i) {
    tokens.push_back("<|reserved_special_token_" + std::to_string(2 + i) + "|>");
  }
  return tokens;
}

std::optional<std::string> decode_base64(std::string_view text) {
  static const std::array<int, 256> kValues = [] {
    std::array<int, 256> values{};
    values.fill(-1);
    const std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (std::size_t i = 0; i < alphabet.size(); ++i) values[static_cast<unsigned char>(alphabet[i])] = static_cast<int>(i);
    return values;
  }();
  if (text.empty() || text.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int padding = 0;
    std::uint32_t group = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      int value;
      if (c == '=' && last && j >= 2) {
        ++padding;
        value = 0;
      } else {
        if (padding > 0) return std::nullopt;  // data after '='
        value = kValues[static_cast<unsigned char>(c)];
        if (value < 0) return std::nullopt;
      }
      group = (group << 6) | static_cast<std::uint32_t>(value);
    }
    out += static_cast<char>(group >> 16);
    if (padding < 2) out += static_cast<char>((group >> 8) & 0xFF);
    if (padding < 1) out += static_cast<char>(group & 0xFF);
  }
  return out;
}

class TiktokenTokenizer final : public Tokenizer {
 public:
  explicit TiktokenTokenizer(std::vector<std::string> tokens) : tokens_(std::move(tokens)), pattern_(kLlama3Pattern) {
    const int base = static_cast<int>(tokens_.size());
    for (std::string& special : llama3_special_tokens()) {
      specials_.add(special, static_cast<int>(tokens_.size()));
      tokens_.push_back(std::move(special));
    }
    // Views into tokens_, taken once it no longer grows.
    for (int rank = 0; rank < base; ++rank) ranks_.emplace(tokens_[rank], rank);
  }

  TokenizerKind kind() const override { return TokenizerKind::Tiktoken; }
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }

  std::vector<int> encode(std::string_view input, SpecialTokens specials) const override {
    std::vector<int> ids;
    const std::string text = utf8::to_valid_lossy(input);
    const std::string_view view = text;
    if (specials == SpecialTokens::AsText) {
      encode_ordinary(view, ids);
      return ids;
    }
    std::size_t pos = 0;
    while (pos <= view.size()) {
      const auto special = specials_.find_next(view, pos);
      const std::size_t end = special ? special->begin : view.size();
      encode_ordinary(view.substr(pos, end - pos), ids);
      if (!special) break;
      ids.push_back(special->id);
      pos = special->begin + special->length;
    }
    return ids;
  }

  std::string decode_token(int id, int /*prev_id*/) const override {
    if (id < 0 || id >= vocab_size()) return {};
    return tokens_[id];
  }

  std::string decode(std::span<const int> ids) const override {
    std::string bytes;
    for (const int id : ids) {
      if (id < 0 || id >= vocab_size()) throw Error("token id " + std::to_string(id) + " is out of range");
      bytes += tokens_[id];
    }
    return utf8::to_valid_lossy(bytes);
  }

  std::optional<int> special_token_id(std::string_view text) const override { return specials_.find_exact(text); }

 private:
  void encode_ordinary(std::string_view text, std::vector<int>& ids) const {
    for (const auto& [begin, end] : pattern_.find_all(text)) {
      const std::string_view piece = text.substr(begin, end - begin);
      if (const auto it = ranks_.find(piece); it != ranks_.end()) {
        ids.push_back(it->second);
        continue;
      }
      std::vector<BpeSymbol> symbols;
      for (std::size_t i = 0; i < piece.size(); ++i) symbols.push_back({i, 1, -1});
      const auto merge_of = [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpeMerge> {
        const auto it = ranks_.find(piece.substr(left.begin, left.length + right.length));
        if (it == ranks_.end()) return std::nullopt;
        return BpeMerge{static_cast<double>(it->second), it->second};
      };
      for (const BpeSymbol& symbol : bpe_merge(symbols, merge_of)) {
        if (symbol.id >= 0) {
          ids.push_back(symbol.id);
          continue;
        }
        const auto it = ranks_.find(piece.substr(symbol.begin, symbol.length));
        if (it == ranks_.end()) throw Error("tiktoken vocabulary has no token for byte " + std::to_string(static_cast<unsigned char>(piece[symbol.begin])));
        ids.push_back(it->second);
      }
    }
  }

  std::vector<std::string> tokens_;  // id -> bytes (special tokens: their text)
  std::unordered_map<std::string_view, int> ranks_;  // views into tokens_, base vocabulary only
  SpecialTokenMatcher specials_;
  Regex pattern_;
};

}  // namespace

std::unique_ptr<Tokenizer> parse_tiktoken(std::string_view content, const std::string& source) {
  const std::string what = "tiktoken file " + source;
  std::vector<std::string> tokens;
  std::vector<bool> rank_seen;
  std::size_t line_number = 0, pos = 0;
  while (pos < content.size()) {
    std::size_t newline = content.find('\n', pos);
    if (newline == std::string_view::npos) newline = content.size();
    std::string_view line = content.substr(pos, newline - pos);
    pos = newline + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::string where = what + " line " + std::to_string(line_number);
    if (line.empty()) {
      if (pos >= content.size()) break;  // trailing newline
      throw Error(where + " is empty");
    }
    const std::size_t space = line.find(' ');
    if (space == std::string_view::npos) throw Error(where + " is not '<base64 token> <rank>'");
    const auto bytes = decode_base64(line.substr(0, space));
    if (!bytes) throw Error(where + " has an invalid base64 token");
    const std::string_view rank_text = line.substr(space + 1);
    int rank = -1;
    const auto [end, ec] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (ec != std::errc() || end != rank_text.data() + rank_text.size() || rank < 0 || rank >= (1 << 24)) {
      throw Error(where + " has an invalid rank '" + std::string(rank_text.substr(0, 20)) + "'");
    }
    if (static_cast<std::size_t>(rank) >= tokens.size()) {
      tokens.resize(rank + 1);
      rank_seen.resize(rank + 1, false);
    }
    if (rank_seen[rank]) throw Error(where + " repeats rank " + std::to_string(rank));
    rank_seen[rank] = true;
    tokens[rank] = std::move(*bytes);
  }
  if (tokens.empty()) throw Error(what + " has no tokens");
  for (std::size_t rank = 0; rank < rank_seen.size(); ++rank) {
    if (!rank_seen[rank]) throw Error(what + " is missing rank " + std::to_string(rank) + " (truncated?)");
  }
  // A duplicate token would make encoding ambiguous.
  std::unordered_map<std::string_view, int> seen;
  for (std::size_t rank = 0; rank < tokens.size(); ++rank) {
    if (!seen.emplace(tokens[rank], static_cast<int>(rank)).second) {
      throw Error(what + " lists the same token twice (rank " + std::to_string(rank) + ")");
    }
  }
  for (int byte = 0; byte < 256; ++byte) {
    const std::string single(1, static_cast<char>(byte));
    if (!seen.count(single)) {
      throw Error(what + " has no token for byte " + std::to_string(byte) + ", so it cannot encode all text");
    }
  }
  return std::make_unique<TiktokenTokenizer>(std::move(tokens));
}

}  // namespace torchchat
