#pragma once
// Test doubles shared by the C++ unit tests: a byte-level tokenizer that knows
// a few special tokens, and a backend that replays a script and records calls.

#include <map>
#include <string>
#include <vector>

#include "torchchat/backend.h"
#include "torchchat/error.h"
#include "torchchat/tokenizer.h"

namespace torchchat::testing {

// Ids 0..255 are bytes; special tokens get ids from 256 on. encode() parses
// special-token text (unless told to take it as text), so decode(encode(s)) == s
// and template rendering can be checked as text.
class FakeTokenizer final : public Tokenizer {
 public:
  explicit FakeTokenizer(std::vector<std::string> specials) : specials_(std::move(specials)) {}

  TokenizerKind kind() const override { return TokenizerKind::SentencePiece; }
  int vocab_size() const override { return 256 + static_cast<int>(specials_.size()); }

  std::vector<int> encode(std::string_view text, SpecialTokens specials = SpecialTokens::Parse) const override {
    std::vector<int> ids;
    for (std::size_t pos = 0; pos < text.size();) {
      bool matched = false;
      for (std::size_t i = 0; specials == SpecialTokens::Parse && i < specials_.size(); ++i) {
        if (text.substr(pos, specials_[i].size()) == specials_[i]) {
          ids.push_back(256 + static_cast<int>(i));
          pos += specials_[i].size();
          matched = true;
          break;
        }
      }
      if (!matched) ids.push_back(static_cast<unsigned char>(text[pos++]));
    }
    return ids;
  }
  std::string decode_token(int id, int) const override {
    if (id < 256) return std::string(1, static_cast<char>(id));
    return specials_.at(id - 256);
  }
  std::string decode(std::span<const int> ids) const override {
    std::string text;
    for (const int id : ids) text += decode_token(id, -1);
    return text;
  }
  std::optional<int> special_token_id(std::string_view text) const override {
    for (std::size_t i = 0; i < specials_.size(); ++i) {
      if (specials_[i] == text) return 256 + static_cast<int>(i);
    }
    return std::nullopt;
  }

 private:
  std::vector<std::string> specials_;
};

// Predicts script[k] for the k-th forward call (then `fallback`), and records
// every call.
class ScriptedBackend final : public Backend {
 public:
  struct Call {
    std::vector<std::int64_t> tokens;
    int start_pos;
  };

  ScriptedBackend(ModelMetadata metadata, std::vector<int> script, int fallback)
      : metadata_(std::move(metadata)), script_(std::move(script)), fallback_(fallback),
        logits_(metadata_.vocab_size, 0.0f) {}

  const ModelMetadata& metadata() const override { return metadata_; }

  std::span<const float> forward(const std::int64_t* tokens, int n, int start_pos) override {
    if (start_pos + n > metadata_.max_seq_len) throw Error("forward past max_seq_len");
    calls.push_back({std::vector<std::int64_t>(tokens, tokens + n), start_pos});
    const std::size_t k = calls.size() - 1;
    const int next = k < script_.size() ? script_[k] : fallback_;
    std::fill(logits_.begin(), logits_.end(), 0.0f);
    logits_[next] = 50.0f;
    return logits_;
  }

  // Every token fed, in position order (checks that positions are contiguous).
  std::vector<int> history() const {
    std::vector<int> all;
    for (const Call& call : calls) {
      if (call.start_pos != static_cast<int>(all.size())) throw Error("non-contiguous positions");
      all.insert(all.end(), call.tokens.begin(), call.tokens.end());
    }
    return all;
  }

  std::vector<Call> calls;

 private:
  ModelMetadata metadata_;
  std::vector<int> script_;
  int fallback_;
  std::vector<float> logits_;
};

}  // namespace torchchat::testing
