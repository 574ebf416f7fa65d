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

void append(std::vector<int>& ids, const std::vector<int>& more) { ids.insert(ids.end(), more.begin(), more.end()); }

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

ChatFormatter::ChatFormatter(ChatTemplateKind kind, const Tokenizer& tokenizer, int bos_id, int eos_id, bool add_bos)
    : kind_(kind), tokenizer_(tokenizer), bos_id_(bos_id), add_bos_(add_bos), end_of_reply_(eos_id) {
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
  const std::string user_text(user), system_text(system);
  std::vector<int> ids;
  switch (kind_) {
    case ChatTemplateKind::Llama2: {
      ids.push_back(bos_id_);
      const std::string system_block =
          first_turn && !system_text.empty() ? "<<SYS>>\n" + system_text + "\n<</SYS>>\n\n" : "";
      append(ids, tokenizer_.encode("[INST] " + system_block + user_text + " [/INST]"));
      break;
    }
    case ChatTemplateKind::Llama3: {
      std::string text;
      if (first_turn) {
        ids.push_back(bos_id_);  // <|begin_of_text|>
        if (!system_text.empty()) text += "<|start_header_id|>system<|end_header_id|>\n\n" + system_text + "<|eot_id|>";
      }
      text += "<|start_header_id|>user<|end_header_id|>\n\n" + user_text +
              "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
      append(ids, tokenizer_.encode(text));
      break;
    }
    case ChatTemplateKind::ChatML: {
      std::string text;
      if (first_turn) {
        if (add_bos_) ids.push_back(bos_id_);
        if (!system_text.empty()) text += "<|im_start|>system\n" + system_text + "<|im_end|>\n";
      } else {
        text += "\n";  // follows the previous reply's <|im_end|>
      }
      text += "<|im_start|>user\n" + user_text + "<|im_end|>\n<|im_start|>assistant\n";
      append(ids, tokenizer_.encode(text));
      break;
    }
    case ChatTemplateKind::None:
      break;
  }
  return ids;
}

}  // namespace torchchat
