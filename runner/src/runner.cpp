#include "torchchat/runner.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "torchchat/error.h"
#include "utf8.h"

namespace torchchat {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

std::span<const float> checked_logits(std::span<const float> logits, int vocab_size) {
  if (static_cast<int>(logits.size()) < vocab_size) {
    throw Error("the backend returned " + std::to_string(logits.size()) + " logits, expected " + std::to_string(vocab_size));
  }
  return logits.first(vocab_size);
}

// Everything one turn of generation needs besides the backend.
struct Turn {
  const std::vector<int>& prompt;
  int limit;                 // positions available
  StopReason limit_reason;   // what reaching `limit` means
  const std::unordered_set<int>& stop_ids;
};

// Runs the prompt at `position` in one forward call, then samples, streams
// and feeds back one token at a time until a stop token, the limit, or the
// callback says stop. A sampled token is fed only if another one is wanted,
// so a stop token (or the last token at the limit) is not in the KV cache.
GenerationResult run_turn(Backend& backend, const Tokenizer& tokenizer, Sampler& sampler, const Turn& turn,
                          int& position, const TextCallback& on_text) {
  GenerationResult result;
  const int vocab_size = backend.metadata().vocab_size;
  // Rows past the tokenizer's vocabulary are padding in the model's output
  // layer: never sample them.
  const int sampled_size = std::min(vocab_size, tokenizer.vocab_size());
  const std::vector<std::int64_t> input(turn.prompt.begin(), turn.prompt.end());

  const Clock::time_point start = Clock::now();
  std::span<const float> logits =
      checked_logits(backend.forward(input.data(), static_cast<int>(input.size()), position), vocab_size);
  position += static_cast<int>(input.size());
  result.stats.prompt_tokens = static_cast<int>(input.size());
  result.stats.prefill_seconds = seconds_between(start, Clock::now());

  utf8::Streamer streamer;
  Clock::time_point first_token_time;
  int prev = turn.prompt.back();
  for (;;) {
    const int token = sampler.sample(logits.first(sampled_size));
    if (result.tokens.empty()) first_token_time = Clock::now();
    result.tokens.push_back(token);
    if (turn.stop_ids.count(token)) {
      result.stop_reason = StopReason::StopToken;
      break;
    }
    const std::string text = streamer.push(tokenizer.decode_token(token, prev));
    prev = token;
    if (!text.empty() && on_text && !on_text(text)) {
      result.stop_reason = StopReason::Cancelled;
      break;
    }
    if (position >= turn.limit) {
      result.stop_reason = turn.limit_reason;
      break;
    }
    const std::int64_t next = token;
    logits = checked_logits(backend.forward(&next, 1, position), vocab_size);
    ++position;
  }
  if (const std::string rest = streamer.flush(); !rest.empty() && on_text) on_text(rest);

  const Clock::time_point end = Clock::now();
  result.stats.generated_tokens = static_cast<int>(result.tokens.size());
  result.stats.first_token_seconds = seconds_between(start, first_token_time);
  result.stats.decode_seconds = seconds_between(first_token_time, end);
  return result;
}

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

}  // namespace

std::string_view to_string(StopReason reason) {
  switch (reason) {
    case StopReason::StopToken: return "stop_token";
    case StopReason::StepLimit: return "step_limit";
    case StopReason::ContextFull: return "context_full";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

void Stats::add(const Stats& other) {
  if (generated_tokens == 0) first_token_seconds = other.first_token_seconds;  // the first turn's
  prompt_tokens += other.prompt_tokens;
  generated_tokens += other.generated_tokens;
  prefill_seconds += other.prefill_seconds;
  decode_seconds += other.decode_seconds;
}

double Stats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
}

double Stats::decode_tokens_per_second() const {
  return decode_seconds > 0 && generated_tokens > 1 ? (generated_tokens - 1) / decode_seconds : 0;
}

std::string Stats::summary() const {
  return "prompt tokens: " + std::to_string(prompt_tokens) + ", generated tokens: " + std::to_string(generated_tokens) +
         ", time to first token: " + format("%.3f", first_token_seconds) + " s, " +
         format("%.2f", decode_tokens_per_second()) + " tokens/s (prefill " + format("%.2f", prefill_tokens_per_second()) +
         " tokens/s)";
}

int resolve_position_limit(int max_positions, int max_seq_len) {
  return (max_positions <= 0 || max_positions > max_seq_len) ? max_seq_len : max_positions;
}

Generator::Generator(Backend& backend, const Tokenizer& tokenizer, GenerationConfig config)
    : backend_(backend), tokenizer_(tokenizer), config_(config) {}

GenerationResult Generator::generate(std::string_view prompt, const TextCallback& on_text) {
  const ModelMetadata& metadata = backend_.metadata();
  const int limit = resolve_position_limit(config_.max_positions, metadata.max_seq_len);
  std::vector<int> ids;
  if (metadata.add_bos) ids.push_back(metadata.bos_id);
  const std::vector<int> text_ids = tokenizer_.encode(prompt);
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  if (ids.empty()) throw Error("the prompt is empty and the model adds no BOS token: nothing to continue from (use -i)");
  const int n = static_cast<int>(ids.size());
  if (n > metadata.max_seq_len) {
    throw Error("the prompt is " + std::to_string(n) + " tokens; the model's context holds " +
                std::to_string(metadata.max_seq_len));
  }
  if (n > limit) {
    throw Error("the prompt is " + std::to_string(n) + " tokens, more than the " + std::to_string(limit) +
                " steps allowed by -n");
  }
  const std::unordered_set<int> stop_ids(metadata.stop_ids.begin(), metadata.stop_ids.end());
  const StopReason limit_reason = limit < metadata.max_seq_len ? StopReason::StepLimit : StopReason::ContextFull;
  Sampler sampler(config_.sampler);
  int position = 0;
  return run_turn(backend_, tokenizer_, sampler, Turn{ids, limit, limit_reason, stop_ids}, position, on_text);
}

namespace {
int end_of_turn_id(const ModelMetadata& metadata) {
  // llama2 closes a reply with EOS: the first stop id.
  return metadata.stop_ids.empty() ? -1 : metadata.stop_ids.front();
}
}  // namespace

ChatSession::ChatSession(Backend& backend, const Tokenizer& tokenizer, GenerationConfig config, std::string system_prompt)
    : backend_(backend),
      tokenizer_(tokenizer),
      config_(config),
      system_prompt_(std::move(system_prompt)),
      formatter_(backend.metadata().chat_template, tokenizer, backend.metadata().bos_id, end_of_turn_id(backend.metadata()),
                 backend.metadata().add_bos),
      sampler_(config.sampler),
      limit_(resolve_position_limit(config.max_positions, backend.metadata().max_seq_len)) {
  if (formatter_.end_of_reply() < 0) throw Error("the model has no stop token to end a chat reply with");
}

GenerationResult ChatSession::reply(std::string_view user_message, const TextCallback& on_text) {
  GenerationResult result;
  result.stop_reason = StopReason::ContextFull;
  if (over_) return result;

  // The previous reply's closing token was sampled but not fed (or never
  // sampled, if the reply was cut short): it opens this turn's input.
  std::vector<int> ids;
  if (!first_turn_) ids.push_back(formatter_.end_of_reply());
  const std::vector<int> turn = formatter_.user_turn(user_message, system_prompt_, first_turn_);
  ids.insert(ids.end(), turn.begin(), turn.end());
  if (position_ + static_cast<int>(ids.size()) > limit_) {
    over_ = true;
    throw Error("the message is too long: its turn is " + std::to_string(ids.size()) + " tokens, and " +
                std::to_string(limit_ - position_) + " of the " + std::to_string(limit_) +
                " positions are left; ending the chat");
  }

  std::unordered_set<int> stop_ids(backend_.metadata().stop_ids.begin(), backend_.metadata().stop_ids.end());
  stop_ids.insert(formatter_.end_of_reply());
  result = run_turn(backend_, tokenizer_, sampler_, Turn{ids, limit_, StopReason::ContextFull, stop_ids}, position_,
                    on_text);
  first_turn_ = false;
  if (result.stop_reason == StopReason::ContextFull) over_ = true;
  return result;
}

void ChatSession::restore(const State& state) {
  if (state.position < 0 || state.position > limit_ || (state.first_turn && state.position != 0))
    throw Error("a conversation at position " + std::to_string(state.position) + " does not fit " +
                std::to_string(limit_) + " positions");
  position_ = state.position;
  first_turn_ = state.first_turn;
  over_ = state.over;
  sampler_.restore(state.sampler);
}

}  // namespace torchchat
