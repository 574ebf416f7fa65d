// SentencePiece BPE from llama2.c's tokenizer.bin, encoding as sentencepiece does.
//
// tokenizer.bin: int32 max_token_length, then per token: float32 score,
// int32 length, bytes. The word-boundary mark U+2581 is stored as ' '. The
// format has no piece types, so they follow llama2.c's converter conventions:
//   "<unk>"          the unknown piece
//   "\n<s>\n" etc.   control pieces (BOS, EOS, ...), written inside newlines
//   "<0xNN>"         byte-fallback pieces
//   anything else    a normal piece, which BPE may produce by merging.
// The model is assumed to be what utils/tokenizer.py accepts: BPE, identity
// normalization, dummy prefix, no whitespace collapsing.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <unordered_map>

#include "bpe_merge.h"
#include "tokenizer_formats.h"
#include "torchchat/error.h"
#include "utf8.h"

namespace torchchat {
namespace {

constexpr std::string_view kWordBoundaryMark = "\xE2\x96\x81";  // U+2581, "▁"
constexpr std::string_view kUnknownSurface = " \xE2\x81\x87 ";  // " ⁇ ", sentencepiece's default

enum class PieceType { Normal, Unknown, Control, Byte };

std::optional<int> byte_of_piece(std::string_view piece) {
  // sentencepiece writes byte pieces as "<0x%02X>".
  const auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  const int high = hex(piece[3]), low = hex(piece[4]);
  if (high < 0 || low < 0) return std::nullopt;
  return high * 16 + low;
}

PieceType classify(std::string_view piece) {
  if (piece == "<unk>") return PieceType::Unknown;
  if (piece.size() >= 4 && piece.front() == '\n' && piece.back() == '\n' && piece[1] == '<' &&
      piece[piece.size() - 2] == '>') {
    return PieceType::Control;
  }
  if (byte_of_piece(piece)) return PieceType::Byte;
  return PieceType::Normal;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    byte_ids_.fill(-1);
    types_.reserve(pieces_.size());
    for (int id = 0; id < static_cast<int>(pieces_.size()); ++id) {
      const std::string& piece = pieces_[id];
      const PieceType type = classify(piece);
      types_.push_back(type);
      switch (type) {
        case PieceType::Normal: normal_ids_.emplace(piece, id); break;
        case PieceType::Unknown: if (unk_id_ < 0) unk_id_ = id; break;
        case PieceType::Byte: {
          int& slot = byte_ids_[*byte_of_piece(piece)];
          if (slot < 0) slot = id;
          break;
        }
        case PieceType::Control: break;
      }
    }
    // llama2.c's convention when a file has no "<unk>" piece.
    if (unk_id_ < 0) unk_id_ = 0;
    byte_fallback_ = std::find(byte_ids_.begin(), byte_ids_.end(), -1) == byte_ids_.end();
  }

  TokenizerKind kind() const override { return TokenizerKind::SentencePiece; }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }

  std::vector<int> encode(std::string_view input, SpecialTokens /*no special tokens in this format*/) const override {
    std::vector<int> ids;
    const std::string text = utf8::to_valid_per_byte(input);
    if (text.empty()) return ids;

    // sentencepiece's normalizer: dummy prefix, then ' ' -> U+2581. Here the
    // pieces hold ' ' for U+2581, so it is the other way round: a U+2581 in the
    // input is the same symbol as a space.
    std::string normalized = " ";
    normalized.reserve(text.size() + 1);
    for (std::size_t pos = 0; pos < text.size();) {
      if (text.compare(pos, kWordBoundaryMark.size(), kWordBoundaryMark) == 0) {
        normalized += ' ';
        pos += kWordBoundaryMark.size();
      } else {
        normalized += text[pos++];
      }
    }

    std::vector<BpeSymbol> symbols;
    for (std::size_t pos = 0; pos < normalized.size();) {
      const std::size_t len = utf8::valid_char_length(normalized, pos);
      symbols.push_back({pos, len, -1});
      pos += len;
    }
    const std::string_view view = normalized;
    const auto merge_of = [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpeMerge> {
      const auto it = normal_ids_.find(view.substr(left.begin, left.length + right.length));
      if (it == normal_ids_.end()) return std::nullopt;
      return BpeMerge{-static_cast<double>(scores_[it->second]), it->second};
    };

    bool previous_unknown = false;
    for (const BpeSymbol& symbol : bpe_merge(symbols, merge_of)) {
      const std::string_view piece = view.substr(symbol.begin, symbol.length);
      int id = symbol.id;
      if (id < 0) {
        if (const auto it = normal_ids_.find(piece); it != normal_ids_.end()) id = it->second;
      }
      if (id >= 0) {
        ids.push_back(id);
      } else if (byte_fallback_) {
        // An unknown character becomes its UTF-8 bytes as byte pieces.
        for (const char c : piece) ids.push_back(byte_ids_[static_cast<unsigned char>(c)]);
      } else if (!previous_unknown) {
        ids.push_back(unk_id_);  // sentencepiece merges a run of unknown characters into one <unk>
      }
      previous_unknown = id < 0;
    }
    return ids;
  }

  std::string decode_token(int id, int prev_id) const override {
    if (id < 0 || id >= vocab_size()) return {};
    switch (types_[id]) {
      case PieceType::Control: return {};
      case PieceType::Unknown: return std::string(kUnknownSurface);
      case PieceType::Byte: return std::string(1, static_cast<char>(*byte_of_piece(pieces_[id])));
      case PieceType::Normal: break;
    }
    std::string_view piece = pieces_[id];
    // The dummy prefix of the first word is not text: drop it at the start
    // of a stream and after BOS (llama2.c does the same).
    const bool at_start = prev_id < 0 || (prev_id < vocab_size() && types_[prev_id] == PieceType::Control);
    if (at_start && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
    return std::string(piece);
  }

  std::string decode(std::span<const int> ids) const override {
    // Mirrors SentencePieceProcessor::Decode: byte pieces are gathered and
    // validated as UTF-8 together; the leading space of the first visible
    // piece is the dummy prefix and is dropped.
    std::string text, bytes;
    bool expect_prefix = true, prefix_seen = false;
    for (const int id : ids) {
      if (id < 0 || id >= vocab_size()) throw Error("token id " + std::to_string(id) + " is out of range");
      if (types_[id] == PieceType::Byte) {
        bytes += static_cast<char>(*byte_of_piece(pieces_[id]));
        continue;
      }
      text += utf8::to_valid_per_byte(bytes);
      bytes.clear();
      if (prefix_seen || !text.empty()) expect_prefix = false;
      prefix_seen = false;
      if (types_[id] == PieceType::Control) continue;
      if (types_[id] == PieceType::Unknown) {
        text += kUnknownSurface;
        continue;
      }
      std::string_view piece = pieces_[id];
      if (expect_prefix && !piece.empty() && piece.front() == ' ') {
        piece.remove_prefix(1);
        prefix_seen = true;
      }
      text += piece;
    }
    text += utf8::to_valid_per_byte(bytes);
    return text;
  }

  std::optional<int> special_token_id(std::string_view text) const override {
    for (int id = 0; id < vocab_size(); ++id) {
      if (types_[id] == PieceType::Control && pieces_[id].size() == text.size() + 2 &&
          std::string_view(pieces_[id]).substr(1, text.size()) == text) {
        return id;
      }
    }
    if (text == "<unk>") return unk_id_;
    return std::nullopt;
  }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<PieceType> types_;
  std::unordered_map<std::string_view, int> normal_ids_;  // views into pieces_
  std::array<int, 256> byte_ids_{};
  int unk_id_ = -1;
  bool byte_fallback_ = false;  // all 256 byte pieces are present
};

template <class T>
T read_le(std::string_view content, std::size_t pos) {
  T value;
  std::memcpy(&value, content.data() + pos, sizeof value);  // x86/ARM are little-endian
  return value;
}

}  // namespace

std::unique_ptr<Tokenizer> parse_sentencepiece_bin(std::string_view content, const std::string& source) {
  const std::string what = "tokenizer.bin " + source;
  if (content.size() < 4) throw Error(what + " is truncated: shorter than its 4-byte header");
  const auto max_token_length = read_le<std::int32_t>(content, 0);
  if (max_token_length <= 0 || max_token_length > (1 << 20)) {
    throw Error(what + " is not a valid tokenizer file: bad max_token_length " + std::to_string(max_token_length));
  }
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::size_t pos = 4;
  while (pos < content.size()) {
    const std::string token = "token " + std::to_string(pieces.size());
    if (content.size() - pos < 8) throw Error(what + " is truncated in the header of " + token);
    const auto score = read_le<float>(content, pos);
    const auto length = read_le<std::int32_t>(content, pos + 4);
    pos += 8;
    if (!std::isfinite(score)) throw Error(what + " is corrupt: " + token + " has a score that is not finite");
    if (length <= 0 || length > max_token_length) {
      throw Error(what + " is corrupt: " + token + " has length " + std::to_string(length) +
                  " (max_token_length is " + std::to_string(max_token_length) + ")");
    }
    if (content.size() - pos < static_cast<std::size_t>(length)) throw Error(what + " is truncated inside " + token);
    pieces.emplace_back(content.substr(pos, length));
    scores.push_back(score);
    pos += length;
  }
  if (pieces.empty()) throw Error(what + " has no tokens");
  return std::make_unique<SentencePieceTokenizer>(std::move(pieces), std::move(scores));
}

}  // namespace torchchat
