#pragma once
// Chat templates as token ids. The KV cache holds exactly the concatenation
// of what user_turn() and end_of_reply() return, with the model's replies in
// between, so the history never has to be re-encoded.
//
//   llama2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {reply}</s><s>[INST] {user} [/INST] ...
//   llama3  <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>
//           <|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
//           {reply}<|eot_id|> ...
//   chatml  <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
//           {reply}<|im_end|>\n<|im_start|>user\n ...
// Without a system prompt the system part is left out (no default is injected).
//
// A model's own (Jinja) template comes as ChatTurns instead: the exporter renders it with
// sentinel messages and records the pieces around them (torchchat/chat_template.py; the
// artifact's "chat_turns", docs/artifact-format.md), so no template engine runs here.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace torchchat {

class Tokenizer;

enum class ChatTemplateKind { Llama2, Llama3, ChatML, None };

// "llama2" | "llama3" | "chatml" | "none": the names used in model metadata.
std::string_view to_string(ChatTemplateKind kind);
std::optional<ChatTemplateKind> parse_chat_template_kind(std::string_view name);

// One piece of a turn: the template's own text, one of its control tokens (by its text), or
// where the system prompt or the user's message goes (always as plain text).
struct ChatSegment {
  enum class Kind { Text, Token, System, User };
  Kind kind = Kind::Text;
  std::string text;  // Text and Token only
  bool operator==(const ChatSegment&) const = default;
};

// The model's own template cut into turns. Every turn ends where the assistant's reply begins.
struct ChatTurns {
  std::vector<ChatSegment> first;  // the opening turn without a system prompt (the template's
                                   // default system turn included, if it has one)
  std::optional<std::vector<ChatSegment>> first_with_system;  // absent: the template takes none
  std::vector<ChatSegment> next;   // every later turn; starts with the token that closes a reply
  bool operator==(const ChatTurns&) const = default;
};

// What the model's metadata says about chat: a built-in kind, and the model's own template
// when it has one (which then wins).
struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::None;
  std::optional<ChatTurns> turns;

  ChatTemplate() = default;
  ChatTemplate(ChatTemplateKind k) : kind(k) {}  // NOLINT(google-explicit-constructor): a kind is a template
};

class ChatFormatter {
 public:
  // bos_id / eos_id are the model's (llama2 puts them around every turn; a model's own template
  // spells its tokens itself). Throws Error if the tokenizer lacks the template's special tokens.
  ChatFormatter(const ChatTemplate& chat_template, const Tokenizer& tokenizer, int bos_id, int eos_id, bool add_bos);

  // The tokens of one user turn, up to where the assistant's reply begins (a later turn without
  // the end_of_reply() token that opens it). The system prompt is used only in the first turn;
  // Error if the model's own template takes none.
  std::vector<int> user_turn(std::string_view user, std::string_view system, bool first_turn) const;

  // The token that closes a reply in the history (</s>, <|eot_id|>, <|im_end|>);
  // generation also stops when the model samples it.
  int end_of_reply() const { return end_of_reply_; }

 private:
  ChatTemplateKind kind_;
  std::optional<ChatTurns> turns_;
  const Tokenizer& tokenizer_;
  int bos_id_;
  bool add_bos_;
  int end_of_reply_;
};

}  // namespace torchchat
