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

class ChatFormatter {
 public:
  // bos_id / eos_id are the model's (llama2 puts them around every turn).
  // Throws Error if the tokenizer lacks the template's special tokens.
  ChatFormatter(ChatTemplateKind kind, const Tokenizer& tokenizer, int bos_id, int eos_id, bool add_bos);

  // The tokens of one user turn, up to where the assistant's reply begins.
  // The system prompt is used only in the first turn.
  std::vector<int> user_turn(std::string_view user, std::string_view system, bool first_turn) const;

  // The token that closes a reply in the history (</s>, <|eot_id|>, <|im_end|>);
  // generation also stops when the model samples it.
  int end_of_reply() const { return end_of_reply_; }

 private:
  ChatTemplateKind kind_;
  const Tokenizer& tokenizer_;
  int bos_id_;
  bool add_bos_;
  int end_of_reply_;
};

}  // namespace torchchat
