// Tokenizer format detection: the file's content decides, never -l.

#include "torchchat/tokenizer.h"

#include <cctype>

#include "file_io.h"
#include "tokenizer_formats.h"
#include "torchchat/error.h"

namespace torchchat {
namespace {

bool looks_like_json(std::string_view content) {
  const std::size_t first = content.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && content[first] == '{';
}

// tiktoken: the first line is "<base64> <digits>".
bool looks_like_tiktoken(std::string_view content) {
  const std::string_view line = content.substr(0, content.find('\n'));
  const std::size_t space = line.find(' ');
  if (space == 0 || space == std::string_view::npos || space + 1 == line.size()) return false;
  for (std::size_t i = 0; i < space; ++i) {
    const char c = line[i];
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=')) return false;
  }
  for (std::size_t i = space + 1; i < line.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(line[i])) && !(line[i] == '\r' && i + 1 == line.size())) return false;
  }
  return true;
}

// A SentencePiece ModelProto starts with field 1 (pieces), a length-delimited
// message that itself starts with field 1 (the piece string).
bool looks_like_sentencepiece_proto(std::string_view content) {
  if (content.size() < 4 || content[0] != '\x0a') return false;
  std::size_t pos = 1;
  while (pos < content.size() && (static_cast<unsigned char>(content[pos]) & 0x80)) ++pos;  // skip the varint
  return pos + 1 < content.size() && content[pos + 1] == '\x0a';
}

// A UTF-8 byte-order mark, as some editors write before JSON text; no binary format starts so.
std::string_view without_bom(std::string_view content) {
  if (content.starts_with("\xEF\xBB\xBF")) content.remove_prefix(3);
  return content;
}

}  // namespace

std::string_view to_string(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::SentencePiece: return "sentencepiece";
    case TokenizerKind::Tiktoken: return "tiktoken";
    case TokenizerKind::HfBpe: return "hf_bpe";
  }
  return "?";
}

std::optional<TokenizerKind> parse_tokenizer_kind(std::string_view name) {
  for (const TokenizerKind kind : {TokenizerKind::SentencePiece, TokenizerKind::Tiktoken, TokenizerKind::HfBpe}) {
    if (name == to_string(kind)) return kind;
  }
  return std::nullopt;
}

TokenizerKind tokenizer_kind_of(std::string_view content) {
  content = without_bom(content);
  if (looks_like_json(content)) return TokenizerKind::HfBpe;
  if (looks_like_tiktoken(content)) return TokenizerKind::Tiktoken;
  return TokenizerKind::SentencePiece;
}

std::unique_ptr<Tokenizer> parse_tokenizer(std::string_view content, const std::string& source) {
  content = without_bom(content);
  if (content.empty()) throw Error("tokenizer file " + source + " is empty");
  const TokenizerKind kind = tokenizer_kind_of(content);
  if (kind == TokenizerKind::HfBpe) return parse_hf_tokenizer_json(content, source);
  if (kind == TokenizerKind::Tiktoken) return parse_tiktoken(content, source);
  if (looks_like_sentencepiece_proto(content)) {
    throw Error("tokenizer file " + source +
                " is a SentencePiece .model; convert it first: python3 utils/tokenizer.py --tokenizer-model=" + source);
  }
  return parse_sentencepiece_bin(content, source);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  return parse_tokenizer(read_file(path, "tokenizer file"), "'" + path + "'");
}

}  // namespace torchchat
