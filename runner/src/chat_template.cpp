#include "torchchat/chat_template.h"

#include "torchchat/error.h"
#include "torchchat/tokenizer.h"

namespace torchchat {
namespace {

int require_special(const Tokenizer& tokenizer, std::string_view text, ChatTemplateKind kind) {
  const auto id = tokenizer.special_token_id(text);
  if (!id) {
    throw Error("the " + std::string(to_string(kind)) + " chat template needs the special token " + std::string(text) +
                ", which this tokenizer does not have");
  }
  return *id;
}

// A turn's tokens: the template's control tokens by id, everything else (the template's own
// words and the messages) encoded as plain text, in runs that span from one control token to the
// next, as the reference libraries split the rendered text at special tokens. So a message that
// spells a control token stays text.
class TurnTokens {
 public:
  explicit TurnTokens(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  TurnTokens& token(int id) {
    flush();
    ids_.push_back(id);
    return *this;
  }
  TurnTokens& text(std::string_view text) {
    text_ += text;
    return *this;
  }
  std::vector<int> done() {
    flush();
    return std::move(ids_);
  }

 private:
  void flush() {
    if (text_.empty()) return;
    const std::vector<int> more = tokenizer_.encode(text_, SpecialTokens::AsText);
    ids_.insert(ids_.end(), more.begin(), more.end());
    text_.clear();
  }
  const Tokenizer& tokenizer_;
  std::vector<int> ids_;
  std::string text_;
};

void add_segments(TurnTokens& turn, const std::vector<ChatSegment>& segments, size_t from, const Tokenizer& tokenizer,
                  std::string_view user, std::string_view system) {
  for (size_t i = from; i < segments.size(); ++i) {
    const ChatSegment& s = segments[i];
    switch (s.kind) {
      case ChatSegment::Kind::Text: turn.text(s.text); break;
      case ChatSegment::Kind::Token: turn.token(*tokenizer.special_token_id(s.text)); break;
      case ChatSegment::Kind::System: turn.text(system); break;
      case ChatSegment::Kind::User: turn.text(user); break;
    }
  }
}

void require_tokens(const Tokenizer& tokenizer, const std::vector<ChatSegment>& segments) {
  for (const ChatSegment& s : segments) {
    if (s.kind == ChatSegment::Kind::Token && !tokenizer.special_token_id(s.text)) {
      throw Error("the model's chat template needs the special token " + s.text + ", which this tokenizer does not have");
    }
  }
}

}  // namespace

std::string_view to_string(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::Llama2: return "llama2";
    case ChatTemplateKind::Llama3: return "llama3";
    case ChatTemplateKind::ChatML: return "chatml";
    case ChatTemplateKind::None: return "none";
  }
  return "?";
}

std::optional<ChatTemplateKind> parse_chat_template_kind(std::string_view name) {
  for (const auto kind : {ChatTemplateKind::Llama2, ChatTemplateKind::Llama3, ChatTemplateKind::ChatML, ChatTemplateKind::None}) {
    if (name == to_string(kind)) return kind;
  }
  return std::nullopt;
}

ChatFormatter::ChatFormatter(const ChatTemplate& chat_template, const Tokenizer& tokenizer, int bos_id, int eos_id,
                             bool add_bos)
    : kind_(chat_template.kind),
      turns_(chat_template.turns),
      tokenizer_(tokenizer),
      bos_id_(bos_id),
      add_bos_(add_bos),
      end_of_reply_(eos_id) {
  if (turns_) {
    require_tokens(tokenizer, turns_->first);
    if (turns_->first_with_system) require_tokens(tokenizer, *turns_->first_with_system);
    require_tokens(tokenizer, turns_->next);
    if (turns_->next.empty() || turns_->next.front().kind != ChatSegment::Kind::Token) {
      throw Error("the model's chat template does not close a reply with a control token");
    }
    end_of_reply_ = *tokenizer.special_token_id(turns_->next.front().text);
    return;
  }
  const ChatTemplateKind kind = kind_;
  switch (kind) {
    case ChatTemplateKind::Llama2:
      break;
    case ChatTemplateKind::Llama3:
      require_special(tokenizer, "<|start_header_id|>", kind);
      require_special(tokenizer, "<|end_header_id|>", kind);
      end_of_reply_ = require_special(tokenizer, "<|eot_id|>", kind);
      break;
    case ChatTemplateKind::ChatML:
      require_special(tokenizer, "<|im_start|>", kind);
      end_of_reply_ = require_special(tokenizer, "<|im_end|>", kind);
      break;
    case ChatTemplateKind::None:
      throw Error("the model has no chat template; use -m generate (or -l 2|3 for a llama template)");
  }
}

std::vector<int> ChatFormatter::user_turn(std::string_view user, std::string_view system, bool first_turn) const {
  TurnTokens turn(tokenizer_);
  if (turns_) {
    if (!first_turn) {
      add_segments(turn, turns_->next, 1, tokenizer_, user, system);  // next[0] is end_of_reply()
    } else if (system.empty()) {
      add_segments(turn, turns_->first, 0, tokenizer_, user, system);
    } else if (turns_->first_with_system) {
      add_segments(turn, *turns_->first_with_system, 0, tokenizer_, user, system);
    } else {
      throw Error("this model's chat template takes no system prompt");
    }
    return turn.done();
  }
  switch (kind_) {
    case ChatTemplateKind::Llama2:
      turn.token(bos_id_).text("[INST] ");
      if (first_turn && !system.empty()) turn.text("<<SYS>>\n").text(system).text("\n<</SYS>>\n\n");
      turn.text(user).text(" [/INST]");
      break;
    case ChatTemplateKind::Llama3: {
      const int start = *tokenizer_.special_token_id("<|start_header_id|>");
      const int end = *tokenizer_.special_token_id("<|end_header_id|>");
      if (first_turn) {
        turn.token(bos_id_);  // <|begin_of_text|>
        if (!system.empty()) turn.token(start).text("system").token(end).text("\n\n").text(system).token(end_of_reply_);
      }
      turn.token(start).text("user").token(end).text("\n\n").text(user).token(end_of_reply_);
      turn.token(start).text("assistant").token(end).text("\n\n");
      break;
    }
    case ChatTemplateKind::ChatML: {
      const int start = *tokenizer_.special_token_id("<|im_start|>");
      if (first_turn) {
        if (add_bos_) turn.token(bos_id_);
        if (!system.empty()) turn.token(start).text("system\n").text(system).token(end_of_reply_).text("\n");
      } else {
        turn.text("\n");  // follows the previous reply's <|im_end|>
      }
      turn.token(start).text("user\n").text(user).token(end_of_reply_).text("\n");
      turn.token(start).text("assistant\n");
      break;
    }
    case ChatTemplateKind::None:
      break;
  }
  return turn.done();
}

}  // namespace torchchat
