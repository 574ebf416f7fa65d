#pragma once
// The generate and chat loops: prompt -> prefill -> sample/decode until a
// stop token or the position limit, streaming text through a callback.
// This is the API a host application embeds (with its own Backend).

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "torchchat/backend.h"
#include "torchchat/chat_template.h"
#include "torchchat/sampler.h"
#include "torchchat/tokenizer.h"

namespace torchchat {

struct GenerationConfig {
  // Positions the run may use, prompt included (and in chat, the whole
  // conversation): the -n flag. 0 or more than max_seq_len = max_seq_len.
  int max_positions = 0;
  SamplerConfig sampler;
};

// Receives generated text in whole UTF-8 characters as it is produced.
// Return false to stop generating.
using TextCallback = std::function<bool(std::string_view text)>;

enum class StopReason {
  StopToken,    // the model produced a stop token
  StepLimit,    // reached the -n position limit
  ContextFull,  // reached the model's max_seq_len (or, in chat, no room for the next turn)
  Cancelled,    // the callback returned false
};
std::string_view to_string(StopReason reason);

struct Stats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double prefill_seconds = 0;        // running the prompt, to its logits
  double first_token_seconds = 0;    // start of prefill to the first generated token
  double decode_seconds = 0;         // first generated token to the last
  void add(const Stats& other);
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // tokens after the first, over decode_seconds
  // One line for stderr: prompt tokens, generated tokens, time to first token, tokens/s.
  std::string summary() const;
};

struct GenerationResult {
  std::vector<int> tokens;  // generated ids (a final stop token included)
  StopReason stop_reason = StopReason::StopToken;
  Stats stats;
};

// Generate mode: continues a prompt.
class Generator {
 public:
  Generator(Backend& backend, const Tokenizer& tokenizer, GenerationConfig config);

  // Encodes the prompt (with BOS if the model adds one), runs it, and streams
  // the continuation (not the prompt) to on_text. Throws Error if the prompt
  // is empty of tokens or does not fit the position limit.
  GenerationResult generate(std::string_view prompt, const TextCallback& on_text);

 private:
  Backend& backend_;
  const Tokenizer& tokenizer_;
  GenerationConfig config_;
};

// Chat mode: a conversation whose history stays in the KV cache.
class ChatSession {
 public:
  // The template comes from the model's metadata. Throws Error if the model
  // has none or the tokenizer lacks its special tokens.
  ChatSession(Backend& backend, const Tokenizer& tokenizer, GenerationConfig config, std::string system_prompt);

  // Adds a user turn and streams the assistant's reply. When the reply fills
  // the context, returns StopReason::ContextFull and the session is over
  // (further calls return ContextFull at once). A turn that does not fit
  // throws Error (the message is too long) and ends the session too.
  GenerationResult reply(std::string_view user_message, const TextCallback& on_text);

  bool over() const { return over_; }
  int position() const { return position_; }
  int position_limit() const { return limit_; }

  // Everything the next turn depends on besides the KV cache (what a saved session keeps).
  struct State {
    int position = 0;
    bool first_turn = true;
    bool over = false;
    std::uint64_t sampler = 0;
  };
  State state() const { return {position_, first_turn_, over_, sampler_.state()}; }
  // Throws Error if `state` does not fit this session's position limit.
  void restore(const State& state);

 private:
  Backend& backend_;
  const Tokenizer& tokenizer_;
  GenerationConfig config_;
  std::string system_prompt_;
  ChatFormatter formatter_;
  Sampler sampler_;
  int limit_;
  int position_ = 0;
  bool first_turn_ = true;
  bool over_ = false;
};

// The -n limit resolved against the model: 0 or too large = max_seq_len.
int resolve_position_limit(int max_positions, int max_seq_len);

}  // namespace torchchat
