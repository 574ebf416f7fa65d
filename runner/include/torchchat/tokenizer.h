#pragma once
// Text <-> token ids, byte-identical to the reference libraries.
//
// Three formats, told apart by the file's content (never by -l):
//   sentencepiece  llama2.c's tokenizer.bin (see utils/tokenizer.py), encoding
//                  exactly as sentencepiece's SentencePieceProcessor.encode
//   tiktoken       Llama 3's tokenizer.model (base64 token + rank per line),
//                  with Llama 3's pattern and special tokens
//   hf_bpe         a Hugging Face tokenizer.json with a byte-level BPE model

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace torchchat {

enum class TokenizerKind { SentencePiece, Tiktoken, HfBpe };

// Whether text that spells a special token ("<|im_end|>") becomes that token. A prompt given
// to generate is parsed as the reference libraries do; what a user types in a chat, and a system
// prompt, is plain text: only the chat template adds control tokens, so a user cannot end their
// turn or forge a system turn by typing one.
enum class SpecialTokens { Parse, AsText };

// "sentencepiece" | "tiktoken" | "hf_bpe": the names used in model metadata.
std::string_view to_string(TokenizerKind kind);
std::optional<TokenizerKind> parse_tokenizer_kind(std::string_view name);

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;  // implementations hold views into their own tables
  Tokenizer& operator=(const Tokenizer&) = delete;

  virtual TokenizerKind kind() const = 0;

  // One past the largest id the tokenizer knows (base vocabulary + special tokens).
  virtual int vocab_size() const = 0;

  // Text to ids, without BOS: whether to add one is the model's convention,
  // added by the caller. Where the format has special tokens (tiktoken,
  // tokenizer.json), their text in the input is parsed as the special token,
  // or encoded as ordinary text with SpecialTokens::AsText (tiktoken's
  // disallowed_special=(), tokenizers' encode_special_tokens: a tokenizer.json's
  // added tokens that are not marked special are still matched).
  // Ill-formed UTF-8 in the input is replaced by U+FFFD first.
  virtual std::vector<int> encode(std::string_view text, SpecialTokens specials = SpecialTokens::Parse) const = 0;

  // The bytes one token adds when it follows `prev_id` in a stream (-1 at the
  // start). May end in the middle of a UTF-8 character; see utf8::Streamer.
  virtual std::string decode_token(int id, int prev_id) const = 0;

  // A whole sequence to text, as the reference library's decode does.
  virtual std::string decode(std::span<const int> ids) const = 0;

  // The id of a special token given its text ("<|eot_id|>"), if there is one.
  virtual std::optional<int> special_token_id(std::string_view text) const = 0;

 protected:
  Tokenizer() = default;
};

// Reads and parses a tokenizer file of any of the three formats.
// Throws Error with a one-line message on a missing, empty, truncated or
// malformed file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// Same, from the file's bytes; `source` names it in error messages.
std::unique_ptr<Tokenizer> parse_tokenizer(std::string_view content, const std::string& source);

// The format parse_tokenizer reads a file's bytes as, without parsing them: SentencePiece for
// anything neither JSON nor tiktoken (parse_tokenizer says so if it is not that either).
TokenizerKind tokenizer_kind_of(std::string_view content);

}  // namespace torchchat
